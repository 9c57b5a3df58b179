#!/usr/bin/env python3
"""Writes agent/link-order.txt: the functions a running agent executes, so
that the release link can place them together (agent/build.rs passes the
file to the linker, rustc's own LLD, as its symbol ordering).

Why: the kernel maps 64 KiB of an executable around every page a process
touches (fault-around), and the code an agent runs is spread over the
whole text, so nearly all of it ends up resident (bench/README.md,
"Cost"). With the executed functions in one stretch, the rest is never
touched and never resident.

    cargo build --release -p backstop
    python3 bench/layout.py --backstop target/release/backstop
    cargo build --release -p backstop      # links again with the new order
    python3 bench/layout.py --check target/release/backstop

The release profile keeps the symbol table (`strip = "debuginfo"`), so the
names are those of the very build that is linked with them; another rustc
or other dependency versions name the functions differently, and `--check`
then finds few of them in the binary.

The binary runs under valgrind's callgrind (Debian package `valgrind`) through a
workload like the benchmarks' (http probes with the default rules against
a local nginx, a target that fails and recovers, /metrics, /status,
SIGTERM; then config.example.toml with targets that refuse, and again with
them answering: nginx, and PostgreSQL and Redis when installed) and keeps
every function with at least one instruction executed. Code outside that
workload still runs, from wherever it lies.
"""

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in bench/ from the import below
import compare  # noqa: E402

OUT = os.path.join(compare.REPO, "agent", "link-order.txt")


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
    except OSError as e:
        compare.log(f"  {url}: {e}")


def under_callgrind(binary, config, work, name, env, port, during):
    out = os.path.join(work, f"callgrind.{name}")
    log = open(os.path.join(work, f"{name}.log"), "w")
    e = dict(os.environ)
    e.update(env)
    e.setdefault("RUST_LOG", "info")
    p = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--demangle=no",
            "--dump-instr=no",
            "--compress-strings=no",
            "--compress-pos=no",
            f"--callgrind-out-file={out}",
            binary,
            "run",
            "--config",
            config,
        ],
        stdout=log,
        stderr=log,
        env=e,
    )
    try:
        compare.wait_http(f"http://127.0.0.1:{port}/healthz", deadline_s=120)
        during(port)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return out


def executed(path):
    """Mangled names of the functions with instructions executed in one
    callgrind output (fn= lines followed by cost lines)."""
    names = set()
    current = None
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("fn="):
                current = line[3:].strip()
            elif current and line[:1].isdigit():
                parts = line.split()
                if len(parts) >= 2 and int(parts[1]) > 0:
                    names.add(current)
            elif line.startswith(("cfn=", "calls=")):
                pass
    return names


def check(binary, order):
    """How many of the ordered functions the binary has, and the stretch of
    its code they span against the whole text."""
    with open(order) as f:
        wanted = {line.strip() for line in f if line.strip()}
    out = subprocess.run(["nm", "-S", binary], capture_output=True, text=True, check=True).stdout
    found, size, lo, hi, text = 0, 0, None, 0, 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[2] not in "tT":
            continue
        addr, n = int(parts[0], 16), int(parts[1], 16)
        text += n
        if parts[3] in wanted:
            found += 1
            size += n
            lo = addr if lo is None else min(lo, addr)
            hi = max(hi, addr + n)
    if not found:
        sys.exit(f"{binary}: none of the {len(wanted)} functions of {order} (stripped, or another build)")
    print(f"{binary}: {found} of the {len(wanted)} functions of {order}, {size / 1e6:.2f} MB of code "
          f"in a stretch of {(hi - lo) / 1e6:.2f} MB (all functions: {text / 1e6:.2f} MB)")


def start_postgres(work):
    """A throwaway PostgreSQL (trust authentication, loopback) when Debian's
    postgresql is installed; run as the `postgres` user when root."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not bins:
        return None
    bindir = os.path.dirname(bins[-1])
    data = os.path.join(work, "pg")
    os.makedirs(data)
    as_pg = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        os.chmod(work, 0o755)
        as_pg = ["runuser", "-u", "postgres", "--"]
    port = compare.free_port()
    subprocess.run(as_pg + [f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(as_pg + [f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(data, "log.txt"), "-w",
                            "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, stdout=subprocess.DEVNULL)
    return {"port": port, "stop": as_pg + [f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"]}


def stop_postgres(pg):
    subprocess.run(pg["stop"], stdout=subprocess.DEVNULL)


def main():
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--backstop", help="a release build (with its symbol table)")
    a.add_argument("--check", metavar="BINARY",
                   help="only say how many of the file's functions BINARY has, and how close together")
    a.add_argument("--seconds", type=float, default=20)
    a.add_argument("--out", default=OUT)
    args = a.parse_args()
    if args.check:
        check(args.check, args.out)
        return
    if not args.backstop:
        a.error("--backstop or --check is needed")
    if not shutil.which("valgrind"):
        sys.exit("valgrind is needed: apt-get install valgrind")
    binary = os.path.abspath(args.backstop)
    work = tempfile.mkdtemp(prefix="backstop-layout-")
    procs = compare.Procs()
    names = set()
    try:
        nginx = compare.start_nginx(procs, work)
        flag = os.path.join(nginx["prefix"], "flag503")

        # 1. http probes, half with the default rules, a target that fails
        # for a while and recovers, and every endpoint read.
        port = compare.free_port()
        config = compare.backstop_config(work, "rules", port, nginx["port"], 10, 200, rules=True)

        def workload(port):
            base = f"http://127.0.0.1:{port}"
            for i in range(int(args.seconds)):
                if i == int(args.seconds) // 3:
                    open(flag, "w").close()
                if i == int(args.seconds) * 2 // 3:
                    os.unlink(flag)
                for path in ("/metrics", "/status", "/healthz"):
                    get(base + path)
                time.sleep(1)

        out = under_callgrind(binary, config, work, "rules", {}, port, workload)
        names |= executed(out)
        compare.log(f"  http probes with rules: {len(names)} functions")

        # 2. config.example.toml, its targets refusing (postgres, redis,
        # tcp, resources: their error paths and the shared parts).
        port = compare.free_port()
        path, env = compare.example_config(work, port, "layout")

        def example(port):
            base = f"http://127.0.0.1:{port}"
            for _ in range(int(args.seconds) // 2):
                for p in ("/metrics", "/status"):
                    get(base + p)
                time.sleep(1)

        before = len(names)
        out = under_callgrind(binary, path, work, "example", env, port, example)
        names |= executed(out)
        compare.log(f"  config.example.toml: {len(names) - before} more functions")

        # 3. The same with its targets answering: nginx for http and tcp, and
        # PostgreSQL and Redis when installed (Debian: postgresql,
        # redis-server), so that their checks' paths are in too.
        pg = start_postgres(work)
        if pg:
            env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:{pg['port']}/postgres"
        redis = shutil.which("redis-server")
        if redis:
            rport = compare.free_port()
            procs.start("redis", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
            env["REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
        port = compare.free_port()
        answering = {k: v for k, v in env.items() if k in ("DATABASE_URL", "REDIS_URL")}
        path, env = compare.example_config(work, port, "layout-2", refused=nginx["port"])
        env.update(answering)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("/api/health", "/bs/layout/health"))
        before = len(names)
        try:
            out = under_callgrind(binary, path, work, "answering", env, port, example)
        finally:
            if pg:
                stop_postgres(pg)
        names |= executed(out)
        compare.log(f"  config.example.toml, answering (postgres {'yes' if pg else 'not installed'}, "
                    f"redis {'yes' if redis else 'not installed'}): "
                    f"{len(names) - before} more functions")
    finally:
        procs.stop_all()

    # Functions of the shared libraries (libc's) are not the linker's to
    # place; it ignores names it does not find.
    patterns = sorted(n for n in names if not n.startswith("0x") and not set(n) & set("' ()"))
    with open(args.out, "w") as f:
        f.write("\n".join(patterns) + "\n")
    compare.log(f"wrote {len(patterns)} function names to {args.out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
