#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each (default 60) and prints the executions each ran.
# A panic, a failed round trip, an allocation of 256 MB or more, a resident size over 512 MB or an input slower
# than 10 s is a crash: the run goes on with the other targets, then exits 1. So does a saved regression input
# (fuzz/regressions/<target>/) that still crashes. docs/FUZZING.md explains more.
#
#   FUZZ_SECONDS=30 bash scripts/fuzz.sh                   # every target, 30 s each
#   FUZZ_TARGETS="tracking_request status_change" bash scripts/fuzz.sh
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-tracking_request carrier_update status_change correios_answer jadlog_answer marketplaces_file}
# The flags that make an unbounded allocation or a hang a failure rather than a slow machine.
limits=(-rss_limit_mb=512 -malloc_limit_mb=256 -timeout=10)

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzzing needs a nightly toolchain: rustup toolchain install nightly --profile minimal" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing; installing it from crates.io (a few minutes)."
  cargo install cargo-fuzz --locked || exit 2
fi

# One build for every target (the slow part: the crates under test with sanitizer instrumentation).
cargo +nightly fuzz build || exit 2

logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
failed=()
summary=()

# Inputs that once crashed a target (fuzz/regressions/README.md): each runs once, and one that still crashes fails
# the run. They are kept out of the fuzzing corpus, where one crashing input would stop libFuzzer before it starts.
for t in $targets; do
  for f in fuzz/regressions/"$t"/*; do
    [ -f "$f" ] || continue
    case $f in *.md) continue ;; esac
    if cargo +nightly fuzz run "$t" "$f" -- -runs=1 "${limits[@]}" >"$logs/regression.log" 2>&1; then
      echo "regression $f: passes"
    else
      echo "regression $f: STILL CRASHES" >&2
      grep -E -m1 -A1 "panicked at|==ERROR" "$logs/regression.log" | sed 's/^/   /' >&2
      failed+=("$f")
    fi
  done
done

for t in $targets; do
  # New inputs go to a scratch corpus under fuzz/target (ignored by git); the committed seeds are read, never written.
  work=fuzz/target/corpus-work/$t
  mkdir -p "$work" "fuzz/artifacts/$t"
  echo "== $t: ${seconds} s"
  cargo +nightly fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 "${limits[@]}" >"$logs/$t.log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' | tail -1)
  per_sec=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' | tail -1)
  if [ "$rc" -eq 0 ]; then
    outcome=ok
  else
    outcome="CRASH (exit $rc)"
    failed+=("$t")
    grep -E -m1 -A3 "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|==ERROR" "$logs/$t.log" | sed 's/^/   /'
    grep -E -m1 "Test unit written to" "$logs/$t.log" | sed 's/^/   /'
  fi
  summary+=("$(printf '%-18s %12s executions %8s/s  %s' "$t" "${execs:-?}" "${per_sec:-?}" "$outcome")")
done

echo
echo "Fuzzing, ${seconds} s per target (logs in $logs/):"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "Crashed: ${failed[*]}" >&2
  echo "(new crashing inputs are in fuzz/artifacts/<target>/; reproduce with cargo +nightly fuzz run <target> <file>)" >&2
  exit 1
fi
