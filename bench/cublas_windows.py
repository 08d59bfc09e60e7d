#!/usr/bin/env python
"""Does cuBLAS's batched GEMM over window pointers care where the windows start? (GPU only.)

The CUDA backend's ``cublas`` kernel runs a compacted GEMM as ONE ``cublasGemmBatchedEx`` over
pointer arrays: every group's kept weights are a window of the permuted weight that starts at a
random offset, so the pointers are aligned to one element only. This times the generator's
forward (consumer) GEMM at the benchmark's shapes with the offsets as sampled, rounded down to
multiples of 8, and all zero, against cuBLAS on the dense shape, each under a CUDA graph of
repeated calls (the capture itself is part of the check).

Answered on an H100 (2026-11-28, bench/results/logs/gpu-tests-2026-11-28.log): in fp32 the start
does not matter (1.154x / 1.159x / 1.161x of dense at the default size); in fp16 cuBLAS stopped
with "misaligned address" on the sampled windows, which is why the backend keeps fp16 / bf16 off
cuBLAS (block-aligned windows with 8-unit offsets, kept counts and leading dimensions would be
needed, issue 10 item 2). So it times fp32 only now, and bench/gpu_check.sh no longer runs it.

    python bench/cublas_windows.py --out DIR      writes DIR/cublas-windows-<date>.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_bench import PRECISIONS, SIZES, time_ms  # noqa: E402

from onmt_sdrop.masks import StepMask, sample_step_mask  # noqa: E402
from onmt_sdrop.ops import cupy_backend  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--vocab", type=int, default=10000)
    args = ap.parse_args(argv)
    cupy_backend.GEMM_KERNEL = "cublas"
    rows = []
    out = Path(args.out) / f"cublas-windows-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for size, dims in SIZES.items():
        hidden, batch = dims["hidden"], dims["batch"]
        sampled = sample_step_mask(args.steps, hidden, 0.3)
        masks = {"sampled": sampled.to("cuda")}
        for name, offsets in (("multiple_of_8", sampled.offsets // 8 * 8),
                              ("zero", torch.zeros_like(sampled.offsets))):
            masks[name] = StepMask(sampled.perm, offsets, sampled.counts, sampled.scale,
                                   sampled.size, sampled.kmax).to("cuda")
        for precision, dtype in (("fp32", PRECISIONS["fp32"]),):
            x = torch.randn(args.steps, batch, hidden, device="cuda", dtype=dtype)
            w = torch.randn(args.vocab, hidden, device="cuda", dtype=dtype)
            dense_ms, _ = time_ms(lambda: x.view(-1, hidden) @ w.t(), "cuda", args.reps)
            for name, m in masks.items():
                xc, ext = cupy_backend.gather(x, m), cupy_backend.permute_weight(w, m, 1).ext
                ms, how = time_ms(lambda: cupy_backend.consumer_fwd(xc, ext, m), "cuda",
                                  args.reps)
                rows.append({"size": size, "precision": precision, "offsets": name,
                             "kmax": m.kmax, "dense_ms": round(dense_ms, 4),
                             "compact_ms": round(ms, 4), "speedup": round(dense_ms / ms, 3),
                             "timed": how})
                print(rows[-1], flush=True)
        out.write_text(json.dumps({"device": torch.cuda.get_device_name(0),
                                   "torch": torch.__version__, "date": dt.date.today().isoformat(),
                                   "command": "python bench/cublas_windows.py "
                                   + " ".join(sys.argv[1:]), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
