#!/usr/bin/env bash
# Measures backstop against the Prometheus blackbox_exporter on this
# machine: CPU per probe and peak RSS at the same probe rate against the
# same local nginx, idle RSS, start jitter, detection time, /metrics render
# time, release build time and binary size. Everything runs on loopback and
# stops by itself; see bench/README.md for what each figure means.
#
#   bash bench/compare.sh                  # build (release) and measure
#   BACKSTOP_BIN=path/to/backstop bash bench/compare.sh   # reuse a build
#   bash bench/compare.sh --only compare,idle             # some parts only
#
# Extra arguments go to `bench/compare.py run` (--probes, --interval-ms,
# --seconds, --sweep, --trials, --only, --json, --keep; with --only jitter
# also --jitter-probes, --renders, --nice and --fifo).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v prometheus-blackbox-exporter >/dev/null || need_apt+=(prometheus-blackbox-exporter)
if ((${#need_apt[@]})); then
    echo "installing ${need_apt[*]}"
    apt-get update -qq
    # Neither package's service is started: the harness starts its own.
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib

if [[ -z "${BACKSTOP_BIN:-}" ]]; then
    start=$(date +%s.%N)
    cargo build --release -q -p backstop
    end=$(date +%s.%N)
    printf 'release build (incremental unless target/release was empty): %.0f s\n' "$(echo "$end - $start" | bc)"
    BACKSTOP_BIN=target/release/backstop
fi
size=$(stat -c %s "$BACKSTOP_BIN")
stripped=$(mktemp)
strip -o "$stripped" "$BACKSTOP_BIN"
printf 'binary: %s, %d bytes; stripped %d bytes (%.1f MiB)\n' "$BACKSTOP_BIN" "$size" \
    "$(stat -c %s "$stripped")" "$(echo "$(stat -c %s "$stripped") / 1048576" | bc -l)"
rm -f "$stripped"
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB; load average $(cut -d' ' -f1-3 /proc/loadavg)"

exec python3 bench/compare.py run --backstop "$BACKSTOP_BIN" "$@"
