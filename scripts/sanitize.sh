#!/usr/bin/env bash
# compute-sanitizer memcheck and racecheck over scripts/sanitize_cases.py (needs a GPU and the
# CUDA toolkit's compute-sanitizer). Exit status non-zero if either tool reports an error.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/sanitize}"
mkdir -p "$OUT"
SAN="${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}"
export PYTORCH_NO_CUDA_MEMORY_CACHING=1  # lets memcheck see each allocation's real bounds
# Build (or load) the kernels first, outside the sanitizer.
python3 -c "from mla_plugin import build; build.load_extension(verbose=False)" || exit 1
status=0
for tool in memcheck racecheck; do
  "$SAN" --tool "$tool" --error-exitcode 17 --print-limit 20 \
    python3 scripts/sanitize_cases.py > "$OUT/$tool.log" 2>&1
  rc=$?
  summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/$tool.log" | tail -1)
  echo "$tool: exit $rc; ${summary:-no summary line}"
  [ "$rc" -eq 0 ] || status=1
done
exit $status
