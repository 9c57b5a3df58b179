#!/usr/bin/env python3
"""Runs backstop and the Prometheus blackbox_exporter side by side against
one local nginx, at the same probe rate, and measures what each costs.

Started by bench/compare.sh, which installs nginx, blackbox_exporter and
matplotlib and builds backstop; see bench/README.md for what it measures.
Every address is on loopback, every loop is bounded in time, and every
process it starts is stopped when it ends (or is interrupted).

    python3 bench/compare.py run --backstop target/release/backstop
    python3 bench/compare.py ab --a OLD --b NEW    (two builds, alternately)
    python3 bench/compare.py drive ...   (the load driver; started by `run`)
"""

import argparse
import heapq
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)


# ----------------------------------------------------------------- /proc


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# ------------------------------------------------------- scheduling priority


def set_priority(prio, tid=0):
    """Raises the scheduling priority of thread `tid` (0: the calling one;
    on Linux both the nice value and the policy are per thread, and threads
    and children started afterwards inherit them). `prio` is None (leave
    as is), {"nice": -20} or {"fifo": 10} (SCHED_FIFO, like `chrt -f 10`)."""
    if not prio:
        return
    if prio.get("nice") is not None:
        os.setpriority(os.PRIO_PROCESS, tid, prio["nice"])
    if prio.get("fifo"):
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(prio["fifo"]))


def priority_preexec(prio):
    """preexec_fn for Popen: the child and everything it starts run at `prio`."""
    if not prio:
        return None
    return lambda: set_priority(prio)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused_port():
    """A loopback port nothing listens on."""
    return free_port()


def wait_http(url, deadline_s=20.0):
    host, rest = url.split("//", 1)[1].split("/", 1)
    h, p = host.split(":")
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            c = http.client.HTTPConnection(h, int(p), timeout=1)
            c.request("GET", "/" + rest)
            c.getresponse().read()
            c.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {deadline_s}s")


# ----------------------------------------------------------------- processes


class Procs:
    """The processes this run started; all stopped at the end."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, **kw):
        p = subprocess.Popen(argv, **kw)
        self.procs.append((name, p))
        return p

    def stop(self, p, sig=signal.SIGTERM, wait_s=10):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(wait_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for _, p in reversed(self.procs):
            self.stop(p)
        self.procs = []


def start_nginx(procs, work, prio=None):
    """nginx on a free loopback port, with its own prefix and config.
    /bs/... and /bb/... answer 200 and are logged with millisecond times;
    /bs/... answers 503 while the file `flag503` exists."""
    prefix = os.path.join(work, "nginx")
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    # The worker runs as nobody and must see `flag503`.
    os.chmod(work, 0o755)
    os.chmod(prefix, 0o755)
    port = free_port()
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  log_format t '$msec $request_uri $status';
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location /bs/ {{
      access_log {prefix}/logs/bs.log t buffer=256k flush=1s;
      if (-f {prefix}/flag503) {{ return 503 "down\\n"; }}
      return 200 "ok\\n";
    }}
    location /bb/ {{
      access_log {prefix}/logs/bb.log t buffer=256k flush=1s;
      return 200 "ok\\n";
    }}
  }}
}}
""")
    p = procs.start(
        "nginx",
        ["nginx", "-p", prefix, "-e", f"{prefix}/logs/error.log", "-c", conf],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=priority_preexec(prio),
    )
    wait_http(f"http://127.0.0.1:{port}/bb/ready")
    return {"proc": p, "port": port, "prefix": prefix}


def read_log(nginx, which):
    """(time, path, status) of every logged request of `bs` or `bb`."""
    path = os.path.join(nginx["prefix"], "logs", f"{which}.log")
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                out.append((float(parts[0]), parts[1], parts[2]))
    return out


def backstop_config(work, name, port, target, n, interval_ms, rules=False, extra=""):
    state = os.path.join(work, f"state-{name}")
    os.makedirs(state, exist_ok=True)
    lines = [
        "[agent]",
        f'listen = "127.0.0.1:{port}"',
        f'state_dir = "{state}"',
        f"default_rules = {'true' if rules else 'false'}",
        "",
        "[service]",
        'name = "bench"',
        "",
        "[deployment]",
        'id = "bench"',
        "",
    ]
    timeout = min(interval_ms, 1000)
    for i in range(n):
        lines += [
            "[[probe]]",
            f'name = "p{i}"',
            "level = 1",
            'type = "http"',
            f'url = "http://127.0.0.1:{target}/bs/{name}/p{i}"',
            f'interval = "{interval_ms}ms"',
            f'timeout = "{timeout}ms"',
            f"critical = {'true' if rules else 'false'}",
            "",
        ]
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + extra)
    os.chmod(path, 0o644)
    return path


def start_backstop(procs, binary, config, work, name, env=None, prio=None):
    log = open(os.path.join(work, f"{name}.log"), "w")
    e = dict(os.environ)
    e.update(env or {})
    e.setdefault("RUST_LOG", "warn")
    return procs.start(
        name,
        [binary, "run", "--config", config],
        stdout=log,
        stderr=log,
        env=e,
        preexec_fn=priority_preexec(prio),
    )


def start_blackbox(procs, work):
    port = free_port()
    cfg = os.path.join(work, "blackbox.yml")
    with open(cfg, "w") as f:
        f.write(
            "modules:\n  http_2xx:\n    prober: http\n    timeout: 5s\n"
            "    http:\n      preferred_ip_protocol: ip4\n"
        )
    log = open(os.path.join(work, "blackbox.log"), "w")
    p = procs.start(
        "blackbox",
        [
            shutil.which("prometheus-blackbox-exporter") or "blackbox_exporter",
            f"--config.file={cfg}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=log,
    )
    wait_http(f"http://127.0.0.1:{port}/-/healthy")
    return p, port


# ----------------------------------------------------------------- driver


def drive(args):
    """Asks blackbox_exporter to probe `targets` targets, each every
    `interval_ms`, for `duration` seconds: a schedule per target with a
    random phase, spread over `threads` keep-alive connections. Prints a
    JSON line with what it did."""
    n, interval = args.targets, args.interval_ms / 1000.0
    start = time.monotonic() + 0.2
    end = start + args.duration
    done = [0] * args.threads
    failed = [0] * args.threads
    late = [[] for _ in range(args.threads)]

    def worker(t):
        rng = random.Random(t)
        due = [(start + rng.random() * interval, i) for i in range(t, n, args.threads)]
        heapq.heapify(due)
        conn = None
        while due:
            at, i = heapq.heappop(due)
            if at >= end:
                break
            now = time.monotonic()
            if at > now:
                time.sleep(at - now)
            else:
                late[t].append(now - at)
            path = (
                f"/probe?module=http_2xx&target="
                f"http://127.0.0.1:{args.target_port}/bb/{args.name}/p{i}"
            )
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
                conn.request("GET", path)
                body = conn.getresponse().read()
                if b"probe_success 1" in body:
                    done[t] += 1
                else:
                    failed[t] += 1
            except OSError:
                failed[t] += 1
                conn = None
            heapq.heappush(due, (at + interval, i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(args.threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lateness = sorted(x for l in late for x in l)
    print(
        json.dumps(
            {
                "done": sum(done),
                "failed": sum(failed),
                "late_p99_ms": 1e3 * lateness[int(0.99 * (len(lateness) - 1))] if lateness else 0.0,
            }
        )
    )


# ----------------------------------------------------------------- measurements


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def compare_point(binary, procs, nginx, work, n, interval_ms, duration, warmup=3.0, rules=False):
    """backstop and blackbox_exporter (driven) probing `n` targets each every
    `interval_ms`, at the same time; CPU over the last `duration` seconds."""
    name = f"n{n}i{interval_ms}{'r' if rules else ''}"
    bs_port = free_port()
    cfg = backstop_config(work, name, bs_port, nginx["port"], n, interval_ms, rules=rules)
    bs = start_backstop(procs, binary, cfg, work, "backstop-" + name)
    wait_http(f"http://127.0.0.1:{bs_port}/healthz")
    bb, bb_port = start_blackbox(procs, work)
    threads = max(1, min(16, n))
    driver = procs.start(
        "driver",
        [
            sys.executable,
            os.path.abspath(__file__),
            "drive",
            "--port", str(bb_port),
            "--target-port", str(nginx["port"]),
            "--name", name,
            "--targets", str(n),
            "--interval-ms", str(interval_ms),
            "--duration", str(warmup + duration + 0.5),
            "--threads", str(threads),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(warmup)
    master = nginx["proc"].pid
    with open(f"/proc/{master}/task/{master}/children") as f:
        worker = int(f.read().split()[0])
    pids = {"backstop": bs.pid, "blackbox": bb.pid, "driver": driver.pid, "nginx": worker}
    c0 = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.time()
    time.sleep(duration)
    c1 = {k: cpu_seconds(p) for k, p in pids.items()}
    t1 = time.time()
    hwm = {k: status_kib(pids[k], "VmHWM") for k in ("backstop", "blackbox")}
    rss = {k: status_kib(pids[k], "VmRSS") for k in ("backstop", "blackbox")}
    # A driver on a loaded machine can finish its last requests late.
    out, _ = driver.communicate(timeout=180)
    drove = json.loads(out.strip().splitlines()[-1])
    procs.stop(bs)
    procs.stop(bb)
    time.sleep(1.3)  # nginx flushes its access log buffers every second
    prefix = f"/bs/{name}/"
    bs_n = sum(1 for t, p, s in read_log(nginx, "bs") if t0 <= t < t1 and p.startswith(prefix))
    bb_prefix = f"/bb/{name}/"
    bb_n = sum(1 for t, p, s in read_log(nginx, "bb") if t0 <= t < t1 and p.startswith(bb_prefix))
    cpu = {k: c1[k] - c0[k] for k in c0}
    point = {
        "probes": n,
        "interval_ms": interval_ms,
        "rules": rules,
        "seconds": round(t1 - t0, 2),
        "expected_per_tool": round(n * (t1 - t0) / (interval_ms / 1000.0)),
        "backstop_checks": bs_n,
        "blackbox_checks": bb_n,
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "backstop_cpu_s_per_1000": round(1000 * cpu["backstop"] / max(bs_n, 1), 4),
        "blackbox_cpu_s_per_1000": round(1000 * cpu["blackbox"] / max(bb_n, 1), 4),
        "backstop_vmhwm_kib": hwm["backstop"],
        "blackbox_vmhwm_kib": hwm["blackbox"],
        "backstop_vmrss_kib": rss["backstop"],
        "blackbox_vmrss_kib": rss["blackbox"],
        "driver": drove,
    }
    point["cpu_ratio"] = round(point["backstop_cpu_s_per_1000"] / max(point["blackbox_cpu_s_per_1000"], 1e-9), 3)
    point["hwm_ratio"] = round(hwm["backstop"] / hwm["blackbox"], 3)
    log(f"  {n} probes every {interval_ms} ms{' with rules' if rules else ''}: "
        f"backstop {point['backstop_cpu_s_per_1000']} CPU-s/1000 ({bs_n} checks), "
        f"blackbox {point['blackbox_cpu_s_per_1000']} ({bb_n}); ratio {point['cpu_ratio']}; "
        f"VmHWM {hwm['backstop']} vs {hwm['blackbox']} KiB (ratio {point['hwm_ratio']}); "
        f"driver {cpu['driver']:.2f} CPU-s, nginx {cpu['nginx']:.2f}")
    return point


def example_config(work, port, deployment, refused=None):
    """config.example.toml listening on `port`, its http and tcp targets on
    `refused` (a loopback port that refuses unless given), and the
    environment it reads: PostgreSQL and Redis on ports that refuse, the
    state in `work`. Returns the file's path and the environment."""
    with open(os.path.join(REPO, "config.example.toml")) as f:
        text = f.read()
    text = text.replace('listen = "0.0.0.0:9469"', f'listen = "127.0.0.1:{port}"')
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{refused or refused_port()}")
    path = os.path.join(work, f"example-{deployment}.toml")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    state = os.path.join(work, f"state-example-{deployment}")
    os.makedirs(state, exist_ok=True)
    env = {
        "STATE_DIRECTORY": state,
        "DEPLOYMENT_ID": deployment,
        "DATABASE_URL": f"postgres://app:secret@127.0.0.1:{refused_port()}/app",
        "REDIS_URL": f"redis://127.0.0.1:{refused_port()}/0",
        "BACKSTOP_ADMIN_TOKEN": "",
    }
    return path, env


def idle_rss(binary, procs, work, seconds=10):
    """backstop with config.example.toml, its targets on loopback ports that
    refuse, after `seconds`; and blackbox_exporter idle, for reference."""
    port = free_port()
    path, env = example_config(work, port, "bench")
    bs = start_backstop(procs, binary, path, work, "backstop-example", env=env)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    bb, _ = start_blackbox(procs, work)
    c0 = cpu_seconds(bs.pid), cpu_seconds(bb.pid)
    time.sleep(seconds)
    c1 = cpu_seconds(bs.pid), cpu_seconds(bb.pid)
    r = {
        "seconds": seconds,
        "backstop_vmrss_kib": status_kib(bs.pid, "VmRSS"),
        "backstop_vmhwm_kib": status_kib(bs.pid, "VmHWM"),
        "backstop_cpu_s": round(c1[0] - c0[0], 3),
        "blackbox_vmrss_kib": status_kib(bb.pid, "VmRSS"),
        "blackbox_cpu_s": round(c1[1] - c0[1], 3),
    }
    procs.stop(bs)
    procs.stop(bb)
    log(f"  idle: backstop (config.example.toml) VmRSS {r['backstop_vmrss_kib']} KiB, "
        f"VmHWM {r['backstop_vmhwm_kib']} KiB, {r['backstop_cpu_s']} CPU-s in {seconds}s; "
        f"blackbox idle VmRSS {r['blackbox_vmrss_kib']} KiB")
    return r


def jitter_and_render(binary, procs, nginx, work, n=1000, seconds=25, renders=20, prio=None):
    """backstop alone with `n` probes every second. Start jitter from the
    target's side: for each probe, its arrivals against a fixed 1 s grid
    whose phase is the median of its own offsets. Then `/metrics` render
    time, from the client and as CPU of backstop. With `prio`, backstop,
    nginx and the bare-sleep thread all run at that scheduling priority."""
    name = f"jitter{n}"
    port = free_port()
    load_before = loadavg()
    cfg = backstop_config(work, name, port, nginx["port"], n, 1000)
    bs = start_backstop(procs, binary, cfg, work, "backstop-" + name, prio=prio)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    t_start = time.time()
    # backstop's CPU use, sampled every 0.25 s through the whole run.
    cpu_samples = [(time.time(), cpu_seconds(bs.pid))]
    sampling = threading.Event()

    def cpu_sampler():
        while not sampling.wait(0.25):
            try:
                cpu_samples.append((time.time(), cpu_seconds(bs.pid)))
            except OSError:
                return

    sampler = threading.Thread(target=cpu_sampler, daemon=True)
    sampler.start()
    # The machine's own noise floor meanwhile: how late a bare 10 ms sleep wakes.
    overshoot = []

    def sleeper():
        set_priority(prio, threading.get_native_id())
        end = time.monotonic() + seconds - 1
        while time.monotonic() < end:
            s = time.monotonic()
            time.sleep(0.01)
            overshoot.append((time.monotonic() - s - 0.01) * 1e3)

    floor = threading.Thread(target=sleeper)
    floor.start()
    time.sleep(seconds)
    floor.join()
    # /metrics while the probes run.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    walls, size, body = [], 0, b""
    render_from = time.time()
    cpu0 = cpu_seconds(bs.pid)
    for _ in range(renders):
        s = time.perf_counter()
        conn.request("GET", "/metrics")
        body = conn.getresponse().read()
        walls.append(time.perf_counter() - s)
        size = len(body)
    cpu1 = cpu_seconds(bs.pid)
    render_to = time.time()
    conn.close()
    if renders:
        time.sleep(1.0)  # arrivals just after the renders count as "during"
    sampling.set()
    sampler.join()
    hwm = status_kib(bs.pid, "VmHWM")
    procs.stop(bs)
    time.sleep(1.3)
    by_path = {}
    prefix = f"/bs/{name}/"
    for t, p, s in read_log(nginx, "bs"):
        if p.startswith(prefix) and t >= t_start + 3:  # past the first, jittered starts
            by_path.setdefault(p, []).append(t)
    # Each probe's grid: its first arrival, 1 s apart, shifted by the median
    # of its offsets before the renders started.
    devs, during = [], []
    for ts in by_path.values():
        steady = [t for t in ts if t < render_from]
        if len(steady) < 3:
            continue
        t0 = steady[0]
        phase = statistics.median(t - t0 - round(t - t0) for t in steady)
        for t in ts:
            d = abs(t - t0 - round(t - t0) - phase) * 1e3
            if t < render_from:
                devs.append(d)
            elif t <= render_to + 0.2:
                during.append(d)
    lines = body.count(b"\n")
    # CPU share of one core, steady window and per second.
    steady_cpu = [(t, c) for t, c in cpu_samples if t_start + 3 <= t <= render_from]
    cpu_share = (
        (steady_cpu[-1][1] - steady_cpu[0][1]) / (steady_cpu[-1][0] - steady_cpu[0][0])
        if len(steady_cpu) > 1 else None
    )
    per_s = []
    for (t0_, c0_), (t1_, c1_) in zip(cpu_samples, cpu_samples[4:]):
        if t1_ <= render_from:
            per_s.append((c1_ - c0_) / (t1_ - t0_))
    late5 = sum(d > 5 for d in devs)
    late5_during = sum(d > 5 for d in during)
    r = {
        "probes": n,
        "priority": prio or "default",
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "cpu_share_steady": round(cpu_share, 4) if cpu_share is not None else None,
        "cpu_share_max_1s": round(max(per_s), 4) if per_s else None,
        "late_over_5ms_share": round(late5 / len(devs), 4) if devs else None,
        "during_renders_late_over_5ms_share": round(late5_during / len(during), 4) if during else None,
        "renders": renders,
        "arrivals": len(devs),
        "jitter_ms_p50": round(pct(devs, 0.5), 2),
        "jitter_ms_p99": round(pct(devs, 0.99), 2),
        "jitter_ms_max": round(max(devs), 2),
        "sleep_overshoot_ms_p99": round(pct(overshoot, 0.99), 2),
        "during_renders_arrivals": len(during),
        "during_renders_jitter_ms_p99": round(pct(during, 0.99), 2) if during else None,
        "metrics_bytes": size,
        "metrics_lines": lines,
        "render_wall_ms_median": round(1e3 * statistics.median(walls), 2) if walls else None,
        "render_wall_ms_min": round(1e3 * min(walls), 2) if walls else None,
        "render_cpu_ms_each": round(1e3 * (cpu1 - cpu0) / renders, 2) if renders else None,
        "backstop_vmhwm_kib": hwm,
    }
    log(f"  jitter, {n} probes every 1s: p50 {r['jitter_ms_p50']} ms, p99 {r['jitter_ms_p99']} ms, "
        f"max {r['jitter_ms_max']} ms over {len(devs)} arrivals (nginx $msec: 1 ms resolution); "
        f"while /metrics was rendered: p99 {r['during_renders_jitter_ms_p99']} ms; "
        f"a bare 10 ms sleep on this machine meanwhile overshot by p99 {r['sleep_overshoot_ms_p99']} ms")
    log(f"  priority {r['priority']}; load average {load_before} before, {r['loadavg_after']} after; "
        f"backstop CPU {r['cpu_share_steady']} of a core (max 1 s: {r['cpu_share_max_1s']}); "
        f"arrivals over 5 ms late: {r['late_over_5ms_share']} steady, "
        f"{r['during_renders_late_over_5ms_share']} during renders")
    if renders:
        log(f"  /metrics with {n} probes: {size} bytes, {lines} lines; median {r['render_wall_ms_median']} ms "
            f"wall, {r['render_cpu_ms_each']} CPU-ms per render")
    return r


class Standin(BaseHTTPRequestHandler):
    """The rollback stand-in: records when each call arrives."""

    calls = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        Standin.calls.append(time.time())
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *a):
        pass


def status(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/status")
    s = json.loads(c.getresponse().read())
    c.close()
    return s


def detection(binary, procs, nginx, work, trials=3, interval_ms=1000, n=3):
    """`consecutive_failures >= 3` on one http probe every second: a stable
    v1, then v2 watched; the target flips to 503, and the time until the
    rollback stand-in is called is compared with N x interval."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Standin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    platform = server.server_address[1]
    flag = os.path.join(nginx["prefix"], "flag503")
    results, decisions = [], []
    try:
        for trial in range(trials):
            name = f"detect{trial}"
            port = free_port()
            idfile = os.path.join(work, f"{name}.id")
            with open(idfile, "w") as f:
                f.write("v1\n")
            extra = f"""
[[rule]]
name = "health failing"
probe = "p0"
when = "consecutive_failures >= {n}"
action = "rollback"

[rollback]
target = "webhook"
cooldown = "1m"
verify = "10s"

[rollback.webhook]
url = "http://127.0.0.1:{platform}/rollback"
"""
            cfg = backstop_config(work, name, port, nginx["port"], 1, interval_ms, extra=extra)
            with open(cfg) as f:
                text = f.read()
            # A first agent watches v1 for 2 s, so it is stable and there is a
            # deployment to return to; the second (same store) watches v2
            # for a minute, long enough to see it fail.
            def write(watch):
                with open(cfg, "w") as f:
                    f.write(text.replace(
                        'id = "bench"',
                        f'id_file = "{idfile}"\npoll_interval = "250ms"\nwarmup = "1s"\nwatch = "{watch}"',
                    ))

            write("2s")
            bs = start_backstop(procs, binary, cfg, work, "backstop-" + name)
            wait_http(f"http://127.0.0.1:{port}/healthz")

            def wait_state(dep, state, limit=20):
                end = time.monotonic() + limit
                while time.monotonic() < end:
                    d = status(port).get("deployment") or {}
                    if d.get("id") == dep and d.get("state") == state:
                        return
                    time.sleep(0.05)
                raise RuntimeError(f"deployment {dep} never reached {state}")

            wait_state("v1", "stable")
            procs.stop(bs)
            write("1m")
            with open(idfile, "w") as f:
                f.write("v2\n")
            bs = start_backstop(procs, binary, cfg, work, f"backstop-{name}-v2")
            wait_http(f"http://127.0.0.1:{port}/healthz")
            wait_state("v2", "watching")
            time.sleep(random.Random(trial).random() * interval_ms / 1000.0 + 0.2)
            before = len(Standin.calls)
            open(flag, "w").close()
            flipped = time.time()
            end = time.monotonic() + 15
            while len(Standin.calls) == before and time.monotonic() < end:
                time.sleep(0.005)
            os.unlink(flag)
            called = Standin.calls[before] if len(Standin.calls) > before else None
            procs.stop(bs)
            time.sleep(1.3)
            fails = [t for t, p, st in read_log(nginx, "bs")
                     if p.startswith(f"/bs/{name}/") and st == "503" and t >= flipped - 0.002]
            took = None if called is None else round(called - flipped, 3)
            # From the Nth failing check's arrival at the target to the call:
            # what the agent itself adds (the rest is waiting for checks).
            after = (None if called is None or len(fails) < n
                     else round(called - fails[n - 1], 3))
            results.append(took)
            decisions.append(after)
            log(f"  detection trial {trial + 1}: rollback called {took} s after the flip "
                f"(limit {n} x {interval_ms / 1000:g} s = {n * interval_ms / 1000:g} s); "
                f"{after} s after check {n} failed")
    finally:
        server.shutdown()
        if os.path.exists(flag):
            os.unlink(flag)
    return {
        "interval_ms": interval_ms,
        "n": n,
        "limit_s": n * interval_ms / 1000.0,
        "seconds": results,
        "worst_s": max((r for r in results if r is not None), default=None),
        "after_nth_failure_s": decisions,
    }


def plot(points, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda p: p["probes"])
    xs = [p["probes"] for p in points]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(xs, [p["backstop_cpu_s_per_1000"] for p in points], "o-", label="backstop")
    a.plot(xs, [p["blackbox_cpu_s_per_1000"] for p in points], "s-", label="blackbox_exporter")
    a.set_xscale("log")
    a.set_xlabel("probes (each every 1 s)")
    a.set_ylabel("CPU ms per probe (= CPU s per 1,000)")
    a.set_title("CPU per probe")
    a.grid(True, alpha=0.3)
    a.legend()
    b.plot(xs, [p["backstop_vmhwm_kib"] / 1024 for p in points], "o-", label="backstop")
    b.plot(xs, [p["blackbox_vmhwm_kib"] / 1024 for p in points], "s-", label="blackbox_exporter")
    b.set_xscale("log")
    b.set_xlabel("probes (each every 1 s)")
    b.set_ylabel("peak RSS (VmHWM), MiB")
    b.set_title("Peak RSS")
    b.grid(True, alpha=0.3)
    b.legend()
    fig.suptitle("backstop vs blackbox_exporter, same run, same nginx target (loopback)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def log(msg):
    print(msg, flush=True)


def run(args):
    work = tempfile.mkdtemp(prefix="backstop-bench-")
    procs = Procs()

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "work": work}
    try:
        prio = {"nice": args.nice, "fifo": args.fifo} if (args.nice is not None or args.fifo) else None
        if prio and args.only != {"jitter"}:
            sys.exit("--nice/--fifo are for `--only jitter`")
        nginx = start_nginx(procs, work, prio=prio)
        log(f"nginx on 127.0.0.1:{nginx['port']}; work dir {work}")
        with open("/proc/loadavg") as f:
            results["loadavg_before"] = f.read().split()[:3]
        if "compare" in args.only:
            log(f"same rate: {args.probes} probes every {args.interval_ms} ms, {args.seconds} s")
            results["compare"] = compare_point(
                args.backstop, procs, nginx, work, args.probes, args.interval_ms, args.seconds
            )
        if "rules" in args.only:
            log("the same, backstop with one default rule per probe")
            results["compare_rules"] = compare_point(
                args.backstop, procs, nginx, work, args.probes, args.interval_ms, args.seconds, rules=True
            )
        if "sweep" in args.only:
            log(f"sweep: {args.sweep} probes every 1 s, {args.seconds} s each")
            results["sweep"] = [
                compare_point(args.backstop, procs, nginx, work, n, 1000, args.seconds)
                for n in args.sweep
            ]
            plot(results["sweep"], args.plot)
            log(f"  plot: {args.plot}")
        if "idle" in args.only:
            results["idle"] = idle_rss(args.backstop, procs, work)
        if "jitter" in args.only:
            results["jitter"] = jitter_and_render(
                args.backstop, procs, nginx, work, n=args.jitter_probes, renders=args.renders, prio=prio
            )
        if "detect" in args.only:
            results["detection"] = detection(args.backstop, procs, nginx, work, trials=args.trials)
        with open("/proc/loadavg") as f:
            results["loadavg_after"] = f.read().split()[:3]
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        log(f"results: {args.json}")


def ab(args):
    """Two builds of backstop, one after the other and twice each, with the
    same probes against the same nginx: peak RSS and CPU per 1,000 checks
    of each, to measure a change."""
    work = tempfile.mkdtemp(prefix="backstop-bench-")
    procs = Procs()
    rows = []
    try:
        nginx = start_nginx(procs, work)
        for rnd in range(args.rounds):
            for label, binary in (("a", args.a), ("b", args.b)):
                name = f"ab{label}{rnd}"
                port = free_port()
                cfg = backstop_config(work, name, port, nginx["port"], args.probes, args.interval_ms,
                                      rules=args.rules)
                if args.warmup or args.watch:
                    # A deployment that turns stable within the run (windows fitted to it).
                    with open(cfg) as f:
                        text = f.read()
                    extra = "".join(f'{k} = "{v}"\n' for k, v in (("warmup", args.warmup), ("watch", args.watch)) if v)
                    with open(cfg, "w") as f:
                        f.write(text.replace('[deployment]\nid = "bench"\n', '[deployment]\nid = "bench"\n' + extra, 1))
                env = dict(kv.split("=", 1) for kv in (args.a_env if label == "a" else args.b_env))
                bs = start_backstop(procs, binary, cfg, work, "backstop-" + name, env=env)
                wait_http(f"http://127.0.0.1:{port}/healthz")
                time.sleep(3)
                c0, t0 = cpu_seconds(bs.pid), time.time()
                time.sleep(args.seconds)
                c1, t1 = cpu_seconds(bs.pid), time.time()
                # Memory first: rendering /status for many probes is itself a
                # peak the probing did not cause.
                hwm = status_kib(bs.pid, "VmHWM")
                anon, file_ = status_kib(bs.pid, "RssAnon"), status_kib(bs.pid, "RssFile")
                threads = status_kib(bs.pid, "Threads")
                st = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10).read())
                held = sum(p["samples"] for p in st["probes"])
                state = (st.get("deployment") or {}).get("state")
                procs.stop(bs)
                time.sleep(1.3)
                n = sum(1 for t, p, st in read_log(nginx, "bs")
                        if t0 <= t < t1 and p.startswith(f"/bs/{name}/"))
                rows.append({"build": label, "binary": binary, "env": env, "vmhwm_kib": hwm,
                             "samples_held": held, "state": state,
                             "rss_anon_kib": anon, "rss_file_kib": file_, "threads": threads,
                             "cpu_s_per_1000": round(1000 * (c1 - c0) / max(n, 1), 4), "checks": n})
                log(f"  {label} ({binary} {env or ''}): VmHWM {hwm} KiB (at the end: anon {anon}, "
                    f"file {file_}; {threads} threads; {held} samples held, {state}), "
                    f"{rows[-1]['cpu_s_per_1000']} CPU-s/1000 ({n} checks); "
                    f"load average {open('/proc/loadavg').read().split()[0]}")
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--backstop", required=True)
    r.add_argument("--probes", type=int, default=50)
    r.add_argument("--interval-ms", type=int, default=100)
    r.add_argument("--seconds", type=float, default=20.0)
    r.add_argument("--sweep", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100, 1000])
    r.add_argument("--trials", type=int, default=3)
    r.add_argument("--only", default="compare,rules,sweep,idle,jitter,detect")
    r.add_argument("--plot", default=os.path.join(BENCH_DIR, "cpu_rss.png"))
    r.add_argument("--json", default=None)
    r.add_argument("--keep", action="store_true")
    r.add_argument("--jitter-probes", type=int, default=1000, help="probes every 1 s in the jitter run")
    r.add_argument("--renders", type=int, default=20, help="/metrics renders after the jitter window")
    r.add_argument("--nice", type=int, default=None,
                   help="jitter only: nice value (e.g. -20) for backstop, nginx and the bare-sleep thread")
    r.add_argument("--fifo", type=int, default=None,
                   help="jitter only: SCHED_FIFO priority (like chrt -f) for the same three")
    d = sub.add_parser("drive")
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--target-port", type=int, required=True)
    d.add_argument("--name", required=True)
    d.add_argument("--targets", type=int, required=True)
    d.add_argument("--interval-ms", type=int, required=True)
    d.add_argument("--duration", type=float, required=True)
    d.add_argument("--threads", type=int, default=8)
    a = sub.add_parser("ab")
    a.add_argument("--a", required=True)
    a.add_argument("--b", required=True)
    a.add_argument("--probes", type=int, default=1000)
    a.add_argument("--interval-ms", type=int, default=1000)
    a.add_argument("--seconds", type=float, default=15.0)
    a.add_argument("--rounds", type=int, default=2)
    a.add_argument("--json", default=None)
    a.add_argument("--rules", action="store_true", help="one default rule per probe")
    a.add_argument("--warmup", default=None, help='[deployment] warmup, e.g. "1s"')
    a.add_argument("--watch", default=None, help='[deployment] watch, e.g. "5s": stable within the run')
    a.add_argument("--a-env", action="append", default=[], help="NAME=VALUE for build a's process")
    a.add_argument("--b-env", action="append", default=[], help="NAME=VALUE for build b's process")
    args = ap.parse_args()
    if args.cmd == "ab":
        ab(args)
    elif args.cmd == "run":
        args.only = set(args.only.split(","))
        run(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
