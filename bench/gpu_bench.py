#!/usr/bin/env python
"""GPU benchmarks for the CUDA backend, in one run (see bench/gpu_check.sh).

micro: each compacted kernel (forward, dX, dW) against cuBLAS on the dense tensors of the same
       shape (torch.matmul), at dropout 0.1 / 0.3 / 0.5, for the default model's real shapes;
       time ratios next to the ideal 1/(1-p).
e2e:   training tok/s of stock OpenNMT-py, sdrop dense and sdrop compacted (CUDA kernels), fp32 and
       fp16 (AMP), at the default size and at a compute-bound size (hidden 1024, batch 256).
Writes OUT/gpu-<date>.json (and bench/results/ when --commit-dir is given).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import cpu_bench  # noqa: E402  (also installs the onmt hook)

from onmt_sdrop.masks import sample_step_mask  # noqa: E402
from onmt_sdrop.ops import cupy_backend as cu  # noqa: E402

E2E = {k: v for k, v in cpu_bench.VARIANTS.items() if k != "sdrop_compact_m4"}
E2E["sdrop_compact"] = E2E["sdrop_compact"][:-1] + ["cupy"]


def timed(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def micro(batch=64, steps=30):
    """(name, p, dense ms, compact ms, ratio, ideal) for the default model's consumer GEMMs."""
    shapes = {"enc_input_proj (all steps, 2 dirs)": (steps, 500, 2000),
              "dec_input_feed (1 step)": (1, 500, 2000),
              "generator (all steps)": (steps, 500, 10000)}
    rows = []
    for name, (g, h, n) in shapes.items():
        for p in (0.1, 0.3, 0.5):
            m = sample_step_mask(g, h, p).to("cuda")
            x = torch.randn(g, batch, h, device="cuda")
            w = torch.randn(n, h, device="cuda")
            dy = torch.randn(g, batch, n, device="cuda")
            xc = cu.gather(x, m)
            ww = cu.permute_weight(w, m, 1)
            dense = {"fwd": lambda: x.view(-1, h) @ w.t(),
                     "dx": lambda: dy.view(-1, n) @ w,
                     "dw": lambda: dy.view(-1, n).t() @ x.view(-1, h)}
            xr = xc.clone().requires_grad_(True)
            wr = w.clone().requires_grad_(True)
            comp = {"fwd": lambda: cu.compact_matmul(xc, ww, m),
                    # the per-batch weight permutation is included in fwd+bwd
                    "fwd+bwd": lambda: torch.autograd.grad(
                        cu.compact_matmul(xr, cu.permute_weight(wr, m, 1), m), (xr, wr), dy)}
            d_fwd = timed(dense["fwd"])
            d_all = d_fwd + timed(dense["dx"]) + timed(dense["dw"])
            c_fwd, c_all = timed(comp["fwd"]), timed(comp["fwd+bwd"])
            for part, d, c in (("fwd", d_fwd, c_fwd), ("fwd+bwd", d_all, c_all)):
                rows.append({"gemm": name, "part": part, "p": p, "dense_ms": round(d * 1e3, 4),
                             "compact_ms": round(c * 1e3, 4), "speedup": round(d / c, 3),
                             "ideal": round(1 / (1 - p), 3),
                             "of_ideal": round((d / c) / (1 / (1 - p)), 3)})
            print(rows[-2], rows[-1], flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args(argv)
    cfg = dict(hidden=500, layers=2, batch=64, vocab=10000, dropout=0.3, steps=args.steps,
               warmup=5, rnd=10, device="cuda")
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "date": dt.date.today().isoformat(), "config": {k: v for k, v in cfg.items()}}
    result["micro"] = micro()
    result["tok_s"] = cpu_bench.measure(E2E, **cfg)
    result["tok_s_fp16"] = cpu_bench.measure(E2E, amp=True, **cfg)
    if not args.skip_large:
        large = dict(cfg, hidden=1024, batch=256, steps=max(10, args.steps // 3))
        result["large"] = {"config": large, "tok_s": cpu_bench.measure(E2E, **large)}
    out = Path(args.out) / f"gpu-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "tok_s", "tok_s_fp16")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
