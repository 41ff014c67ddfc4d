#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each, after replaying
# every saved regression once and running its corpus:
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]      # default: 10 s, every target
#
# The corpus of each target starts from fuzz/seeds/TARGET, the manifests of
# the tests and examples (manifest) and the guest fixtures the tests build
# (component), and grows in $BERTH_FUZZ_DIR/corpus/TARGET across runs
# (default: beside the build cache). A crash is saved there under
# artifacts/TARGET/ and fails the run; keep it in fuzz/regressions/TARGET/
# once fixed. Prints execs, coverage and crashes per target.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
shift || true
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/berth-target}"
work="${BERTH_FUZZ_DIR:-$CARGO_TARGET_DIR/fuzz}"
# Backtraces are for crashes only: they cost a fuzzer nothing otherwise.
export RUST_BACKTRACE=1

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
# libFuzzer without a sanitizer: the targets are safe Rust; panics,
# overflows (debug assertions are on) and hangs are what they find.
build=(cargo fuzz build --sanitizer none --fuzz-dir fuzz)
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
# BERTH_FUZZ_PROFILE=dev: unoptimised, quicker to build, slower to run.
profile="${BERTH_FUZZ_PROFILE:-release}"
if [ "$profile" = dev ]; then
    build+=(--dev)
    bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/debug"
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
mkdir -p "$work"
# Warnings fail the build here too: the hooks behind cfg(fuzzing) are
# compiled nowhere else.
"${build[@]}" 2>&1 | tee "$work/build.log"
if grep -q '^warning' "$work/build.log"; then
    echo "the fuzz build has warnings (see above)" >&2
    exit 1
fi

seed() {
    local target="$1" corpus="$2"
    mkdir -p "$corpus"
    cp -n fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
    case "$target" in
        manifest)
            for f in tests/e2e/invalid/*.toml examples/berth.toml; do
                if [ -f "$f" ]; then cp -n "$f" "$corpus/$(echo "$f" | tr / _)" || true; fi
            done ;;
        component)
            # The fixtures of the tests, built to wasm32-wasip2 by their
            # build script (the big Python ones left out); an unoptimised
            # build compiles one in about 30 s, so it takes the smallest.
            cargo build --quiet -p berth-test-programs
            local fixtures=("$CARGO_TARGET_DIR"/debug/build/berth-test-programs-*/out/target/wasm32-wasip2/release)
            if [ "$profile" = dev ]; then
                find "${fixtures[@]}" -maxdepth 1 -name '*.wasm' -printf '%s %p\n' | sort -n | head -1 |
                    cut -d' ' -f2- | xargs -I{} cp -n {} "$corpus"/
            else
                find "${fixtures[@]}" -maxdepth 1 -name '*.wasm' -size -4M -exec cp -n {} "$corpus"/ \;
            fi ;;
    esac
}

failed=0
summary=()
for target in "${targets[@]}"; do
    corpus="$work/corpus/$target"
    artifacts="$work/artifacts/$target"
    seed "$target" "$corpus"
    mkdir -p "$artifacts"
    log="$work/$target.log"
    args=(-rss_limit_mb=4096 -timeout=60 -print_final_stats=1 -artifact_prefix="$artifacts/")
    # Every saved regression, once; then the corpus (libFuzzer runs all
    # of it first) and new inputs.
    status=ok
    : >"$log"
    if [ -d "fuzz/regressions/$target" ] &&
        ! "$bin/$target" "${args[@]}" -runs=0 "fuzz/regressions/$target" >>"$log" 2>&1; then
        status="CRASH (regression)"
    elif ! "$bin/$target" "${args[@]}" -max_total_time="$seconds" "$corpus" >>"$log" 2>&1; then
        status="CRASH"
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
    inputs=$(find "$corpus" -type f | wc -l)
    summary+=("$(printf '%-16s %6s s %10s execs %7s edges %6s inputs  %s' "$target" "$seconds" "$execs" "$cov" "$inputs" "$status")")
    echo "${summary[-1]}"
    if [ "$status" != ok ]; then
        failed=1
        echo "== $target: $status; its log: $log" >&2
        grep -A30 -m1 'panicked at\|ERROR: libFuzzer\|==ERROR' "$log" >&2 || tail -30 "$log" >&2
    fi
done
echo "== every target:"
printf '%s\n' "${summary[@]}"
exit "$failed"
