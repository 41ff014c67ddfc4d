#!/usr/bin/env bash
# Serverless benchmarks: cold starts over many services, density (1,000 and
# 10,000 services on one host), a noisy neighbour, and what metering costs.
# Writes its results into docs/benchmarks.md (between the scale-results
# markers).
#
#     bench/scale.sh
#     SECTIONS=cold,noisy DENSITY=1000 bench/scale.sh
#
# Needs: wrk (apt-get install -y wrk); it installs it when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# With RUST_BACKTRACE set, every error built on a request path captures a
# backtrace; measure without it.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

if ! command -v wrk >/dev/null; then
    apt-get install -y wrk
fi
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true

cargo build --release -p berth
(cd bench/hello && cargo build --release --target wasm32-wasip2 --target-dir target)
(cd tests/programs/guests && cargo build --release --target wasm32-wasip2 --target-dir ../../../bench/guests-target -p spin)

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec python3 bench/load_scale.py \
    --berth "$target_dir/release/berth" \
    --hello bench/hello/target/wasm32-wasip2/release/hello_bench.wasm \
    --spin bench/guests-target/wasm32-wasip2/release/spin.wasm \
    "$@"
