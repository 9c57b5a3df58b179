#!/usr/bin/env bash
# Soak: the release binary with many probes at short intervals against a
# local nginx. It first warms up until every probe's window is at its cap
# (`MAX_SAMPLES` in judge/src/observe.rs, read from `/status`), so the
# memory the windows are allowed to hold is all held; then it measures for
# SECONDS (default 300 s: 200 probes every 100 ms make 600,000 checks, two
# days of checks at a 1-minute interval). It samples the agent's RSS, open
# file descriptors, threads, checks done and samples held every few
# seconds, and reports the growth of each over the measured period only.
#
#   bash bench/soak.sh [SECONDS] [PROBES] [INTERVAL_MS] [SAMPLE_EVERY_S]
#
# MAX_WARMUP (seconds, default: twice the time the windows need to fill,
# plus a minute) bounds the warm-up; the script fails if the windows are not
# full by then.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
probes=${2:-200}
interval_ms=${3:-100}
every=${4:-5}
cap=$(sed -nE 's/^pub const MAX_SAMPLES: usize = ([0-9_]+);.*/\1/p' judge/src/observe.rs | tr -d _)
[ -n "$cap" ] || { echo "cannot read MAX_SAMPLES from judge/src/observe.rs" >&2; exit 1; }
fill_s=$(( cap * interval_ms / 1000 ))
max_warmup=${MAX_WARMUP:-$(( 2 * fill_s + 60 ))}

log() { printf '==> %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

log "building the release binary"
cargo build --release --quiet -p backstop --bin backstop
bin=target/release/backstop

work=$(mktemp -d /tmp/backstop-soak.XXXXXX)
nginx_port=$(free_port)
agent_port=$(free_port)
nginx_pid=""
agent_pid=""
cleanup() {
  set +e
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port;
    location / { return 200 "ok\n"; }
  }
}
NGINX
"$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
nginx_pid=$!

# The watch outlasts the whole run, so the deployment stays `watching`: the
# windows are never cleared and every probe's baseline feed fills its
# reservoirs. Each probe has a rule over 15 minutes (that never fires), so
# its window reaches further back than the cap: the cap, not the age, is
# what bounds it.
{
  cat <<TOML
[agent]
listen = "127.0.0.1:$agent_port"
state_dir = "$work/state"

[service]
name = "soak"

[deployment]
id = "v1"
warmup = "10s"
watch = "6h"
TOML
  for i in $(seq 1 "$probes"); do
    cat <<TOML

[[probe]]
name = "p$i"
level = 1
type = "http"
url = "http://127.0.0.1:$nginx_port/health/$i"
interval = "${interval_ms}ms"
timeout = "${interval_ms}ms"

[[rule]]
name = "p$i slow for long"
probe = "p$i"
when = "latency_ms > 60000 for 15m"
action = "alert"
TOML
  done
} > "$work/backstop.toml"
chmod 600 "$work/backstop.toml"
"$bin" validate --config "$work/backstop.toml" >&2

"$bin" run --config "$work/backstop.toml" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$agent_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# Sum of backstop_probe_checks_total, and of the samples held in windows.
checks() { curl -fsS "http://127.0.0.1:$agent_port/metrics" | awk '/^backstop_probe_checks_total/ {s += $NF} END {printf "%d", s}'; }
outcomes() { curl -fsS "http://127.0.0.1:$agent_port/metrics" | sed -nE 's/^backstop_probe_checks_total\{.*outcome="([a-z]+)".*\} ([0-9.e+]+)$/\1 \2/p' | awk '{s[$1] += $2} END {for (k in s) printf "%s=%d ", k, s[k]}'; }
# "fewest-held total-held" over every probe's window.
held() { curl -fsS "http://127.0.0.1:$agent_port/status" | python3 -c 'import json,sys; n=[p["samples"] for p in json.load(sys.stdin)["probes"]]; print(min(n), sum(n))'; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$agent_pid/status"; }
threads() { awk '/^Threads/ {print $2}' "/proc/$agent_pid/status"; }
fds() { ls "/proc/$agent_pid/fd" | wc -l; }
cpu() { awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$agent_pid/stat"; }

log "warm-up: $probes probes every ${interval_ms}ms until every window holds $cap samples (about ${fill_s}s, at most ${max_warmup}s)"
start=$(date +%s)
while :; do
  read -r fewest total < <(held)
  waited=$(( $(date +%s) - start ))
  [ "$fewest" -ge "$cap" ] && break
  if [ "$waited" -ge "$max_warmup" ]; then
    echo "the windows are not full after ${waited}s (fewest samples in a window: $fewest of $cap)" >&2
    exit 1
  fi
  sleep 5
done
log "windows full after ${waited}s (RSS $(rss) KiB, $(checks) checks); measuring for ${seconds}s"
cpu0=$(cpu)

start=$(date +%s)
printf '%6s %10s %9s %5s %7s %10s\n' t_s rss_kib checks fds threads held > "$work/samples"
while :; do
  now=$(( $(date +%s) - start ))
  read -r _ total < <(held)
  printf '%6d %10d %9d %5d %7d %10d\n' "$now" "$(rss)" "$(checks)" "$(fds)" "$(threads)" "$total" >> "$work/samples"
  [ "$now" -ge "$seconds" ] && break
  sleep "$every"
done
cat "$work/samples"
echo "outcomes (whole run): $(outcomes)"
curl -fsS -o /dev/null -w 'healthz: %{http_code}\n' "http://127.0.0.1:$agent_port/healthz"
echo "warm-up: ${waited}s; agent CPU time while measured: $(awk -v a="$(cpu)" -v b="$cpu0" 'BEGIN {printf "%.1f", a - b}')s"
grep -cE '"level":"(WARN|ERROR)"|WARN|ERROR' "$work/agent.log" | sed 's/^/warnings and errors logged: /' || true

python3 - "$work/samples" "$probes" "$interval_ms" <<'PY'
import sys
rows = [[int(x) for x in l.split()] for l in open(sys.argv[1]).read().splitlines()[1:]]
probes, interval_ms = int(sys.argv[2]), int(sys.argv[3])
first, last = rows[0], rows[-1]
checks = last[2] - first[2]
days = checks / (probes * 1440)
growth = last[1] - first[1]
print(f"measured: {last[0] - first[0]} s with every window full; {checks} checks "
      f"({checks / max(last[0] - first[0], 1):.0f}/s), {days:.2f} days of {probes} probes at a 1-minute interval")
print(f"RSS: {first[1]} KiB at the start, {last[1]} KiB at the end, growth {growth} KiB "
      f"({growth / 1024:.2f} MiB); min {min(r[1] for r in rows)}, max {max(r[1] for r in rows)} KiB")
print(f"window samples held: {first[5]} -> {last[5]}")
print(f"open fds: {first[3]} at the start, {last[3]} at the end, min {min(r[3] for r in rows)}, max {max(r[3] for r in rows)}")
print(f"threads: {first[4]} at the start, {last[4]} at the end, min {min(r[4] for r in rows)}, max {max(r[4] for r in rows)}")
PY
