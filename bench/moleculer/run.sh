#!/usr/bin/env bash
# Calls over NATS: Moleculer 0.14 beside tabgrab, in one run, on the same nats-server (the
# machine's, 127.0.0.1:4222), 100 concurrent callers, alternating rounds.
#   bench/moleculer/run.sh [rounds] [calls per round]
# Needs node and npm (installs moleculer and nats here from package-lock.json once) and a
# release build of tabgrab's `nats_overhead` example (built here if missing).
set -euo pipefail
cd "$(dirname "$0")"
usage="usage: bench/moleculer/run.sh [rounds (default 3)] [calls per round (default 40000)]"
case "${1:-}" in -h|--help) echo "$usage"; exit 0 ;; esac
rounds=${1:-3}
calls=${2:-40000}
[[ "$rounds" =~ ^[1-9][0-9]*$ && "$calls" =~ ^[1-9][0-9]*$ ]] || { echo "$usage" >&2; exit 2; }
url=nats://127.0.0.1:4222
command -v node >/dev/null || { echo "run.sh: node is not installed" >&2; exit 1; }
[ -d node_modules/moleculer ] || npm ci --no-audit --no-fund --silent
target=${CARGO_TARGET_DIR:-../../target}
bench="$target/release/examples/nats_overhead"
[ -x "$bench" ] || (cd ../.. && cargo build --release -p tabgrab --example nats_overhead)

log=$(mktemp)
node calls.js serve "$url" >"$log" 2>&1 &
responder=$!
trap 'kill "$responder" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do grep -q '^ready' "$log" && break; sleep 0.1; done
grep -q '^ready' "$log" || { echo "run.sh: the Moleculer responder did not start:" >&2; cat "$log" >&2; exit 1; }

echo "| round | Moleculer calls/s | tabgrab calls/s (structured) | bare async-nats request/s | tabgrab / Moleculer |"
echo "|---|---|---|---|---|"
for round in $(seq 1 "$rounds"); do
  moleculer=$(node calls.js call "$url" "$calls" 100 | sed -n 's/.*"round_trips_per_s":\([0-9]*\).*/\1/p')
  [ -n "$moleculer" ] || { echo "run.sh: the Moleculer caller gave no figure" >&2; exit 1; }
  # nats_overhead's first argument is events; its calls part makes a quarter of it round trips.
  out=$(TABGRAB_BENCH_CALLERS=100 "$bench" $((calls * 4)) --servers shared --parts calls 2>&1) || true
  row=$(grep 'calls over core NATS' <<<"$out") || { echo "run.sh: nats_overhead gave no calls figure:" >&2; echo "$out" >&2; exit 1; }
  tabgrab=$(echo "$row" | awk -F'|' '{gsub(/ /, "", $3); print $3}')
  raw=$(echo "$row" | awk -F'|' '{gsub(/ /, "", $4); sub(/\(.*/, "", $4); print $4}')
  echo "| $round | $moleculer | $tabgrab | $raw | $(awk -v a="$tabgrab" -v b="$moleculer" 'BEGIN { printf "%.2f", a / b }') |"
done
