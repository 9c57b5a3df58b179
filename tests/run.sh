#!/usr/bin/env bash
# Runs the whole test suite on a Debian machine: installs what the tests need
# when it is missing, starts throwaway PostgreSQL, Redis and Prometheus servers
# on free loopback ports, exports their URLs, runs lints and `cargo test`, and
# stops the servers again whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

need_pkgs=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pg_bin" ] && [ -x "$pg_bin/pg_ctl" ] || need_pkgs+=(postgresql)
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v python3 >/dev/null || need_pkgs+=(python3)
# The email notifier's tests run a real SMTP server (tests/smtp_server.py) on Debian's Python.
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || need_pkgs+=(python3-aiosmtpd)
# Debian's package may also start its own service on :9090 when installed; the
# tests neither use nor stop it, they start a Prometheus of their own below.
command -v prometheus >/dev/null || need_pkgs+=(prometheus)
# The agent's page (tests/it/page.rs) is read in a headless browser.
command -v chromium >/dev/null || need_pkgs+=(chromium)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
redis_bin=$(command -v redis-server)
prometheus_bin=$(command -v prometheus)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d /tmp/backstop-tests.XXXXXX)
chmod 1777 "$work"
pg_port=$(free_port)
redis_port=$(free_port)
prometheus_port=$(free_port)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home "$work" postgres
  as_pg=(runuser -u postgres --)
fi

cleanup() {
  set +e
  [ -f "$work/pg/postmaster.pid" ] && "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1
  [ -f "$work/redis.pid" ] && kill "$(cat "$work/redis.pid")" 2>/dev/null
  [ -f "$work/prometheus.pid" ] && kill "$(cat "$work/prometheus.pid")" 2>/dev/null && wait "$(cat "$work/prometheus.pid")" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

log "starting PostgreSQL on 127.0.0.1:$pg_port"
mkdir -p "$work/pg"
[ "${#as_pg[@]}" -eq 0 ] || chown postgres "$work/pg"
echo "postgres-test-superuser" > "$work/pgpass"; chmod 644 "$work/pgpass"
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg" -U postgres --auth=scram-sha-256 --pwfile="$work/pgpass" >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null
PGPASSWORD=postgres-test-superuser "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
  -c "CREATE ROLE backstop LOGIN PASSWORD 'backstop-test-pw'" \
  -c "CREATE DATABASE backstop OWNER backstop" >/dev/null

log "starting Redis on 127.0.0.1:$redis_port"
"$redis_bin" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --requirepass redis-test-pw --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log" --dir "$work"
for _ in $(seq 50); do [ -f "$work/redis.pid" ] && break; sleep 0.1; done

log "starting Prometheus on 127.0.0.1:$prometheus_port"
# It scrapes itself every second, so `up` and its own metrics have data.
mkdir -p "$work/prometheus"
cat > "$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:$prometheus_port"]
YAML
"$prometheus_bin" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus" \
  --web.listen-address="127.0.0.1:$prometheus_port" >"$work/prometheus.log" 2>&1 &
echo $! > "$work/prometheus.pid"
prometheus_url="http://127.0.0.1:$prometheus_port"
# Ready once its first scrape of itself is stored (up to 30 s).
python3 - "$prometheus_url" <<'PY' || { cat "$work/prometheus.log" >&2; exit 1; }
import json, sys, time, urllib.request
for _ in range(300):
    try:
        with urllib.request.urlopen(sys.argv[1] + "/api/v1/query?query=up", timeout=1) as r:
            if json.load(r)["data"]["result"]:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit("prometheus did not scrape itself within 30s")
PY

export BACKSTOP_TEST_POSTGRES_URL="postgres://backstop:backstop-test-pw@127.0.0.1:$pg_port/backstop"
export BACKSTOP_TEST_REDIS_URL="redis://:redis-test-pw@127.0.0.1:$redis_port/0"
export BACKSTOP_TEST_PROMETHEUS_URL="$prometheus_url"
# What tests need to start throwaway servers of their own (to stop, restart or break them).
export BACKSTOP_TEST_PG_BIN="$pg_bin"
export BACKSTOP_TEST_REDIS_SERVER="$redis_bin"
export BACKSTOP_TEST_WORKDIR="$work"

# With arguments, they are passed to `cargo test` instead of `--workspace`
# (for example `tests/run.sh -p backstop-tests --test it probe_redis`).
if [ $# -eq 0 ]; then
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
fi
log "cargo test"
cargo build --quiet --bin backstop
if [ $# -eq 0 ]; then
  cargo test --workspace --no-fail-fast
else
  cargo test "$@"
fi
