#!/usr/bin/env bash
# Soak: the release binary with many probes at short intervals against a
# local nginx, long enough to equal a day of checks at a 1-minute interval
# (200 probes x 1440 = 288,000 checks by default: 200 probes every 100ms for
# 144 s). Samples the agent's RSS, open file descriptors, threads, checks
# done and samples held in its windows every few seconds, then reports RSS
# growth after the warm-up and the fd count.
#
#   bash bench/soak.sh [SECONDS] [PROBES] [INTERVAL_MS] [SAMPLE_EVERY_S]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-150}
probes=${2:-200}
interval_ms=${3:-100}
every=${4:-5}
warmup=30

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
watch = "1h"
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
TOML
  done
} > "$work/backstop.toml"
chmod 600 "$work/backstop.toml"
"$bin" validate --config "$work/backstop.toml" >&2

log "running $probes probes every ${interval_ms}ms for ${seconds}s"
"$bin" run --config "$work/backstop.toml" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$agent_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# Sum of backstop_probe_checks_total, and of the samples held in windows.
checks() { curl -fsS "http://127.0.0.1:$agent_port/metrics" | awk '/^backstop_probe_checks_total/ {s += $NF} END {printf "%d", s}'; }
outcomes() { curl -fsS "http://127.0.0.1:$agent_port/metrics" | sed -nE 's/^backstop_probe_checks_total\{.*outcome="([a-z]+)".*\} ([0-9.e+]+)$/\1 \2/p' | awk '{s[$1] += $2} END {for (k in s) printf "%s=%d ", k, s[k]}'; }
held() { curl -fsS "http://127.0.0.1:$agent_port/status" | python3 -c 'import json,sys; print(sum(p["samples"] for p in json.load(sys.stdin)["probes"]))'; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$agent_pid/status"; }
threads() { awk '/^Threads/ {print $2}' "/proc/$agent_pid/status"; }
fds() { ls "/proc/$agent_pid/fd" | wc -l; }

start=$(date +%s)
printf '%6s %10s %9s %5s %7s %10s\n' t_s rss_kib checks fds threads held > "$work/samples"
while :; do
  now=$(( $(date +%s) - start ))
  printf '%6d %10d %9d %5d %7d %10d\n' "$now" "$(rss)" "$(checks)" "$(fds)" "$(threads)" "$(held)" >> "$work/samples"
  [ "$now" -ge "$seconds" ] && break
  sleep "$every"
done
cat "$work/samples"
echo "outcomes: $(outcomes)"
curl -fsS -o /dev/null -w 'healthz: %{http_code}\n' "http://127.0.0.1:$agent_port/healthz"
cpu=$(awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$agent_pid/stat")
echo "agent CPU time: ${cpu}s"
grep -cE '"level":"(WARN|ERROR)"|WARN|ERROR' "$work/agent.log" | sed 's/^/warnings and errors logged: /' || true

python3 - "$work/samples" "$warmup" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
rows = [[int(x) for x in r] for r in rows]
warm = int(sys.argv[2])
after = [r for r in rows if r[0] >= warm]
first, last = after[0], after[-1]
growth = last[1] - first[1]
held = last[5] - first[5]
per = growth * 1024 / held if held > 0 else float("nan")
print(f"checks: {last[2]} in {last[0]} s ({last[2] / max(last[0], 1):.0f}/s)")
print(f"RSS after warm-up ({first[0]} s): {first[1]} KiB; at the end: {last[1]} KiB; "
      f"growth {growth} KiB; peak {max(r[1] for r in rows)} KiB")
print(f"window samples held: {first[5]} -> {last[5]} (+{held}); "
      f"RSS growth per sample held: {per:.0f} bytes")
print(f"open fds: min {min(r[3] for r in rows)}, max {max(r[3] for r in rows)}; "
      f"threads: max {max(r[4] for r in rows)}")
PY
