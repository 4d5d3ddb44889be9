#!/usr/bin/env bash
# Runs the safetensors header fuzz target for a bounded time from the seed corpus (ctest label `fuzz`).
#   tests/fuzz/run_fuzz.sh FUZZER SEED_CORPUS WORK_DIR SECONDS
# New inputs go to WORK_DIR/corpus (the committed seeds stay untouched); a crash or a broken invariant
# leaves its input in WORK_DIR/artifacts/ and fails the run. Prints the execution count.
set -euo pipefail
usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac
[ $# -eq 4 ] || { usage >&2; exit 2; }
fuzzer="$1" seeds="$2" work="$3" seconds="$4"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rm -rf "$work/corpus"  # each run starts from the seeds: bounded and repeatable
mkdir -p "$work/corpus" "$work/artifacts"
log="$work/fuzz.log"
set +e
"$fuzzer" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -dict="$here/safetensors.dict" -artifact_prefix="$work/artifacts/" "$work/corpus" "$seeds" >"$log" 2>&1
rc=$?
set -e
execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
units=$(ls "$work/corpus" | wc -l)
if [ "$rc" -ne 0 ]; then
  tail -n 60 "$log"
  echo "fuzz: FAILED (exit $rc) after ${execs:-?} executions; the input is in $work/artifacts/" >&2
  exit 1
fi
grep -E '^#[0-9]+[[:space:]]+DONE' "$log" || true
echo "fuzz: ${execs} executions in ${seconds} s, no crash, no broken invariant (${units} new corpus units in $work/corpus)"
