#!/usr/bin/env python3
"""How long backstop takes to stop after SIGTERM, and with which exit code.

SIGTERM must finish in-flight work, flush the store and exit 0 within 5 s.
This starts the daemon in four situations, sends SIGTERM, and measures the
time until the process has exited (wall clock, so a figure of this machine
at the moment, not a bound):

  idle           5 http probes to a target that answers at once
  probes-hung    200 http probes (every 10 s, timeout 10 s) to a target that
                 never answers, all in flight
  call-2s        a rollback call in flight to a webhook that answers after 2 s
  call-30s       a rollback call in flight to a webhook that answers after 30 s

    python3 bench/sigterm.py [--bin target/release/backstop] [--runs 3]

Stand-ins are Python HTTP servers on loopback; nothing else is needed.
"""

import argparse
import json
import os
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

ADMIN = "sigterm-bench-admin-token-0123"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve(delay_for_path):
    """A threaded HTTP server answering 200 after delay_for_path(path) s."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self):
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            delay = delay_for_path(self.path)
            if delay is None:  # never answer
                time.sleep(3600)
                return
            time.sleep(delay)
            body = b'{"ok": true}'
            try:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass

        do_GET = _answer
        do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def config(dir, port, target_url, probes, interval, timeout, hook_url):
    lines = [
        "[agent]",
        f'listen = "127.0.0.1:{port}"',
        f'state_dir = "{dir}/state"',
        f'admin_token = "{ADMIN}"',
        "default_rules = false",
        "",
        "[service]",
        'name = "web"',
        "",
        "[deployment]",
        'id = "v2"',
        'warmup = "100ms"',
        'watch = "1h"',
        "",
    ]
    for i in range(probes):
        lines += [
            "[[probe]]",
            f'name = "p{i}"',
            "level = 1",
            'type = "http"',
            f'url = "{target_url}/p{i}"',
            f'interval = "{interval}"',
            f'timeout = "{timeout}"',
            "",
        ]
    lines += [
        "[rollback]",
        'target = "webhook"',
        'deadline = "60s"',
        "  [rollback.webhook]",
        f'  url = "{hook_url}"',
        '  timeout = "60s"',
        "",
    ]
    return "\n".join(lines)


def get_json(url, token=None, data=None, timeout=5):
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    if data:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def one_run(binary, scenario):
    fast = serve(lambda path: 0)
    hung = serve(lambda path: None)
    hook_delay = {"call-2s": 2, "call-30s": 30}.get(scenario, 0)
    hook = serve(lambda path: hook_delay)
    probes, target, interval, timeout = {
        "idle": (5, fast, "1s", "500ms"),
        "probes-hung": (200, hung, "10s", "10s"),
        "call-2s": (5, fast, "1s", "500ms"),
        "call-30s": (5, fast, "1s", "500ms"),
    }[scenario]
    port = free_port()
    with tempfile.TemporaryDirectory() as dir:
        path = os.path.join(dir, "backstop.toml")
        with open(path, "w") as f:
            f.write(
                config(
                    dir,
                    port,
                    f"http://127.0.0.1:{target.server_port}",
                    probes,
                    interval,
                    timeout,
                    f"http://127.0.0.1:{hook.server_port}/rollback",
                )
            )
        os.chmod(path, 0o600)
        proc = subprocess.Popen(
            [binary, "run", "--config", path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if get_json(f"{base}/status")["deployment"]["id"] == "v2":
                    break
            except Exception:
                pass
            time.sleep(0.05)
        else:
            proc.kill()
            raise SystemExit(f"{scenario}: the agent did not come up: {proc.stderr.read()[-2000:]}")
        # Let probes start (and hang, where they do).
        time.sleep(2)
        if scenario.startswith("call"):
            threading.Thread(
                target=lambda: _ignore(
                    get_json, f"{base}/v1/rollback", ADMIN, b'{"reason": "bench"}', 120
                ),
                daemon=True,
            ).start()
            for _ in range(100):
                s = get_json(f"{base}/status")
                if (s.get("last_rollback") or {}).get("status") == "intent":
                    break
                time.sleep(0.05)
            time.sleep(0.3)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed after 30 s"
        took = time.monotonic() - start
        stderr = proc.stderr.read().decode(errors="replace")
        record = None
        if scenario.startswith("call"):
            # What the store kept: start again briefly and read /status.
            again = subprocess.Popen(
                [binary, "run", "--config", path],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(200):
                try:
                    record = (get_json(f"{base}/status").get("last_rollback") or {}).get("status")
                    if record:
                        break
                except Exception:
                    pass
                time.sleep(0.05)
            again.send_signal(signal.SIGTERM)
            again.wait(timeout=30)
    for s in (fast, hung, hook):
        s.shutdown()
    return took, code, record, "still in flight" in stderr


def _ignore(f, *args):
    try:
        f(*args)
    except Exception:
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/release/backstop")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--scenarios", default="idle,probes-hung,call-2s,call-30s", help="comma-separated"
    )
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        raise SystemExit(f"no binary at {args.bin}: cargo build --release -p backstop")
    print(f"binary {args.bin}, load average {os.getloadavg()[0]:.2f}", flush=True)
    print("| situation | SIGTERM → exit, s (min / median / max) | exit codes | record after | grace ran out |")
    print("|---|---|---|---|---|")
    for scenario in args.scenarios.split(","):
        runs = [one_run(args.bin, scenario) for _ in range(args.runs)]
        times = [r[0] for r in runs]
        codes = sorted({str(r[1]) for r in runs})
        records = sorted({str(r[2]) for r in runs if r[2] is not None}) or ["-"]
        grace = sum(1 for r in runs if r[3])
        print(
            f"| {scenario} | {min(times):.2f} / {statistics.median(times):.2f} / {max(times):.2f} "
            f"| {', '.join(codes)} | {', '.join(records)} | {grace} of {len(runs)} |",
            flush=True,
        )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
