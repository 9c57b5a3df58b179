#!/usr/bin/env python3
"""How soon a new deployment is seen, and what seeing it soon costs.

1. Deploy to rollback call: a local service answers `/version` and
   `/health`; the agent (the real binary) watches it with the defaults of
   `[deployment]` (no `poll_interval`), a critical `http` health probe every
   250 ms and `warmup = "2s"`. Once v1 is stable, v2 is deployed with a
   health endpoint that answers 503, and the time from the switch to the
   rollback call reaching the stand-in platform is measured, `--runs` times.
   The floor is the first failing check (it makes the agent read the id)
   plus the warm-up, or plus three failures where those take longer.
2. The cost of polling `id_url` every second: the agent's CPU time over
   `--seconds` with `poll_interval` 1 s and 10 s, one quiet probe, and the
   `/version` requests the service saw.

    python3 bench/discovery.py --bin target/release/backstop [--runs 10] [--seconds 60]

Everything listens on loopback; every loop is bounded in time; every process
it starts is stopped when it ends.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def cpu_seconds(pid):
    """CPU time of all the process's threads, in seconds, to the
    nanosecond (the scheduler's own account, not 10 ms ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Service:
    """The watched service and the stand-in platform in one server."""

    def __init__(self):
        self.lock = threading.Lock()
        self.version = "v1"
        self.healthy = True
        self.calls = []
        self.version_reads = 0
        svc = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code, body):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                with svc.lock:
                    version, healthy = svc.version, svc.healthy
                    if self.path == "/version":
                        svc.version_reads += 1
                if self.path == "/version":
                    self.reply(200, json.dumps({"version": version}))
                elif self.path == "/health":
                    self.reply(200 if healthy else 503, "ok" if healthy else "down")
                else:
                    self.reply(404, "")

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with svc.lock:
                    svc.calls.append((time.monotonic(), body))
                    svc.version = body.get("return_to") or "v1"
                    svc.healthy = True
                self.reply(200, "{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def set(self, version, healthy):
        with self.lock:
            self.version, self.healthy = version, healthy

    def close(self):
        self.server.shutdown()


def config(dir, port, svc, deployment, probe_interval):
    path = os.path.join(dir, "backstop.toml")
    with open(path, "w") as f:
        f.write(f"""[agent]
listen = "127.0.0.1:{port}"
state_dir = "{dir}/state"

[service]
name = "shop"

[deployment]
id_url = "{svc.url('/version')}"
id_pointer = "/version"
{deployment}

[[probe]]
name = "health"
level = 1
type = "http"
url = "{svc.url('/health')}"
interval = "{probe_interval}"
timeout = "200ms"
critical = true

[rollback]
target = "webhook"
cooldown = "1s"

[rollback.webhook]
url = "{svc.url('/rollback')}"
""")
    return path


def start(bin, cfg, port):
    agent = subprocess.Popen([bin, "run", "--config", cfg],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return agent
        except OSError:
            time.sleep(0.05)
    agent.kill()
    sys.exit("the agent did not listen within 20 s")


def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
        return json.load(r)


def wait(what, check, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def deploy_to_call(bin, runs):
    times = []
    for i in range(runs):
        svc = Service()
        port = free_port()
        with tempfile.TemporaryDirectory() as dir:
            cfg = config(dir, port, svc, 'warmup = "2s"\nwatch = "2s"', "250ms")
            agent = start(bin, cfg, port)
            try:
                wait("v1 stable", lambda: status(port)["deployment"]["state"] == "stable")
                # Between two health checks, anywhere in the probe's period.
                time.sleep(0.25 * (i % 4) / 4)
                switched = time.monotonic()
                svc.set("v2", False)
                wait("the rollback call", lambda: len(svc.calls) > 0)
                called, body = svc.calls[0]
                assert body["deployment"] == "v2", body
                times.append(called - switched)
                time.sleep(1)
                assert len(svc.calls) == 1, svc.calls
            finally:
                agent.kill()
                agent.wait()
                svc.close()
        print(f"  run {i + 1}: {times[-1]:.2f} s", flush=True)
    return times


def seen_healthy(bin, runs):
    """A healthy v2, whose probes see no change: seen by polling alone."""
    times = []
    svc = Service()
    port = free_port()
    with tempfile.TemporaryDirectory() as dir:
        cfg = config(dir, port, svc, 'warmup = "1s"\nwatch = "1s"', "250ms")
        agent = start(bin, cfg, port)
        try:
            wait("v1 seen", lambda: status(port)["deployment"]["id"] == "v1")
            for i in range(runs):
                time.sleep(1.0 + 0.1 * i)
                version = f"v{i + 2}"
                switched = time.monotonic()
                svc.set(version, True)
                wait(version, lambda: status(port)["deployment"]["id"] == version)
                times.append(time.monotonic() - switched)
        finally:
            agent.kill()
            agent.wait()
            svc.close()
    return times


def polling_cost(bin, seconds):
    out = {}
    for poll in ["1s", "10s"]:
        svc = Service()
        port = free_port()
        with tempfile.TemporaryDirectory() as dir:
            cfg = config(dir, port, svc,
                         f'poll_interval = "{poll}"\nwarmup = "1s"\nwatch = "1s"', "10s")
            agent = start(bin, cfg, port)
            try:
                time.sleep(3)
                reads, cpu = svc.version_reads, cpu_seconds(agent.pid)
                time.sleep(seconds)
                out[poll] = (cpu_seconds(agent.pid) - cpu, svc.version_reads - reads)
            finally:
                agent.kill()
                agent.wait()
                svc.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/backstop")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    print("deploy (health 503) to rollback call, defaults of [deployment], warm-up 2 s, 3 x 250 ms:")
    times = deploy_to_call(args.bin, args.runs)
    print(f"  min {min(times):.2f} s, median {statistics.median(times):.2f} s, "
          f"max {max(times):.2f} s over {len(times)} runs")
    print("a healthy deployment (no probe outcome changes), switch to seen in /status (polled every 50 ms):")
    times = seen_healthy(args.bin, args.runs)
    print(f"  min {min(times):.2f} s, median {statistics.median(times):.2f} s, "
          f"max {max(times):.2f} s over {len(times)} switches")
    print(f"polling id_url, {args.seconds} s, one probe every 10 s:")
    for poll, (cpu, reads) in polling_cost(args.bin, args.seconds).items():
        print(f"  poll_interval {poll:>3}: {reads} reads of /version, agent CPU {1000 * cpu:.1f} ms "
              f"({1000 * cpu / args.seconds:.3f} ms per second)")


if __name__ == "__main__":
    main()
