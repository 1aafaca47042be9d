#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer's coverage instrumentation on the stable toolchain
# and runs each one for SECONDS (default 20). What cargo-fuzz does, without cargo-fuzz and
# without nightly: the SanitizerCoverage pass and its options are stable rustc flags
# (-Cpasses, -Cllvm-args), and libfuzzer-sys builds libFuzzer with the C++ compiler. The
# flags go to the target only (--target), never to build scripts and proc macros.
# A crash fails the run and leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --bins --target "$triple" --quiet
targets=(wire_decode wire_engine frame_decode handshake_decode api_message http_request_head control_line checkpoint_header raft_payload)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "fuzz: $t for ${secs}s"
  "target/$triple/release/$t" "corpus/$t" -max_total_time="$secs" -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>"artifacts/$t/log.txt" \
    || { tail -40 "artifacts/$t/log.txt"; echo "fuzz: $t FAILED"; exit 1; }
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "artifacts/$t/log.txt" | tr '\n' ' '
  echo
done
echo "fuzz: ${#targets[@]} targets ran ${secs}s each, no crash"
