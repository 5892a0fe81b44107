//! Starting brokers and `sluice` processes, and reading results back.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `sluice` binary under test.
pub fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?} of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unsafe_code)]
fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Which broker the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Embedded,
    Tansu,
}

pub fn selected_broker() -> BrokerKind {
    match std::env::var("SLUICE_TEST_BROKER").as_deref() {
        Err(_) | Ok("") | Ok("embedded") => BrokerKind::Embedded,
        Ok("tansu") => BrokerKind::Tansu,
        Ok(other) => panic!("SLUICE_TEST_BROKER={other}: expected `embedded` or `tansu`"),
    }
}

/// A running broker process.
pub struct Broker {
    pub kind: BrokerKind,
    pub addr: String,
    proc: Mutex<Option<Proc>>,
    /// Embedded broker: its stdin (faults) and its stdout lines (replies).
    control: Option<Mutex<(ChildStdin, Receiver<String>)>>,
    /// Tansu: the directory holding its SQLite file and log.
    data: Option<tempfile::TempDir>,
}

impl Broker {
    /// The broker selected by `SLUICE_TEST_BROKER`.
    pub fn start() -> Broker {
        match selected_broker() {
            BrokerKind::Embedded => Broker::embedded(),
            BrokerKind::Tansu => Broker::tansu(),
        }
    }

    /// `sluice broker` on a free port.
    pub fn embedded() -> Broker {
        let mut child = Command::new(sluice_bin())
            .args(["broker", "--listen", "127.0.0.1:0", "--partitions", "4"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sluice broker");
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take().expect("piped");
        let proc = Proc {
            child,
            name: "sluice broker".into(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("sluice broker printed no address");
        let addr = line
            .trim()
            .strip_prefix("sluice broker listening on ")
            .unwrap_or_else(|| panic!("unexpected broker output: {line:?}"))
            .to_string();
        Broker {
            kind: BrokerKind::Embedded,
            addr,
            proc: Mutex::new(Some(proc)),
            control: Some(Mutex::new((stdin, rx))),
            data: None,
        }
    }

    /// How the broker process ended, if it has (a crash, for a test that did not
    /// stop it).
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut proc = self.proc.lock().unwrap();
        proc.as_mut()?.child.try_wait().ok().flatten()
    }

    /// Injects a fault into the embedded broker (`sluice broker`'s stdin protocol).
    pub fn fault(&self, line: &str) {
        if let Some(status) = self.exited() {
            panic!("cannot inject `{line}`: the embedded broker exited ({status})");
        }
        let control = self
            .control
            .as_ref()
            .expect("faults need the embedded broker");
        let mut c = control.lock().unwrap();
        writeln!(c.0, "{line}").expect("write fault");
        c.0.flush().unwrap();
        let reply =
            c.1.recv_timeout(Duration::from_secs(10))
                .expect("broker answered the fault");
        assert_eq!(reply, format!("ok {line}"), "fault `{line}` was refused");
    }

    /// A Tansu broker on a free port, storing in a fresh SQLite file.
    ///
    /// Not `memory://`: Tansu 0.6's memory engine returns nothing for a fetch that
    /// starts inside a record batch (seen here: committed offset 5 of a 75-record
    /// batch, fetch from 5 → no records, forever), which strands any consumer
    /// group that commits mid-batch. The SQLite engine serves such fetches.
    pub fn tansu() -> Broker {
        let port = free_port();
        let data = tempfile::tempdir().expect("temp dir");
        let b = Broker {
            kind: BrokerKind::Tansu,
            addr: format!("127.0.0.1:{port}"),
            proc: Mutex::new(None),
            control: None,
            data: Some(data),
        };
        b.start_tansu();
        b
    }

    fn start_tansu(&self) {
        let url = format!("tcp://{}", self.addr);
        let dir = self
            .data
            .as_ref()
            .expect("tansu data dir")
            .path()
            .to_path_buf();
        // Tansu resolves the SQLite path against its working directory.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("tansu.log"))
            .expect("log file");
        let child = Command::new("tansu")
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "sqlite://tansu.db"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("this test needs `tansu` ({e}); install it with `cargo install tansu --locked --features libsql,dynostore` (.ci/run does)")
            });
        *self.proc.lock().unwrap() = Some(Proc {
            child,
            name: "tansu".into(),
        });
        if !port_open(&self.addr, Duration::from_secs(20)) {
            let log = std::fs::read_to_string(dir.join("tansu.log")).unwrap_or_default();
            panic!(
                "tansu did not listen on {} within 20 s; its log:\n{log}",
                self.addr
            );
        }
    }

    /// Kills Tansu with SIGKILL and starts it again on the same port and storage.
    #[cfg_attr(not(feature = "external-tools"), allow(dead_code))]
    pub fn restart_tansu(&self, down_for: Duration) {
        assert_eq!(
            self.kind,
            BrokerKind::Tansu,
            "only Tansu keeps data across restarts"
        );
        drop(self.proc.lock().unwrap().take());
        std::thread::sleep(down_for);
        self.start_tansu();
    }
}

/// A port nothing listens on right now, and never the same one twice in this
/// process: ports picked one after another by binding port 0 can repeat (seen
/// here, when three workers were given ports in turn), and tests run in parallel.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

fn port_open(addr: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(addr).is_err() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Unique topic and group names for one test, and the broker they live on.
pub struct Env<'a> {
    pub broker: &'a Broker,
    pub tasks: String,
    pub results: String,
    pub group: String,
    /// Classic group protocol on every broker: a killed member's partitions move
    /// after its session times out (KIP-848 on the mock uses the broker's longer
    /// session timeout).
    pub classic_group: bool,
}

impl<'a> Env<'a> {
    pub fn new(broker: &'a Broker, test: &str) -> Env<'a> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{test}-{}-{n}", std::process::id());
        Env {
            broker,
            tasks: format!("tasks-{tag}"),
            results: format!("results-{tag}"),
            group: format!("group-{tag}"),
            classic_group: false,
        }
    }

    /// The same, with the classic group protocol and a 6 s session timeout.
    pub fn classic(mut self) -> Self {
        self.classic_group = true;
        self
    }

    /// A `sluice` command wired to this broker, topics and group.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(sluice_bin());
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("SLUICE_BROKERS", &self.broker.addr)
            .env("SLUICE_TOPICS__TASKS", &self.tasks)
            .env("SLUICE_TOPICS__RESULTS", &self.results)
            .env("SLUICE_TOPICS__PARTITIONS", "4")
            .env("SLUICE_WORKER__GROUP", &self.group)
            .env("SLUICE_WORKER__COMMIT_INTERVAL_MS", "200");
        match self.broker.kind {
            // KIP-848 on the mock cluster: joins without waiting for a session timeout.
            BrokerKind::Embedded if !self.classic_group => {
                c.env("SLUICE_WORKER__GROUP_PROTOCOL", "consumer")
            }
            // Tansu has the classic protocol; its join waits about session.timeout/2.
            _ => c.env("SLUICE_WORKER__SESSION_TIMEOUT_MS", "6000"),
        };
        c
    }

    /// Runs a command to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run sluice")
    }

    /// Starts a long-running command with extra environment, output discarded.
    pub fn spawn_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Proc {
        let mut c = self.cmd(args);
        c.envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Proc {
            child: c.spawn().expect("spawn sluice"),
            name: format!("sluice {}", args.join(" ")),
        }
    }

    /// Starts a long-running command (a worker).
    pub fn spawn(&self, args: &[&str]) -> Proc {
        let child = self
            .cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice");
        Proc {
            child,
            name: format!("sluice {}", args.join(" ")),
        }
    }

    /// Waits for results of `n` distinct tasks (then reads to the end of the
    /// topic once more to catch duplicates) and returns every record.
    pub fn results(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let out = self.run(&[
            "results",
            "--wait",
            &n.to_string(),
            "--timeout-ms",
            &timeout.as_millis().to_string(),
            "--format",
            "json",
        ]);
        assert!(
            out.status.success(),
            "sluice results --wait {n} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
        let all = self.run(&["results", "--format", "json"]);
        assert!(
            all.status.success(),
            "{}",
            String::from_utf8_lossy(&all.stderr)
        );
        parse_lines(&all.stdout)
    }
}

/// Parses JSON lines.
pub fn parse_lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Results grouped by task id.
pub fn by_task(results: &[Value]) -> HashMap<String, Vec<&Value>> {
    let mut m: HashMap<String, Vec<&Value>> = HashMap::new();
    for r in results {
        m.entry(r["task_id"].as_str().expect("task_id").to_string())
            .or_default()
            .push(r);
    }
    m
}

/// Standard error as text, for assertions.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
