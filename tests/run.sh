#!/usr/bin/env bash
# Runs the whole test suite on a Debian machine: installs what the tests need
# when it is missing, starts throwaway PostgreSQL and Redis servers on free
# loopback ports, exports their URLs, runs lints and `cargo test`, and stops
# the servers again whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

need_pkgs=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pg_bin" ] && [ -x "$pg_bin/pg_ctl" ] || need_pkgs+=(postgresql)
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v python3 >/dev/null || need_pkgs+=(python3)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
redis_bin=$(command -v redis-server)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d /tmp/backstop-tests.XXXXXX)
chmod 1777 "$work"
pg_port=$(free_port)
redis_port=$(free_port)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home "$work" postgres
  as_pg=(runuser -u postgres --)
fi

cleanup() {
  set +e
  [ -f "$work/pg/postmaster.pid" ] && "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1
  [ -f "$work/redis.pid" ] && kill "$(cat "$work/redis.pid")" 2>/dev/null
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

export BACKSTOP_TEST_POSTGRES_URL="postgres://backstop:backstop-test-pw@127.0.0.1:$pg_port/backstop"
export BACKSTOP_TEST_REDIS_URL="redis://:redis-test-pw@127.0.0.1:$redis_port/0"
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
  cargo test --workspace
else
  cargo test "$@"
fi
