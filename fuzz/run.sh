#!/usr/bin/env bash
# Runs one fuzz target of ringlog's wire decoders for a bounded time.
#   fuzz/run.sh [frame_decoder|peer_message|client_message] [seconds]
# Uses `cargo fuzz` if installed, else builds with nightly and the same flags cargo-fuzz uses.
set -euo pipefail
cd "$(dirname "$0")"
target="${1:-frame_decoder}"
seconds="${2:-60}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "cargo +nightly is missing: fuzzing needs a nightly toolchain (the stable CI runs the"
    echo "same fuzz bodies as seeded tests: cargo test -p ringlog-net --test net_codec)"
    exit 1
fi
mkdir -p "corpus/$target"
if cargo fuzz --version >/dev/null 2>&1; then
    exec cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -max_len=65536
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Zsanitizer=address \
-Cdebug-assertions -Coverflow-checks" \
    cargo +nightly build --release --target "$triple" --bin "$target"
exec "$CARGO_TARGET_DIR/$triple/release/$target" "corpus/$target" \
    -max_total_time="$seconds" -max_len=65536
