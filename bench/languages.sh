#!/usr/bin/env bash
# Every language, fast: hello-world req/s, p99 and page faults per request
# for Rust (WASI 0.2 and 0.3), Python (componentize-py, 0.2 and 0.3) and
# JavaScript (ComponentizeJS) components under Berth (a fresh instance per
# request, and with reuse opted in) and under `wasmtime serve -S cli`; for
# JavaScript also workerd serving the same file. Writes its results into
# docs/benchmarks.md (between the languages-results markers).
#
#     bench/languages.sh                     # 3 rounds, wrk -t1 -c16 -d6s after a 2 s warm-up
#     ROUNDS=1 DURATION=4 bench/languages.sh --only python-p2 --no-write
#
# Needs wrk, perf (linux-perf), wasmtime-cli 48.0.8, componentize-py 0.25.0
# (PyPI), Node.js with npm (ComponentizeJS and workerd, pinned in
# bench/js/package-lock.json); it installs what it can when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

unset RUST_BACKTRACE RUST_LIB_BACKTRACE

command -v wrk >/dev/null || apt-get install -y wrk
command -v perf >/dev/null || apt-get install -y linux-perf
if ! wasmtime --version 2>/dev/null | grep -q '^wasmtime 48\.0\.8'; then
    cargo install wasmtime-cli --version 48.0.8 --locked
fi
if ! componentize-py --version 2>/dev/null | grep -q '0\.25\.0'; then
    python3 -m pip install --quiet componentize-py==0.25.0
fi
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true

cargo build --release -p berth
out=bench/guests-target/languages
mkdir -p "$out"
(cd bench/hello && cargo build --release --target wasm32-wasip2 --target-dir ../guests-target)
(cd bench/hello-p3 && cargo build --release --target wasm32-wasip2 --target-dir ../guests-target)
cp bench/guests-target/wasm32-wasip2/release/hello_bench.wasm "$out/rust-p2.wasm"
cp bench/guests-target/wasm32-wasip2/release/hello_p3_bench.wasm "$out/rust-p3.wasm"

# The WIT of the wasmtime-wasi-http Berth links: WASI 0.2 and 0.3 HTTP.
http_crate=$(cargo metadata --format-version 1 --manifest-path host/Cargo.toml | python3 -c '
import json, os, sys
pkgs = json.load(sys.stdin)["packages"]
print(os.path.dirname(next(p["manifest_path"] for p in pkgs if p["name"] == "wasmtime-wasi-http")))')
RUST_BACKTRACE=0 componentize-py -q -d "$http_crate/wit" -w wasi:http/proxy \
    componentize -p bench/python/hello-p2 app -o "$out/python-p2.wasm"
RUST_BACKTRACE=0 componentize-py -q -d "$http_crate/src/p3/wit" -w wasi:http/service@0.3.0 \
    componentize -p bench/python/hello-p3 app -o "$out/python-p3.wasm"

# ComponentizeJS 0.23's engine exports wasi:http 0.2.10: its WIT is
# wasmtime's 0.2 WIT at that version.
(cd bench/js && npm ci --silent)
rm -rf "$out/js-wit" && cp -r "$http_crate/wit" "$out/js-wit"
sed -i 's/@0\.2\.[0-9]*/@0.2.10/g; s/since(version = 0\.2\.1[0-9])/since(version = 0.2.10)/' \
    $(grep -rl "@0.2" "$out/js-wit")
node bench/js/node_modules/@bytecodealliance/componentize-js/src/cli.js bench/js/hello.js \
    --wit "$out/js-wit" --world-name wasi:http/proxy -o "$out/js.wasm"

exec python3 bench/load_languages.py \
    --berth "$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/berth" \
    --wasmtime "$(command -v wasmtime)" \
    --workerd bench/js/node_modules/.bin/workerd \
    --components "$out" \
    "$@"
