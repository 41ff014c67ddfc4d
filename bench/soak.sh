#!/usr/bin/env bash
# The soak (issue 17): a real `berth serve` for MINUTES under mixed traffic
# at 80 % of the peak the driver measures first — hello, echo with bodies,
# events, a chain of service calls, a deploy or a rollback every 30 s (the first 15 s in) — with
# a cold start every 3 s and a hostile guest every 2 s. It fails on any
# unexpected answer, resident memory or open files growing 5 % after the
# warm-up, a ledger record count that is not the number of invocations
# sent, an acknowledged event not handled, or a damaged state database.
# Writes its results into docs/benchmarks.md (between the soak-results
# markers) and a plot of memory and p99 over time into docs/soak.png.
#
#     bench/soak.sh                              # 30 minutes, optimised build
#     MINUTES=5 bench/soak.sh --no-write         # print only
#     PROFILE=dev MINUTES=2 bench/soak.sh --no-write   # what CI runs
#
# The driver is the `soak` benchmark target of the host (bench/soak/main.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

# With RUST_BACKTRACE set, every error built on a request path captures a
# backtrace; measure without it.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

minutes="${MINUTES:-30}"
profile="${PROFILE:-bench}"
write=1
if [ "${1:-}" = --no-write ]; then write=0; fi
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
if [ $write = 1 ]; then
    python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib==3.10.8
fi

out=$(mktemp -d /tmp/berth-soak-XXXXXX)
status=0
cargo bench -p berth --profile "$profile" --bench soak -- --minutes "$minutes" --out "$out" || status=$?
# Results go into the docs only from a soak that passed.
if [ $write = 1 ] && [ $status = 0 ]; then
    python3 bench/soak_report.py "$out/soak.json" --command "bench/soak.sh (MINUTES=$minutes)"
fi
if [ $status = 0 ]; then
    rm -rf "$out"
else
    echo "soak failed; its results and the host's log are in $out" >&2
fi
exit $status
