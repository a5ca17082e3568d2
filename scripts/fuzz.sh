#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ and runs each one for a fixed time
# on its committed seeds (fuzz/seeds/<target>) plus what earlier runs found
# (fuzz/corpus/<target>, not committed); a crash, a leak, an allocation over
# the limit or a hang fails the run and leaves the input in
# fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   (default: 10 s, every target)
#
# The fuzzer's random seed is fixed (FUZZ_SEED, default 1), so on a fresh
# clone a commit's short run tries the same inputs every time: a red run
# can be replayed, and a green one stays green unless the code changes.
# Exploring is for the long runs (docs/fuzzing.md). FUZZ_CORPUS_DIR
# (default fuzz/corpus) says where the inputs found are kept.
#
# This is the short run scripts/test.sh makes. It needs neither cargo-fuzz
# nor a nightly toolchain: it builds with the coverage flags cargo-fuzz
# uses, without AddressSanitizer and with several codegen units, to build
# in a few minutes (the long runs use `cargo fuzz run`, which adds
# AddressSanitizer and libFuzzer's allocation limit; see docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-10}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(mqtt_decode mqtt_channel acl_conf forward_frame forward_handshake cluster_wire proxy_header config bootstrap_csv)
fi
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions -Coverflow-checks"
# Apart from cargo fuzz's own builds (other flags): no rebuild back and forth.
export CARGO_TARGET_DIR=target/short
echo "== building the fuzz targets"
cargo build --release --locked --target "$TRIPLE" --bins
# FUZZ_BUILD_ONLY=1: build, run nothing (scripts/test.sh builds them
# while its tests run).
[ "${FUZZ_BUILD_ONLY:-0}" = 1 ] && exit 0
failed=()
for t in "${TARGETS[@]}"; do
    corpus="${FUZZ_CORPUS_DIR:-corpus}/$t"
    mkdir -p "$corpus" "artifacts/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    log="$CARGO_TARGET_DIR/fuzz-$t.log"
    if "$CARGO_TARGET_DIR/$TRIPLE/release/$t" -max_total_time="$SECS" -rss_limit_mb=2048 -malloc_limit_mb=512 \
        -timeout=10 -seed="${FUZZ_SEED:-1}" -artifact_prefix="artifacts/$t/" "$corpus" "${seeds[@]}" >"$log" 2>&1; then
        echo "fuzz $t: ok, $(grep -Eo '^Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+') runs in ${SECS} s"
    else
        echo "fuzz $t: FAILED"
        grep -E "panicked at|^SUMMARY|Test unit written" "$log" | head -5 || true
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets failed: ${failed[*]}"
    exit 1
fi
