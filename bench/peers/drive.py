"""Runs the same no-op workload through Sluice and its peers, on one machine.

Each framework gets its own task and result topics on one embedded broker
(`sluice broker`, the librdkafka mock cluster). The driver fills the task topic
with the same N no-op tasks (`sluice produce --kind noop`, Sluice's JSON), starts
one consumer process of the framework, and watches the result topic's high
watermarks until N results are there. Every framework runs the same shape of
program: read a task, write one result, commit after the result is delivered.

Figures per framework:
- drain_s: from starting the process to the N-th result (start-up and group join
  included);
- tasks_per_s: N minus the results already there at the first one seen, divided
  by the time from that first result to the last (steady state);
- cpu_us_per_task: CPU time of the framework's process (user + system, from
  wait4) divided by N.

Celery is the task queue people know, not a Kafka framework: it runs on Redis
(broker and result backend, started here), with the tasks enqueued before the
worker starts, the same way. Its results are counted as Redis keys.

Usage (through bench/peers/run): drive.py --tasks N --out DIR
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata

from confluent_kafka import Consumer, TopicPartition

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SLUICE = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "target", "release", "sluice"))
PARTITIONS = 4
KAFKA_PEERS = ["sluice", "quixstreams", "arroyo"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc, timeout=20):
    """SIGTERM, then SIGKILL after timeout; returns the CPU seconds (user +
    system) the process and the children it reaped used, from wait4."""
    if proc.returncode is not None:
        return 0.0
    proc.send_signal(signal.SIGTERM)
    deadline = time.time() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.time() > deadline:
            proc.kill()
        time.sleep(0.05)


def results_on(brokers, topic):
    c = Consumer({"bootstrap.servers": brokers, "group.id": "peers-driver-watch"})

    def count():
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)[1]
            for p in range(PARTITIONS)
        )

    return c, count


def watch(count, n, proc, what, timeout):
    """Polls count() until n; returns (started, first_seen_at, first_count, done_at)."""
    started = time.time()
    first = None
    while True:
        c = count()
        now = time.time()
        if c > 0 and first is None:
            first = (now, c)
        if c >= n:
            return started, first[0], first[1], now
        if proc.poll() is not None:
            sys.exit(f"{what} exited early ({proc.returncode}) with {c} of {n} results; see the log")
        if now - started > timeout:
            sys.exit(f"{what}: only {c} of {n} results after {timeout} s")
        time.sleep(0.02)


def figures(name, n, started, first_at, first_count, done_at, cpu_s):
    steady = (n - first_count) / max(done_at - first_at, 1e-6)
    return {
        "framework": name,
        "tasks": n,
        "drain_s": round(done_at - started, 3),
        "tasks_per_s": round(steady),
        "cpu_us_per_task": round(cpu_s / n * 1e6, 1),
    }


def kafka_peer(name, n, brokers, env, log):
    tasks, results = f"tasks-{name}", f"results-{name}"
    fill = subprocess.run(
        [SLUICE, "produce", "--kind", "noop", "--count", str(n)],
        env=dict(env, SLUICE_TOPICS__TASKS=tasks),
        stdout=subprocess.DEVNULL, stderr=log,
    )
    if fill.returncode != 0:
        sys.exit(f"could not fill {tasks}")
    penv = dict(env, BROKERS=brokers, TASKS=tasks, RESULTS=results, GROUP=f"group-{name}",
                PARTITIONS=str(PARTITIONS))
    if name == "sluice":
        cmd = [SLUICE, "worker", "--id", "peer-bench"]
        penv.update(SLUICE_TOPICS__TASKS=tasks, SLUICE_TOPICS__RESULTS=results,
                    SLUICE_WORKER__GROUP=f"group-{name}", SLUICE_METRICS__ENABLED="false")
    else:
        script = {"quixstreams": "quix_peer.py", "arroyo": "arroyo_peer.py"}[name]
        cmd = [sys.executable, os.path.join(HERE, script)]
    consumer, count = results_on(brokers, results)
    proc = subprocess.Popen(cmd, env=penv, stdout=log, stderr=log)
    try:
        started, first_at, first_count, done_at = watch(count, n, proc, name, 600)
    finally:
        cpu = stop(proc)
        consumer.close()
    return figures(name, n, started, first_at, first_count, done_at, cpu)


def celery_peer(n, env, log, tmp):
    import redis

    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=log, stderr=log,
    )
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        cenv = dict(env, REDIS_URL=f"redis://127.0.0.1:{port}/0", PYTHONPATH=HERE)
        subprocess.run([sys.executable, os.path.join(HERE, "celery_peer.py"), "enqueue", str(n)],
                       env=cenv, check=True, stdout=log, stderr=log)

        def count():
            return sum(1 for _ in r.scan_iter("celery-task-meta-*", count=10000))

        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_peer", "worker", "--pool", "prefork",
             "--concurrency", str(os.cpu_count() or 2), "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel", "WARNING"],
            env=cenv, stdout=log, stderr=log, cwd=HERE,
        )
        try:
            started, first_at, first_count, done_at = watch(count, n, worker, "celery", 900)
        finally:
            # Prefork children are reaped by the main worker process, so its
            # wait4 figure includes them.
            cpu = stop(worker)
        return figures("celery", n, started, first_at, first_count, done_at, cpu)
    finally:
        stop(server)


def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    if not os.path.exists(SLUICE):
        sys.exit(f"{SLUICE} not found: cargo build --release (or set SLUICE_BIN)")
    if shutil.which("redis-server") is None:
        sys.exit("redis-server not found: install the Debian package redis-server")
    tmp = tempfile.mkdtemp(prefix="sluice-peers-")
    log = open(os.path.join(tmp, "peers.log"), "w")
    print(f"process output goes to {log.name}", file=sys.stderr)
    env = dict(os.environ, RUST_LOG="warn")
    topics = []
    for name in KAFKA_PEERS:
        topics += ["--topic", f"tasks-{name}:{PARTITIONS}", "--topic", f"results-{name}:{PARTITIONS}"]
    broker = subprocess.Popen(
        [SLUICE, "broker", "--listen", "127.0.0.1:0", "--partitions", str(PARTITIONS)] + topics,
        env=env, stdout=subprocess.PIPE, stderr=log, text=True,
    )
    brokers = broker.stdout.readline().split()[-1]
    env.update(SLUICE_BROKERS=brokers, SLUICE_TOPICS__PARTITIONS=str(PARTITIONS),
               SLUICE_WORKER__GROUP_PROTOCOL="consumer")
    rows = []
    try:
        for name in KAFKA_PEERS + ["celery"]:
            if args.only and name not in args.only:
                continue
            print(f"running {name} ({args.tasks} tasks)...", file=sys.stderr)
            row = celery_peer(args.tasks, env, log, tmp) if name == "celery" else \
                kafka_peer(name, args.tasks, brokers, env, log)
            print(f"  {row}", file=sys.stderr)
            rows.append(row)
    finally:
        stop(broker)
    base = next((r for r in rows if r["framework"] == "sluice"), None)
    for r in rows:
        if base:
            r["sluice_speedup"] = round(base["tasks_per_s"] / r["tasks_per_s"], 2)
    report = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.platform()}",
        "broker": "sluice broker (librdkafka mock cluster), 4 partitions per topic",
        "versions": {d: version(d) for d in ["quixstreams", "sentry-arroyo", "celery", "confluent-kafka", "redis"]},
        "results": rows,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = [
        f"Run of {report['date']} on {report['machine']}; {args.tasks} no-op tasks per framework; "
        f"`bench/peers/run --tasks {args.tasks}`.",
        "",
        "| framework | tasks/s (steady) | drain incl. start-up (s) | CPU µs per task | Sluice is × faster |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['framework']} | {r['tasks_per_s']} | {r['drain_s']} | {r['cpu_us_per_task']} | "
                     f"{r.get('sluice_speedup', '')} |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
