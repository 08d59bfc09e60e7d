#!/usr/bin/env bash
# Every GPU check and benchmark, in one device call of 7 minutes at most (see README "GPU").
#   here:   ../shared/tools/gpu-wheels.sh            (OpenNMT-py and its missing deps into .whl/)
#   device: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=480)
# Writes under $OUT (default bench/results), after every stage: gpu-tests.log (the tests),
# e2e/gpu-<date>.json + gpu-bench-e2e.log (the training runs) and micro/gpu-<date>.json +
# gpu-bench-micro.log (the six GEMMs): 5 files, within what a device call brings back. Commit
# the JSON under bench/results/. Each stage has a limit (s): TESTS_S (90), KERNEL_TESTS_S (50,
# twice; a test step stopped at its limit is interrupted, so pytest still prints which failed),
# E2E_S (180), MICRO_S (60). E2E_KERNELS (tensor+cublas,tensor+cublas+kernel,
# tensor+cublas+nosplit,cublas+cublas+align8): the kernel pairs the training runs compare side by
# side (the one-group GEMMs: gathered window and cuBLAS by default, +kernel: GEMM_KERNEL with split
# K, +nosplit: without; +align8: -sdrop_window_align 8, so cuBLAS takes fp16 too); MICRO_KERNELS
# (cublas,tensor,wide): the GEMM kernels the micro rows time, on masks aligned to MICRO_ALIGN (8).
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $* ===" | tee -a "$OUT/gpu-tests.log"; }
source bench/gpu_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu-tests.log"
# 1. the default kernels (tensor / cublas) against the torch backend, the ops against the dense
#    reference, device checks and graphs (the real capture with our kernels and with cuBLAS);
#    test_cuda's CPU-only checks (emulated launches, the kernels' code on the CPU, nvcc) ran on
#    the CPU machines already and are left out here (nvcc alone took 40 s of an H100 run)
stamp "1. default kernels, ops, devices, graphs"
OTHERS="simt or tiled or tensor or cublas or wide"
timeout --signal=INT --kill-after=10 "${TESTS_S:-90}" python3 -m pytest -q -rf \
    tests/test_cuda.py tests/test_ops.py tests/test_devices.py tests/test_graphs.py \
    -k "not (test_cuda and (emulated or own_code or compile or $OTHERS))" \
    2>&1 | tee -a "$OUT/gpu-tests.log"
# 2. every kernel choice (GEMM_KERNEL simt / tiled / tensor / wide, then cublas, each with
#    DW_KERNEL atomic, tiles and cublas), each family in a process of its own: a CUDA error is
#    sticky, so one fault fails every later test of its process (an H100 run, 2026-11-28: cuBLAS
#    on fp16 windows, then 157 more failures), and must not take other results with it
for family in "(simt or tiled or tensor or wide) and not cublas" "cublas"; do
  stamp "2. kernel choices: $family"
  timeout --signal=INT --kill-after=10 "${KERNEL_TESTS_S:-50}" python3 -m pytest -q -rf \
      tests/test_cuda.py -k "gpu and $family" 2>&1 | tee -a "$OUT/gpu-tests.log"
done
# 3. training: stock, dense and compacted with each kernel pair, under CUDA graphs, interleaved
stamp "3. training runs"
timeout "${E2E_S:-180}" python3 bench/gpu_bench.py --out "$OUT/e2e" --no-micro --steps 20 \
    --e2e-kernels "${E2E_KERNELS:-tensor+cublas,tensor+cublas+kernel,tensor+cublas+nosplit,cublas+cublas+align8}" \
    --variants "${E2E_VARIANTS:-stock,dense+graphs,compact+graphs}" 2>&1 \
    | tee "$OUT/gpu-bench-e2e.log"
# 4. the six grouped GEMMs of each kernel choice against cuBLAS on the dense shapes
stamp "4. micro rows"
timeout "${MICRO_S:-60}" python3 bench/gpu_bench.py --out "$OUT/micro" --no-e2e \
    --micro-reps 10 --micro-kernels "${MICRO_KERNELS:-cublas,tensor,wide}" \
    --micro-align "${MICRO_ALIGN:-8}" 2>&1 \
    | tee "$OUT/gpu-bench-micro.log"
stamp "done"
