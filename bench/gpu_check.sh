#!/usr/bin/env bash
# Every GPU check and benchmark, in one device call of 7 minutes at most (see README "GPU").
#   here:   ../shared/tools/gpu-wheels.sh            (OpenNMT-py and its missing deps into .whl/)
#   device: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=450)
# Writes $OUT/gpu-tests.log, $OUT/gpu-bench.log and $OUT/gpu-<date>.json (rewritten after every
# stage of the benchmark, so a timeout keeps what finished). Commit the JSON under bench/results/.
# The three steps' limits (s): TESTS_S (100), KERNEL_TESTS_S (80), BENCH_S (240). Beside the
# recipe in one call (README "GPU"), e.g.:
#   run(command='OUT=$OUT/recipe TOTAL_S=250 bash recipes/gpu_check.sh; TESTS_S=90
#       KERNEL_TESTS_S=40 BENCH_S=200 bash bench/gpu_check.sh', carry=[".whl",
#       "recipes/work/gpu-data"], timeout_s=600)
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
source bench/gpu_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu-tests.log"
# 1. the default kernels (tensor / tiles) against the torch backend, the ops against the dense
#    reference, device checks and graphs; test_cuda's CPU-only checks (emulated launches, the
#    kernels' code on the CPU) ran on the CPU machines already and are left out here
OTHERS="simt or tiled or tensor or cublas or wide"
timeout "${TESTS_S:-100}" python3 -m pytest -q tests/test_cuda.py tests/test_ops.py \
    tests/test_devices.py tests/test_graphs.py \
    -k "not (test_cuda and (emulated or own_code or $OTHERS))" \
    2>&1 | tee -a "$OUT/gpu-tests.log"
# 2. every kernel choice (GEMM_KERNEL simt / tiled / tensor / cublas / wide, each with DW_KERNEL
#    atomic and tiles), in a process of their own: a fault there cannot take step 1's results
#    with it (both steps took 59 + 14 s on an H200)
timeout "${KERNEL_TESTS_S:-80}" python3 -m pytest -q tests/test_cuda.py -k "gpu and ($OTHERS)" \
    2>&1 | tee -a "$OUT/gpu-tests.log"
# 3. training with the default kernels (eager and graphed, fp32 and fp16, both sizes), then the
#    micro rows of the default family, wide and cuBLAS, 10 calls per timing graph (simt and
#    tiled were timed on 2026-11-27: bench/results/gpu-2026-11-27.json; all of them took 215 s
#    there)
timeout "${BENCH_S:-240}" python3 bench/gpu_bench.py --out "$OUT" --steps 30 --micro-reps 10 \
    --micro-kernels tensor,wide,cublas 2>&1 \
    | tee "$OUT/gpu-bench.log"
