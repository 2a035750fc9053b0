#!/usr/bin/env bash
# Fuzzes the .npy and .safetensors readers of host/tools/arrays.c: builds each libFuzzer harness with
# AddressSanitizer and UndefinedBehaviorSanitizer and runs it for SECONDS on a copy of its seed corpus
# (fuzz/corpus/<format>/ is left as committed). Exits non-zero on any crash, leak, timeout or sanitizer
# report, and keeps the work folder (logs, reproducers) for a look.
#
#   fuzz/run.sh SECONDS
#
# Needs clang with the libFuzzer runtime: on Debian 12, clang and libclang-rt-14-dev.
set -euo pipefail

secs=${1:?usage: fuzz/run.sh SECONDS}
root=$(cd "$(dirname "$0")/.." && pwd)
cc=${CC:-clang}
work=$(mktemp -d "${TMPDIR:-/tmp}/klcl-fuzz-XXXXXX")
flags=(-std=c11 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -Wall -Wextra -Wshadow -Werror -I "$root/host/tools")
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

harnesses=(npy safetensors)
for h in "${harnesses[@]}"; do
    "$cc" "${flags[@]}" "$root/fuzz/fuzz_$h.c" -o "$work/fuzz_$h"
    cp -r "$root/fuzz/corpus/$h" "$work/corpus_$h"
    mkdir -p "$work/artifacts_$h"
done

# Both harnesses at once, one core each.
pids=()
for h in "${harnesses[@]}"; do
    "$work/fuzz_$h" -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -dict="$root/fuzz/$h.dict" -artifact_prefix="$work/artifacts_$h/" "$work/corpus_$h" \
        > "$work/fuzz_$h.log" 2>&1 &
    pids+=($!)
done

status=0
for i in "${!harnesses[@]}"; do
    h=${harnesses[$i]}
    rc=0
    wait "${pids[$i]}" || rc=$?
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$work/fuzz_$h.log")
    cov=$(grep -o 'cov: [0-9]*' "$work/fuzz_$h.log" | tail -1 || true)
    units=$(find "$work/corpus_$h" -type f | wc -l)
    report='ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:'
    if [ "$rc" -ne 0 ] || grep -qE "$report" "$work/fuzz_$h.log"; then
        echo "fuzz_$h: FAILED (exit $rc) after ${execs:-?} executions; log and reproducer in $work:"
        grep -E 'ERROR|runtime error|SUMMARY|Test unit written' "$work/fuzz_$h.log" | head -20
        status=1
    else
        echo "fuzz_$h: ok, ${execs:-?} executions in ${secs} s, ${cov:-cov: ?}, corpus ${units} files"
    fi
done

if [ "$status" -eq 0 ]; then
    rm -rf "$work"
else
    echo "work folder kept: $work"
fi
exit "$status"
