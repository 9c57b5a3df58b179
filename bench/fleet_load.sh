#!/usr/bin/env bash
# Fleet: store load. Starts a throwaway Redis on a free loopback port, the
# way tests/run.sh does (no persistence, a password), runs the fleet_load
# harness against it in a release build, and stops the server whatever
# happens. Arguments are passed to the harness, for example:
#
#   bash bench/fleet_load.sh                                  # 10,100,500 replicas; live every 6th and every heartbeat
#   bash bench/fleet_load.sh --replicas 500 --live-every 6 --intervals 60
set -euo pipefail
cd "$(dirname "$0")/.."

redis_bin=$(command -v redis-server) || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d /tmp/backstop-fleet-load.XXXXXX)
cleanup() {
  [ -f "$work/redis.pid" ] && kill "$(cat "$work/redis.pid")" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --quiet --release -p backstop --example fleet_load
"$redis_bin" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
  --requirepass fleet-load-pw --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log" --dir "$work"
for _ in $(seq 50); do [ -f "$work/redis.pid" ] && break; sleep 0.1; done
"$redis_bin" --version
# The machine's load says how far the latencies are the server's own.
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
target/release/examples/fleet_load --redis "redis://:fleet-load-pw@127.0.0.1:$port/0" "$@"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
