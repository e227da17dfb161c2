#!/usr/bin/env bash
# Validate and time every GPU path against the CPU in one run (< 8 minutes on one
# H100): the GPU parametrisations of the tests (real CuPy; the same tests run in CI
# on the strict CPU stand-in), then benchmarks/gpu_check.py at real sizes.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# Needs an NVIDIA GPU and CuPy (pip install 'livestream[gpu]' or cupy-cuda12x);
# installs the project into .venv first when there is none.  Results go to
# $OUT (if set) or ./gpu_check-out: pytest log, gpu_check.json, nvidia-smi.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check-out}"
mkdir -p "$out"
if [ ! -x .venv/bin/python ]; then
    python3 dev.py --help >/dev/null 2>&1 || true
    python3 -c "import dev; dev.ensure_venv()"
fi
py=.venv/bin/python
"$py" -c "import cupy" 2>/dev/null || "$py" -m pip install -q "cupy-cuda12x>=13"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.venv/numba-cache}"
status=0
timeout 240 "$py" -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$out/pytest-gpu.log" | tail -5
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
timeout 300 "$py" benchmarks/gpu_check.py --json "$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check: status $status, results in $out"
exit $status
