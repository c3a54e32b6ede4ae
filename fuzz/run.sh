#!/usr/bin/env bash
# Fuzzes the parsers and decoders that take untrusted bytes, each for a
# bounded time: a benchmark-style job, not part of CI.
#   route_yaml     LuaRoute YAML through validation, the Lua compile and the config
#   snapshot       a controller's stream message or a stored snapshot
#   shdict_record  a durable dict entry as read from redb
#   timer_record   a durable timer as read from redb
#   re_options     ngx.re options, with the regex, subject and replacement
# Crashes are left in fuzz/artifacts/<target>/; the script then exits 1.
#
# Usage: fuzz/run.sh [target...]
# Environment:
#   FUZZ_SECONDS  seconds per target (default 300)
#   FUZZ_JOBS     parallel fuzzing processes per target (default 1)
set -euo pipefail

FUZZ=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$FUZZ/.." && pwd)
SECONDS_EACH=${FUZZ_SECONDS:-300}
JOBS=${FUZZ_JOBS:-1}
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(route_yaml snapshot shdict_record timer_record re_options)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
TOOLS=$ROOT/.cache/cargo-fuzz
if [[ ! -x $TOOLS/bin/cargo-fuzz ]]; then
    cargo install --locked --root "$TOOLS" cargo-fuzz
fi
export PATH=$TOOLS/bin:$PATH

cd "$FUZZ"
cargo run --quiet --release --bin seed
failed=0
for t in "${TARGETS[@]}"; do
    echo "## $t: ${SECONDS_EACH}s"
    # -timeout: one input running longer than this is a finding (a hang).
    if ! cargo +nightly fuzz run --release "$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=4096 -jobs="$JOBS" -workers="$JOBS" \
        -print_final_stats=1 2>"$FUZZ/$t.log"; then
        failed=1
        echo "$t: crashed; see fuzz/artifacts/$t/ and fuzz/$t.log" >&2
    fi
    grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+.*DONE" "$FUZZ/$t.log" || tail -3 "$FUZZ/$t.log"
done
exit "$failed"
