#!/usr/bin/env bash
# Every GPU check and benchmark, in one device call (see README "GPU").
#   here:   ../shared/tools/gpu-wheels.sh            (OpenNMT-py and its missing deps into .whl/)
#   device: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=420)
# Writes $OUT/gpu-tests.log, $OUT/gpu-bench.log and $OUT/gpu-<date>.json.
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu-tests.log"
timeout 200 python3 -m pytest -q -x tests/test_cuda.py tests/test_ops.py 2>&1 | tee -a "$OUT/gpu-tests.log"
timeout 300 python3 bench/gpu_bench.py --out "$OUT" --steps 40 2>&1 | tee "$OUT/gpu-bench.log"
