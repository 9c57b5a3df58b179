#!/usr/bin/env python3
"""Does a silent store slow the watch?

One agent (the real binary) keeps in touch with a store behind a proxy that
can fall silent: it stops forwarding without closing anything, as a
partition that drops packets does. The store is, with `--store`:

- `redis` (the default): the fleet's coordination store (`[fleet] redis`),
  a `redis-server` the script starts;
- `postgres`: the agent's `[store]` (no `[fleet]`), the PostgreSQL server
  at `--postgres-url`, in a schema of the script's own (dropped at the end
  when `psql` is on the PATH); the `[store]` timeout is its default, 5 s.

A local service answers `/version` and `/health`. For each run the proxy is
healthy or silent, and a new deployment is switched to; measured from
`/status`, polled every 20 ms:

- deploy to seen: the switch to `/status` showing the new deployment;
- warm-up end to the next step: from the warm-up's end (first seen +
  `warmup`) to `/status` showing the deployment `watching`.

A run that does not get there within 30 s says so instead of a figure.

    python3 bench/silent_store.py --bin target/release/backstop [--runs 5]
    python3 bench/silent_store.py --bin target/release/backstop --store postgres \
        --postgres-url postgres://USER:PASSWORD@127.0.0.1:PORT/DATABASE

Needs `redis-server`, or a PostgreSQL server the URL's role may create a
schema in: the one `tests/run.sh` starts (its URL is exported as
`BACKSTOP_TEST_POSTGRES_URL` while the tests run), or a throwaway cluster
started the same way (`initdb`, then `pg_ctl start` on a free loopback
port). bench/README.md says how it was run. Everything listens on loopback;
every loop is bounded in time; every process it starts is stopped when it
ends.
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
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from discovery import Service, free_port, start, status, wait  # noqa: E402

WARMUP_S = 1.0
LIMIT_S = 30


class SilentProxy:
    """Forwards TCP to `upstream` (host, port); while silent, holds every
    byte back."""

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
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
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


def config(dir, port, svc, service, store):
    path = os.path.join(dir, "backstop.toml")
    with open(path, "w") as f:
        f.write(f"""[agent]
listen = "127.0.0.1:{port}"
state_dir = "{dir}/state"

[service]
name = "{service}"

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

{store}""")
    return path


class Redis:
    """`[fleet] redis` through the proxy, to a `redis-server` of its own."""

    name = "coordination store"

    def __init__(self):
        redis_bin = shutil.which("redis-server") or sys.exit("needs redis-server")
        self.port = free_port()
        self.server = subprocess.Popen([redis_bin, "--port", str(self.port), "--bind", "127.0.0.1",
                                        "--save", "", "--appendonly", "no"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def upstream(self):
        return ("127.0.0.1", self.port)

    def section(self, proxy_port):
        return f"""[fleet]
replica = "a"
redis = "redis://127.0.0.1:{proxy_port}/0"
heartbeat = "1s"
"""

    def ready(self, port):
        wait("the fleet up", lambda: status(port)["fleet"]["up"] is True)

    def seen_down(self, port):
        wait("the fleet seen down", lambda: status(port)["fleet"]["up"] is False, 30)

    def close(self):
        self.server.kill()
        self.server.wait()


class Postgres:
    """The `[store]` through the proxy, to the server at `url`, in a schema
    of its own; each run is a service of its own in it."""

    name = "store"

    def __init__(self, url):
        self.url = urllib.parse.urlsplit(url)
        if self.url.scheme not in ("postgres", "postgresql") or not self.url.hostname:
            sys.exit("--postgres-url: not a postgres:// URL with a host")
        self.schema = f"bench_silent_store_{os.getpid()}"

    def upstream(self):
        return (self.url.hostname, self.url.port or 5432)

    def section(self, proxy_port):
        auth = self.url.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{proxy_port}" if auth else f"127.0.0.1:{proxy_port}"
        via = urllib.parse.urlunsplit(self.url._replace(netloc=netloc))
        return f"""[store]
url = "{via}"
schema = "{self.schema}"
"""

    def ready(self, port):
        pass

    def seen_down(self, port):
        # Nothing in /status says so: with a deployment being watched, the
        # agent touches the store only when something changes.
        pass

    def close(self):
        psql = shutil.which("psql")
        if psql is None:
            print(f"schema {self.schema} is left in the database (no psql to drop it)", flush=True)
            return
        subprocess.run([psql, "-q", urllib.parse.urlunsplit(self.url),
                        "-c", f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


def run(bin, store, silent, n):
    """One run: (deploy to seen, warm-up end to watching), in seconds; None
    where it did not get there within LIMIT_S."""
    svc = Service()
    proxy = SilentProxy(store.upstream())
    port = free_port()
    with tempfile.TemporaryDirectory() as dir:
        cfg = config(dir, port, svc, f"shop-{n}", store.section(proxy.port))
        agent = start(bin, cfg, port)
        try:
            # No deployment is shown until the id is first read.
            wait("v1 watched",
                 lambda: (status(port)["deployment"] or {}).get("state") == "watching")
            store.ready(port)
            if silent:
                proxy.set_silent(True)
                store.seen_down(port)
            switched = time.monotonic()
            svc.set("v2", True)
            seen_at = None
            watching_at = None
            deadline = switched + LIMIT_S
            while time.monotonic() < deadline and watching_at is None:
                s = status(port)
                now = time.monotonic()
                if seen_at is None and s["deployment"]["id"] == "v2":
                    seen_at = now
                if seen_at is not None and s["deployment"]["state"] == "watching" \
                        and s["deployment"]["id"] == "v2":
                    watching_at = now
                time.sleep(0.02)
            seen = None if seen_at is None else seen_at - switched
            step = None if watching_at is None else watching_at - (seen_at + WARMUP_S)
            return seen, step
        finally:
            proxy.set_silent(False)
            agent.kill()
            agent.wait()
            proxy.close()
            svc.close()


def figure(values):
    """Median and max in ms, and how many runs did not get there."""
    got = [v for v in values if v is not None]
    missing = len(values) - len(got)
    if not got:
        return f"none within {LIMIT_S} s"
    text = f"median {round(1000 * statistics.median(got))} ms (max {round(1000 * max(got))})"
    if missing:
        text += f", none within {LIMIT_S} s in {missing} runs"
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/backstop")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--store", choices=("redis", "postgres"), default="redis",
                    help="redis: the fleet's coordination store; postgres: the agent's [store]")
    ap.add_argument("--postgres-url", help="with --store postgres: postgres://user:password@host:port/db")
    args = ap.parse_args()
    if args.store == "postgres":
        if not args.postgres_url:
            sys.exit("--store postgres needs --postgres-url")
        store = Postgres(args.postgres_url)
    else:
        store = Redis()
    try:
        n = 0
        for silent in (False, True):
            seen, step = [], []
            for _ in range(args.runs):
                a, b = run(args.bin, store, silent, n)
                n += 1
                seen.append(a)
                step.append(b)
            name = "silent " if silent else "healthy"
            print(f"{store.name} {name}: deploy to seen {figure(seen)}; "
                  f"warm-up end to watching {figure(step)} over {args.runs} runs", flush=True)
    finally:
        store.close()


if __name__ == "__main__":
    main()
