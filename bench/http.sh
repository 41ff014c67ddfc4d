#!/usr/bin/env bash
# Hello-world HTTP benchmark: Berth (default limits on) vs `wasmtime serve
# -S cli` on the same component vs a native hyper server; plus Berth's
# start-up time with a warm code cache. Writes its results into
# docs/benchmarks.md (between the http-results markers).
#
#     bench/http.sh                 # 3 rounds, wrk -t1 -c16 -d6s after a 2 s warm-up
#     ROUNDS=5 DURATION=10 bench/http.sh
#     bench/http.sh --baseline /path/to/older/berth   # also an earlier build, same run
#
# Needs: wrk (apt-get install -y wrk) and wasmtime-cli 48.0.8
# (cargo install wasmtime-cli --version 48.0.8 --locked); it installs them
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# With RUST_BACKTRACE set, every error built on a request path captures a
# backtrace; measure every server without it.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

if ! command -v wrk >/dev/null; then
    apt-get install -y wrk
fi
if ! wasmtime --version 2>/dev/null | grep -q '^wasmtime 48\.0\.8'; then
    cargo install wasmtime-cli --version 48.0.8 --locked
fi
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true

cargo build --release -p berth
(cd bench/hello && cargo build --release --target wasm32-wasip2 --target-dir target)
(cd bench/native-hello && cargo build --release --target-dir target)

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec python3 bench/load_http.py \
    --berth "$target_dir/release/berth" \
    --wasmtime "$(command -v wasmtime)" \
    --native bench/native-hello/target/release/native-hello \
    --component bench/hello/target/wasm32-wasip2/release/hello_bench.wasm \
    "$@"
