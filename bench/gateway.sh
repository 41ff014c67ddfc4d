#!/usr/bin/env bash
# The edge gateway's cost, one run, the same hello component everywhere:
# Berth over plain HTTP/1.1, HTTPS (keep-alive), HTTP/2 (h2c and over TLS,
# h2load); with an API key check and a rate limit on vs off; and, as what
# users would put in front of a plain host instead, nginx (TLS, a key check
# and limit_req) proxying to `wasmtime serve`. Writes its results into
# docs/benchmarks.md (between the gateway-results markers).
#
#     bench/gateway.sh                   # 3 rounds, 6 s each after a 2 s warm-up
#     ROUNDS=5 DURATION=10 bench/gateway.sh
#
# Needs: wrk, h2load (nghttp2-client), nginx, openssl and wasmtime-cli
# 48.0.8; it installs them when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# With RUST_BACKTRACE set, every error built on a request path captures a
# backtrace; measure every server without it.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

command -v wrk >/dev/null || apt-get install -y wrk
command -v h2load >/dev/null || apt-get install -y nghttp2-client
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt-get install -y nginx
if ! wasmtime --version 2>/dev/null | grep -q '^wasmtime 48\.0\.8'; then
    cargo install wasmtime-cli --version 48.0.8 --locked
fi
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true

cargo build --release -p berth
(cd bench/hello && cargo build --release --target wasm32-wasip2 --target-dir target)

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
nginx=$(command -v nginx || echo /usr/sbin/nginx)
exec python3 bench/load_gateway.py \
    --berth "$target_dir/release/berth" \
    --wasmtime "$(command -v wasmtime)" \
    --nginx "$nginx" \
    --component bench/hello/target/wasm32-wasip2/release/hello_bench.wasm \
    "$@"
