#!/usr/bin/env bash
# Every GPU check and benchmark, in one device call of 7 minutes at most (see README "GPU").
#   here:   ../shared/tools/gpu-wheels.sh            (OpenNMT-py and its missing deps into .whl/)
#   device: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=420)
# Writes $OUT/gpu-tests.log, $OUT/gpu-bench.log and $OUT/gpu-<date>.json (rewritten after every
# stage of the benchmark, so a timeout keeps what finished). Commit the JSON under bench/results/.
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu-tests.log"
# 1. the GPU-validated kernels (simt / atomic) against the torch backend, the ops against the
#    dense reference, device checks and graphs; test_cuda's CPU-only checks (emulated launches,
#    the kernels' code on the CPU) ran on the CPU machines already and are left out here
NEW="tiled or tensor or cublas"
timeout 100 python3 -m pytest -q tests/test_cuda.py tests/test_ops.py tests/test_devices.py \
    tests/test_graphs.py -k "not (test_cuda and (emulated or own_code or $NEW))" \
    2>&1 | tee -a "$OUT/gpu-tests.log"
# 2. the new kernel choices (GEMM_KERNEL tiled / tensor / cublas, each with DW_KERNEL atomic and
#    tiles), in a process of their own: a fault there cannot take step 1's results with it
timeout 90 python3 -m pytest -q tests/test_cuda.py -k "gpu and ($NEW)" \
    2>&1 | tee -a "$OUT/gpu-tests.log"
# 3. micro: every kernel choice, 10 calls per timing graph; then training with the defaults
timeout 215 python3 bench/gpu_bench.py --out "$OUT" --steps 30 --micro-reps 10 2>&1 \
    | tee "$OUT/gpu-bench.log"
