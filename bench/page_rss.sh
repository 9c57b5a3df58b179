#!/usr/bin/env bash
# The agent's memory with its page asked every second, against not asked:
# two release agents with the same 50 http probes (each every second,
# against one local Python HTTP server) run side by side for $DURATION
# seconds; one has `GET /` asked every second, the other not. Prints each
# agent's peak RSS (VmHWM) and RSS at the end (VmRSS) from /proc, and the
# page's size. Everything listens on loopback and stops by itself.
#
#   cargo build --release -p backstop && bash bench/page_rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BACKSTOP_BIN:-target/release/backstop}
duration=${DURATION:-120}
probes=${PROBES:-50}
[ -x "$bin" ] || { echo "build the release binary first: cargo build --release -p backstop" >&2; exit 1; }

work=$(mktemp -d /tmp/backstop-page-rss.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir -p "$work/www"
echo ok > "$work/www/ok"
target_port=$(free_port)
python3 -m http.server "$target_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)

config() { # name port
  mkdir -p "$work/$1"
  {
    printf '[agent]\nlisten = "127.0.0.1:%s"\nstate_dir = "%s"\n\n' "$2" "$work/$1/state"
    printf '[service]\nname = "shop"\n\n[deployment]\nid = "v1"\n\n'
    for i in $(seq "$probes"); do
      printf '[[probe]]\nname = "p%s"\nlevel = 1\ntype = "http"\nurl = "http://127.0.0.1:%s/ok"\ninterval = "1s"\n\n' "$i" "$target_port"
    done
  } > "$work/$1/backstop.toml"
}

asked_port=$(free_port)
quiet_port=$(free_port)
config asked "$asked_port"
config quiet "$quiet_port"
"$bin" run --config "$work/asked/backstop.toml" >"$work/asked.log" 2>&1 &
asked=$!; pids+=($asked)
"$bin" run --config "$work/quiet/backstop.toml" >"$work/quiet.log" 2>&1 &
quiet=$!; pids+=($quiet)

for port in "$asked_port" "$quiet_port"; do
  for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null && break
    sleep 0.1
  done
done

fetches=0
bytes=0
end=$((SECONDS + duration))
while [ $SECONDS -lt $end ]; do
  bytes=$(python3 -c "import urllib.request; print(len(urllib.request.urlopen('http://127.0.0.1:$asked_port/').read()))")
  fetches=$((fetches + 1))
  sleep 1
done

field() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
echo "probes: $probes, duration: ${duration}s, page fetches: $fetches, last page: $bytes bytes"
printf '%-22s %10s %10s\n' agent VmHWM_kB VmRSS_kB
printf '%-22s %10s %10s\n' "page every second" "$(field $asked VmHWM)" "$(field $asked VmRSS)"
printf '%-22s %10s %10s\n' "page never asked" "$(field $quiet VmHWM)" "$(field $quiet VmRSS)"
