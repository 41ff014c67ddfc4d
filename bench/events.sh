#!/usr/bin/env bash
# Events benchmark: events/s published (durable) and delivered end to end
# to a trivial handler, with durability on. Writes its results into
# docs/benchmarks.md (between the events-results markers).
#
#     bench/events.sh                       # 100,000 events, 8 clients, batches of 250,
#                                           # then 5 s of one event per request (wrk)
#     EVENTS=200000 CLIENTS=16 bench/events.sh
set -euo pipefail
cd "$(dirname "$0")/.."
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
if ! command -v wrk >/dev/null; then
    apt-get install -y wrk
fi

cargo build --release -p berth
(cd bench/consumer && cargo build --release --target wasm32-wasip2 --target-dir target)

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec python3 bench/load_events.py \
    --berth "$target_dir/release/berth" \
    --component bench/consumer/target/wasm32-wasip2/release/consumer_bench.wasm \
    "$@"
