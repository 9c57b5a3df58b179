#!/usr/bin/env bash
# backstop-judge is pure judgement (judge/src/lib.rs): none of these crates may
# be among its normal dependencies, directly or through another. Prints its
# normal dependencies and fails when one of them is forbidden.
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='tokio-postgres|deadpool-postgres|fred|redb|reqwest|hyper|hyper-util|metrics|metrics-exporter-prometheus|toml|toml_edit|clap|sysinfo|backstop|backstop-probes'
deps=$(cargo tree -p backstop-judge -e normal --prefix none --no-dedupe | awk '{print $1}' | sort -u)
echo "normal dependencies of backstop-judge:" $deps
found=$(printf '%s\n' "$deps" | grep -Ex "$forbidden" || true)
if [ -n "$found" ]; then
  echo "forbidden:" $found >&2
  exit 1
fi
echo "none forbidden"
