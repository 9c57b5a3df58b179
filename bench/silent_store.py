#!/usr/bin/env python3
"""Does a silent coordination store slow the watch?

One agent (the real binary) coordinates through Redis (`[fleet] redis`)
behind a proxy that can fall silent: it stops forwarding without closing
anything, as a partition that drops packets does. A local service answers
`/version` and `/health`. For each run the proxy is healthy or silent, and
a new deployment is switched to; measured from `/status`, polled every
20 ms:

- deploy to seen: the switch to `/status` showing the new deployment;
- warm-up end to the next step: from the warm-up's end (first seen +
  `warmup`) to `/status` showing the deployment `watching`.

    python3 bench/silent_store.py --bin target/release/backstop [--runs 5]

Needs `redis-server` (bench/README.md says how it was run). Everything
listens on loopback; every loop is bounded in time; every process it starts
is stopped when it ends.
"""

import argparse
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from discovery import Service, free_port, start, status, wait  # noqa: E402

WARMUP_S = 1.0


class SilentProxy:
    """Forwards TCP to `upstream`; while silent, holds every byte back."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.silent = threading.Event()
        self.healed = threading.Condition()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self.accept, daemon=True).start()

    def set_silent(self, silent):
        with self.healed:
            if silent:
                self.silent.set()
            else:
                self.silent.clear()
                self.healed.notify_all()

    def accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    def pump(self, a, b):
        while True:
            try:
                ready, _, _ = select.select([a], [], [], 0.5)
                if self.closed:
                    return
                if not ready:
                    continue
                data = a.recv(16384)
            except OSError:
                return
            if not data:
                return
            with self.healed:
                while self.silent.is_set() and not self.closed:
                    self.healed.wait(0.5)
            try:
                b.sendall(data)
            except OSError:
                return

    def close(self):
        self.closed = True
        self.sock.close()


def config(dir, port, svc, redis_url):
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
warmup = "{WARMUP_S}s"
watch = "1h"

[[probe]]
name = "health"
level = 1
type = "http"
url = "{svc.url('/health')}"
interval = "250ms"
timeout = "200ms"
critical = true

[rollback]
target = "webhook"

[rollback.webhook]
url = "{svc.url('/rollback')}"

[fleet]
replica = "a"
redis = "{redis_url}"
heartbeat = "1s"
""")
    return path


def run(bin, redis_port, silent):
    svc = Service()
    proxy = SilentProxy(redis_port)
    port = free_port()
    with tempfile.TemporaryDirectory() as dir:
        cfg = config(dir, port, svc, f"redis://127.0.0.1:{proxy.port}/0")
        agent = start(bin, cfg, port)
        try:
            wait("v1 watched", lambda: status(port)["deployment"]["state"] == "watching")
            wait("the fleet up", lambda: status(port)["fleet"]["up"] is True)
            if silent:
                proxy.set_silent(True)
                wait("the fleet seen down", lambda: status(port)["fleet"]["up"] is False, 30)
            switched = time.monotonic()
            svc.set("v2", True)
            seen_at = None
            watching_at = None
            deadline = switched + 30
            while time.monotonic() < deadline and watching_at is None:
                s = status(port)
                now = time.monotonic()
                if seen_at is None and s["deployment"]["id"] == "v2":
                    seen_at = now
                if seen_at is not None and s["deployment"]["state"] == "watching" \
                        and s["deployment"]["id"] == "v2":
                    watching_at = now
                time.sleep(0.02)
            if watching_at is None:
                sys.exit("v2 was not watched within 30 s")
            return seen_at - switched, watching_at - (seen_at + WARMUP_S)
        finally:
            proxy.set_silent(False)
            agent.kill()
            agent.wait()
            proxy.close()
            svc.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/backstop")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    redis_bin = shutil.which("redis-server") or sys.exit("needs redis-server")
    redis_port = free_port()
    redis = subprocess.Popen([redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        for silent in (False, True):
            seen, step = [], []
            for _ in range(args.runs):
                a, b = run(args.bin, redis_port, silent)
                seen.append(a)
                step.append(b)
            name = "silent " if silent else "healthy"
            print(f"coordination store {name}: deploy to seen "
                  f"median {1000 * statistics.median(seen):.0f} ms (max {1000 * max(seen):.0f}); "
                  f"warm-up end to watching median {1000 * statistics.median(step):.0f} ms "
                  f"(max {1000 * max(step):.0f}) over {args.runs} runs", flush=True)
    finally:
        redis.kill()
        redis.wait()


if __name__ == "__main__":
    main()
