#!/usr/bin/env bash
# One GPU session in one command: JIT-build the kernels for this GPU, run the GPU tests, then a
# benchmark subset. Logs go to $OUT (the device tool's output folder) or ./out/gpu_check.
#   scripts/gpu_check.sh [pytest -k expression] [bench options...]
set -u -o pipefail
OUT="${OUT:-out/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MLA_PLUGIN_CACHE_DIR="${MLA_PLUGIN_CACHE_DIR:-/tmp/mla_plugin_cache}"
export MLA_PLUGIN_GPU_REPORT="$OUT/gpu_errors.json"
select="${1:-}"; shift || true
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
start=$(date +%s)
python3 -c "from mla_plugin import build; build.load_extension(verbose=False)" 2>&1 | tee "$OUT/build.log" | tail -5
echo "build: $(( $(date +%s) - start )) s"
python3 -m pytest tests/gpu -m gpu -q -rf ${select:+-k "$select"} 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
if [ "$#" -gt 0 ]; then
  python3 benchmarks/run_bench.py --out-dir "$OUT" "$@" 2>"$OUT/bench_progress.log" | tee "$OUT/bench.log" | tail -60
fi
