#!/usr/bin/env bash
# The mutation check (issue 16): the GPU suite's fast accuracy tests (marker mutation_check: every
# compiled variant at block sizes 16 and 64, the grid's small cases, the contract's accuracy
# cases) must be green on the real kernel and red on each mutated build of it:
#
#   MLA_MUTATE_P_DROP_BITS=1     each 16-bit P value has its lowest mantissa bit cleared after
#                                rounding, before P.V: bf16 P keeps 7 significant bits instead of 8,
#                                fp16 P 10 instead of 11. P's worst rounding error doubles (2^-7 /
#                                2^-10 relative), its RMS error doubles, and it gains a mean bias
#                                of about -0.72 u (u = 2^-8 bf16, 2^-11 fp16). e4m3 P: untouched.
#   MLA_MUTATE_OUT_SCALE_ULPS=1  the output times (1 + 2^-9) before its rounding: +0.195% on every
#                                output, half a bf16 unit roundoff (2^-8), 4 fp16 ones (2^-11).
#
# Each build has its own key (MLA_PLUGIN_NVCC_DEFINES is part of the build hash), in a cache
# folder of its own ($MLA_PLUGIN_MUTATION_CACHE, default /tmp/mla_plugin_mutation_cache); the
# three JIT builds run in parallel first, then the tests, one run per build. One summary line
# per run; exit 0 only if the unmutated build is green (all passed, nothing skipped) and each
# mutated one red (failures, no errors). About 3 minutes on an H200, the builds included.
#
#   scripts/mutation_check.sh [extra pytest args, e.g. -k bs16]      logs: $OUT or out/mutation_check
#
# With MLA_PLUGIN_TEST_EMULATED_GPU=1 on a machine without a GPU (tests/test_mutation_check.py)
# nothing is built: the GPU tests run against the emulated kernel, which applies the same
# mutations when MLA_PLUGIN_NVCC_DEFINES names them.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/mutation_check}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export MLA_PLUGIN_CACHE_DIR="${MLA_PLUGIN_MUTATION_CACHE:-/tmp/mla_plugin_mutation_cache}"
unset MLA_PLUGIN_PREBUILT_DIR MLA_PLUGIN_FP8_MATH MLA_PLUGIN_ROWS_PER_CTA MLA_PLUGIN_SPLITS MLA_PLUGIN_NVCC_DEFINES
RUNS=("" "MLA_MUTATE_P_DROP_BITS=1" "MLA_MUTATE_OUT_SCALE_ULPS=1")
label() { echo "${1:-unmutated}"; }
start_all=$(date +%s)

if [ -n "${MLA_PLUGIN_TEST_EMULATED_GPU:-}" ]; then
  echo "EMULATED GPU: no kernel is built or run (tests against tests/gpu/emulate.py)"
else
  pids=()
  for d in "${RUNS[@]}"; do
    MLA_PLUGIN_NVCC_DEFINES="$d" "$PYTHON" -c \
      "from mla_plugin import build; print(build.load_extension(verbose=False).__file__)" \
      > "$OUT/library_$(label "$d").txt" 2> "$OUT/build_$(label "$d").log" &
    pids+=($!)
  done
  libs=()
  for i in "${!RUNS[@]}"; do
    if ! wait "${pids[$i]}"; then
      echo "build $(label "${RUNS[$i]}") failed: $OUT/build_$(label "${RUNS[$i]}").log"
      tail -5 "$OUT/build_$(label "${RUNS[$i]}").log"
      exit 1
    fi
    libs+=("$(tail -1 "$OUT/library_$(label "${RUNS[$i]}").txt")")
  done
  if [ "$(printf '%s\n' "${libs[@]}" | sort -u | wc -l)" -ne "${#RUNS[@]}" ]; then
    echo "two runs loaded the same library (${libs[*]}): the defines did not reach the build key"
    exit 1
  fi
  echo "builds: $(( $(date +%s) - start_all )) s (${libs[*]})"
fi

status=0
for d in "${RUNS[@]}"; do
  name=$(label "$d")
  start=$(date +%s)
  MLA_PLUGIN_NVCC_DEFINES="$d" "$PYTHON" -m pytest tests/gpu -m "gpu and mutation_check" -q -p no:cacheprovider \
    --junitxml="$OUT/$name.xml" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  "$PYTHON" scripts/mutation_report.py line "$name" "$OUT/$name.xml" "$rc" "$(( $(date +%s) - start ))" \
    ${d:+--mutated} || status=1
done
echo "mutation check: $([ "$status" -eq 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - start_all )) s (logs in $OUT)"
exit $status
