//! What a bench run reports, as JSON (`--json`) or text: every figure of
//! Sluice beside the baseline's from the same run, and their ratios.

use super::load::Observed;
use super::options::{Profile, Work};
use serde::Serialize;
use std::time::Duration;

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saturation: Option<Compared>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<Level>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scale_out: Vec<ScaleStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_worker: Option<AddWorker>,
    /// The scheduling comparisons (every task's result read back, or the run fails).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<super::scheduling::Scheduling>,
    /// Published tasks without a result, over every Sluice run (must be 0).
    pub lost: usize,
    /// Results beyond a task's first, over every Sluice run.
    pub duplicates: usize,
}

/// Where the figures were measured.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub librdkafka: String,
    /// 1-, 5- and 15-minute load averages when the run started: on a shared
    /// machine, what else was running.
    pub load_average: String,
    /// `embedded` or the bootstrap servers given.
    pub broker: String,
}

impl Machine {
    pub fn here(broker: String) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            librdkafka: rdkafka::util::get_rdkafka_version().1,
            load_average: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|_| "unknown".into()),
            broker,
        }
    }
}

/// The options the run used.
#[derive(Debug, Serialize)]
pub struct Settings {
    pub profile: Profile,
    pub work: Work,
    pub tasks: usize,
    pub payload_bytes: usize,
    pub partitions: i32,
    pub workers: usize,
    pub concurrency: usize,
    pub scale_concurrency: usize,
    pub offered_rate: Option<f64>,
    pub seconds: f64,
    pub linger_ms: u64,
    pub fetch_wait_max_ms: u64,
}

/// One pipeline's figures for one load.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub published: usize,
    pub lost: usize,
    pub duplicates: usize,
    /// Tasks with a result per second, first send to last result.
    pub tasks_per_s: f64,
    /// Task creation (its scheduled time under an offered rate) to result seen.
    pub latency_ms: Percentiles,
    /// Process CPU time per task: load generator, observer, broker (when
    /// embedded) and the pipeline itself.
    pub cpu_us_per_task: f64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Figures {
    pub fn of(o: &Observed) -> Figures {
        let mut l = o.latencies();
        l.sort_unstable();
        Figures {
            published: o.published,
            lost: o.lost(),
            duplicates: o.duplicates,
            tasks_per_s: o.throughput(),
            latency_ms: Percentiles {
                p50: ms(percentile(&l, 0.50)),
                p99: ms(percentile(&l, 0.99)),
                p999: ms(percentile(&l, 0.999)),
                max: ms(l.last().copied().unwrap_or_default()),
            },
            cpu_us_per_task: o.cpu.as_secs_f64() * 1e6 / o.published.max(1) as f64,
        }
    }
}

/// Sluice and the baseline on the same load.
#[derive(Debug, Serialize)]
pub struct Compared {
    /// Offered tasks/s; absent: as fast as possible.
    pub offered_rate: Option<f64>,
    pub sluice: Figures,
    pub baseline: Figures,
    pub ratio: Ratios,
    /// Sluice's CPU per task minus the baseline's: what the framework adds.
    pub framework_cpu_us_per_task: f64,
}

/// Sluice / baseline.
#[derive(Debug, Serialize)]
pub struct Ratios {
    pub throughput: f64,
    pub p50: f64,
    pub p99: f64,
    pub cpu_per_task: f64,
}

impl Compared {
    pub fn new(offered_rate: Option<f64>, sluice: Figures, baseline: Figures) -> Compared {
        let r = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        Compared {
            offered_rate,
            ratio: Ratios {
                throughput: r(sluice.tasks_per_s, baseline.tasks_per_s),
                p50: r(sluice.latency_ms.p50, baseline.latency_ms.p50),
                p99: r(sluice.latency_ms.p99, baseline.latency_ms.p99),
                cpu_per_task: r(sluice.cpu_us_per_task, baseline.cpu_us_per_task),
            },
            framework_cpu_us_per_task: sluice.cpu_us_per_task - baseline.cpu_us_per_task,
            sluice,
            baseline,
        }
    }
}

/// One level of the latency scenario.
#[derive(Debug, Serialize)]
pub struct Level {
    /// Percent of Sluice's saturation throughput offered.
    pub percent: u32,
    #[serde(flatten)]
    pub compared: Compared,
}

/// One step of the scale-out scenario.
#[derive(Debug, Serialize)]
pub struct ScaleStep {
    pub workers: usize,
    pub concurrency: usize,
    pub task_ms: u64,
    /// workers x concurrency / task time.
    pub bound_tasks_per_s: f64,
    pub sluice: Figures,
    /// Measured throughput / bound.
    pub of_bound: f64,
    /// What one sleep of `task_ms` lasts in this process (timer granularity).
    pub measured_task_ms: f64,
    /// workers x concurrency / measured task time.
    pub measured_bound_tasks_per_s: f64,
    /// Measured throughput / that bound.
    pub of_measured_bound: f64,
    /// Tasks each worker finished.
    pub per_worker: Vec<u64>,
}

/// The add-a-worker-under-load scenario.
#[derive(Debug, Serialize)]
pub struct AddWorker {
    pub offered_rate: f64,
    pub concurrency: usize,
    pub task_ms: u64,
    pub sluice: Figures,
    /// Seconds after the first task when the second worker started.
    pub added_at_s: f64,
    /// From starting the second worker to its first finished task.
    pub time_to_first_task_ms: Option<f64>,
    /// Width of the timeline's windows.
    pub window_ms: u64,
    /// Results per second in each window, from the first send until publishing
    /// ended.
    pub timeline_tasks_per_s: Vec<f64>,
    /// The lowest window of the timeline (zero would mean a stall).
    pub min_window_tasks_per_s: f64,
    /// Tasks each worker finished.
    pub per_worker: Vec<u64>,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Report {
    /// The report as text, for people.
    pub fn text(&self) -> String {
        let m = &self.machine;
        let s = &self.settings;
        let mut out = format!(
            "sluice bench: {} CPUs ({}), load {}, kernel {}, librdkafka {}, broker {}\n\
             profile {:?} (linger {} ms, fetch wait {} ms), {} partitions, {}-byte tasks\n",
            m.cpus,
            m.cpu_model,
            m.load_average,
            m.kernel,
            m.librdkafka,
            m.broker,
            s.profile,
            s.linger_ms,
            s.fetch_wait_max_ms,
            s.partitions,
            s.payload_bytes
        );
        let head =
            "                       tasks/s   p50 ms   p99 ms p99.9 ms  CPU µs/task  lost  dup\n";
        if let Some(c) = &self.saturation {
            out += &format!(
                "\nsaturation: {} {:?} tasks, {} worker(s) x concurrency {}\n{head}",
                s.tasks, s.work, s.workers, s.concurrency
            );
            out += &compared(c);
        }
        if !self.latency.is_empty() {
            out += &format!("\nlatency under offered load\n{head}");
            for l in &self.latency {
                out += &format!(
                    "  {}% = {:.0} tasks/s\n",
                    l.percent,
                    l.compared.offered_rate.unwrap_or_default()
                );
                out += &compared(&l.compared);
            }
        }
        if !self.scale_out.is_empty() {
            out += "\nscale-out on sleep tasks (bound = workers x concurrency / task time)\n";
            for st in &self.scale_out {
                out += &format!(
                    "  {} worker(s) x {} on {} ms: {:.0} tasks/s of {:.0} bound ({:.0} %; {:.0} % of {:.0} with the measured {:.2} ms sleep), p99 {} ms, per worker {:?}, lost {}\n",
                    st.workers,
                    st.concurrency,
                    st.task_ms,
                    st.sluice.tasks_per_s,
                    st.bound_tasks_per_s,
                    st.of_bound * 100.0,
                    st.of_measured_bound * 100.0,
                    st.measured_bound_tasks_per_s,
                    st.measured_task_ms,
                    st.sluice.latency_ms.p99,
                    st.per_worker,
                    st.sluice.lost
                );
            }
        }
        if let Some(a) = &self.add_worker {
            out += &format!(
                "\nadd a worker under load: {:.0} tasks/s offered, second worker at {:.1} s\n  \
                 first task on it after {} ms; lowest {} ms window {:.0} tasks/s; per worker {:?}; lost {}, dup {}\n",
                a.offered_rate,
                a.added_at_s,
                a.time_to_first_task_ms
                    .map_or("(none)".to_string(), |t| format!("{t:.0}")),
                a.window_ms,
                a.min_window_tasks_per_s,
                a.per_worker,
                a.sluice.lost,
                a.sluice.duplicates
            );
        }
        if let Some(s) = &self.scheduling {
            out += "\nscheduling\n\n";
            out += &s.markdown();
        }
        out += &format!(
            "\n{}: {} lost, {} duplicates over all Sluice runs\n",
            if self.lost == 0 { "OK" } else { "FAILED" },
            self.lost,
            self.duplicates
        );
        out
    }
}

fn row(name: &str, f: &Figures) -> String {
    format!(
        "  {name:<18} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>12.1} {:>5} {:>4}\n",
        f.tasks_per_s,
        f.latency_ms.p50,
        f.latency_ms.p99,
        f.latency_ms.p999,
        f.cpu_us_per_task,
        f.lost,
        f.duplicates
    )
}

fn compared(c: &Compared) -> String {
    let r = &c.ratio;
    row("sluice", &c.sluice)
        + &row("baseline", &c.baseline)
        + &format!(
            "  {:<18} {:>10.2} {:>8.2} {:>8.2} {:>8} {:>12.2}   (framework CPU {:.1} µs/task)\n",
            "sluice / baseline",
            r.throughput,
            r.p50,
            r.p99,
            "",
            r.cpu_per_task,
            c.framework_cpu_us_per_task
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_nearest_rank() {
        let v: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(500));
        assert_eq!(percentile(&v, 0.999), Duration::from_millis(999));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
