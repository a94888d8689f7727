#!/usr/bin/env bash
# Builds the fuzz targets and runs each one: by default for 10 M executions, or for N seconds
# with --seconds N (CI: --seconds 30). Prints per target the executions and crashes, and exits
# non-zero on any crash, printing the crashing input's path.
#
#   fuzz/run.sh [--seconds N | --runs N] [TARGET...]     (default: every target in Cargo.toml)
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/) plus what earlier runs on
# this machine found (fuzz/target/corpus/<target>/, not committed); fuzz/dict/<target>.dict is
# used when present. Crashing inputs go to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

runs=10000000
seconds=
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

# cargo-fuzz drives libFuzzer through unstable compiler flags; RUSTC_BOOTSTRAP lets the stable
# toolchain accept them.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

# No sanitizer: the code under test is safe Rust, where AddressSanitizer finds nothing the
# bounds checks do not, at twice the cost. -a keeps overflow checks and debug assertions on.
start=$(date +%s)
cargo fuzz build -s none -a
echo "build: $(( $(date +%s) - start ))s"
triple=$(rustc -vV | sed -n 's/^host: //p')

limit=(-runs="$runs")
[ -n "$seconds" ] && limit=(-max_total_time="$seconds")
failed=()
summary=()
for t in "${targets[@]}"; do
  work=target/corpus/$t
  mkdir -p "$work" "artifacts/$t"
  seeds=()
  [ -d "corpus/$t" ] && seeds=("corpus/$t")
  dict=()
  [ -f "dict/$t.dict" ] && dict=(-dict="dict/$t.dict")
  log=target/$t.log
  t0=$(date +%s)
  rc=0
  "target/$triple/release/$t" "$work" "${seeds[@]}" "${limit[@]}" "${dict[@]}" \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 -rss_limit_mb=4096 >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
  line="$t: ${execs:-?} executions in $(( $(date +%s) - t0 ))s, "
  if [ "$rc" -ne 0 ] || [ -n "$crash" ]; then
    line+="CRASH (exit $rc): fuzz/${crash:-?} (log fuzz/$log)"
    failed+=("$t")
    grep -m1 -A3 -E "panicked at|ERROR: libFuzzer" "$log" | sed 's/^/    /' || true
  else
    line+="0 crashes"
  fi
  echo "$line"
  summary+=("$line")
done

echo
echo "== fuzz summary ($(( $(date +%s) - start ))s in all)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]}; reproduce with: fuzz/target/$triple/release/<target> <crash file>"
  exit 1
fi
