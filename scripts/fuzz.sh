#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 600), JOBS
# at a time (default 2), and prints one line per target: runs, time, result.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# New corpus entries land in fuzz/corpus/<target>/ (only seed-* files are
# committed); a crash is saved in fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
SECONDS_EACH=${1:-600}
JOBS=${JOBS:-2}
cd "$(dirname "$0")/../fuzz"
TARGETS=$(cargo +nightly fuzz list)
cargo +nightly fuzz build -O >/dev/null
mkdir -p logs
run() {
    local t=$1
    if cargo +nightly fuzz run "$t" -O -- -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        >"logs/$t.log" 2>&1; then
        echo "$t: ok, $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "logs/$t.log" | tail -1)"
    else
        echo "$t: FAILED (see fuzz/logs/$t.log and fuzz/artifacts/$t/)"
        return 1
    fi
}
export -f run
export SECONDS_EACH
echo "$TARGETS" | xargs -P "$JOBS" -I{} bash -c 'run {}'
