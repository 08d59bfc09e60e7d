"""CUDA backend: the grouped window GEMMs and the fused LSTM step as CuPy RawKernels.

Same contracts as :mod:`onmt_sdrop.ops.torch_backend` (and tested against it). Each compacted
GEMM is ONE launch for all groups (``grid.z`` = groups), reading its kept weights as a contiguous
window of the weight permuted once per batch; weight gradients accumulate in float32. The
recurrence keeps its dense ``h W_hh^T`` on cuBLAS (through torch) and fuses the point-wise LSTM
math, forward and backward, into one kernel per step. Kernel sources: ``onmt_sdrop/kernels/*.cu``.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import torch
from torch.autograd import Function

from ..masks import StepMask
from .amp import autocast_op
from .common import (consumer, gather, new_output, permute_weight, producer,  # noqa: F401
                     scatter)

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
TILE, ROWS_PER_THREAD = 32, 8


@functools.lru_cache(maxsize=None)
def _module(name: str):
    import cupy

    src = (KERNELS / f"{name}.cu").read_text()
    return cupy.RawModule(code=src, options=("--std=c++17",), name_expressions=None)


def _suffix(dtype) -> str:
    if dtype == torch.float32:
        return "f32"
    if dtype == torch.float16:
        return "f16"
    raise TypeError(f"the CUDA backend supports float32 and float16, not {dtype}")


def _stream():
    import cupy

    return cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)


def _launch(module: str, fn: str, grid, block, args) -> None:
    """Launch kernel ``fn`` of ``kernels/<module>.cu`` on torch's current stream. ``args``:
    tensors (passed as device pointers), None (a null pointer) or numpy scalars of the kernel's
    parameter types. The one place that touches CuPy at run time (tests/kernel_emulator.py stands
    in for it on machines without a GPU)."""
    ptrs = tuple(np.uint64(0) if a is None else np.uint64(a.data_ptr())
                 if isinstance(a, torch.Tensor) else a for a in args)
    with _stream():
        _module(module).get_function(fn)(tuple(grid), tuple(block), ptrs)


def _windows(mask: StepMask, device):
    # the mask's tensors already live on the data's device (copied once per batch)
    return mask.offsets.to(device=device, dtype=torch.long).contiguous(), \
        mask.counts.to(device=device, dtype=torch.long).contiguous()


def _grouped_gemm(a, b, c, mask, *, mode, m, n, k, a_s, b_s, c_s, accumulate=False):
    """C_g (M x N) (+)= A_g (M x K) B_g (K x N) for every group g, in one launch.

    ``*_s`` = (group stride, window-offset stride, row stride, column stride) in elements;
    ``mode`` bits 1/2/4: M/N/K is the group's kept count (m/n/k give the maximum otherwise)."""
    off, cnt = _windows(mask, a.device)
    kmax = mask.kmax
    rows = kmax if mode & 1 else m
    cols = kmax if mode & 2 else n
    grid = ((cols + TILE - 1) // TILE, (rows + TILE - 1) // TILE, mask.groups)
    name = ("grouped_gemm_acc_" if accumulate else "grouped_gemm_") + _suffix(a.dtype)
    args = [a, b, c, off, cnt, *map(np.int32, (mode, m, n, k)),
            *map(np.int64, (*a_s, *b_s, *c_s))]
    _launch("grouped_gemm", name, grid, (TILE, TILE // ROWS_PER_THREAD), args)


# The six grouped GEMMs of kernels/grouped_gemm.cu's table, each ONE launch for all groups.
# ``w`` is ``WindowedWeight.ext`` (permuted once per batch); weight gradients accumulate into a
# float32 buffer ``dw``.

def consumer_fwd(xc, w, mask: StepMask):
    xc = xc.contiguous()
    g, b, kmax = xc.shape
    n = w.shape[0]
    y = new_output(xc, (g, b, n), mask, False)
    _grouped_gemm(xc, w, y, mask, mode=4, m=b, n=n, k=kmax,
                  a_s=(b * kmax, 0, kmax, 1), b_s=(0, 1, 1, w.stride(0)), c_s=(b * n, 0, n, 1))
    return y


def consumer_dx(dy, w, mask: StepMask):
    dy = dy.contiguous()
    g, b, n = dy.shape
    kmax = mask.kmax
    dxc = new_output(dy, (g, b, kmax), mask, True)
    _grouped_gemm(dy, w, dxc, mask, mode=2, m=b, n=kmax, k=n,
                  a_s=(b * n, 0, n, 1), b_s=(0, 1, w.stride(0), 1), c_s=(b * kmax, 0, kmax, 1))
    return dxc


# The weight gradients' kernel: "atomic" = the grouped GEMM accumulating with atomicAdd (passed
# its GPU tests on an H200); "tiles" = window_dw, atomic-free and deterministic (each block owns a
# dW tile and loops over the groups whose window meets it): compiled by nvcc and emulated in the
# tests, not yet run on a GPU. bench/gpu_check.sh tests and times both.
DW_KERNELS = ("atomic", "tiles")
DW_KERNEL = "atomic"


def _window_dw(q, p, dw, mask, *, u_len, v_len, dw_u, dw_v):
    """dW[u, v] += sum_g Q[g][:, u - off[g]]^T P[g][:, v] over each group's window, one launch."""
    q, p = q.contiguous(), p.contiguous()
    off, cnt = _windows(mask, q.device)
    groups, rows = q.shape[0], q.shape[1]
    grid = ((v_len + TILE - 1) // TILE, (u_len + TILE - 1) // TILE, 1)
    args = [q, p, dw, off, cnt, *map(np.int32, (groups, rows, u_len, v_len)),
            *map(np.int64, (q.stride(0), q.stride(1), p.stride(0), p.stride(1), dw_u, dw_v))]
    _launch("grouped_gemm", "window_dw_" + _suffix(q.dtype), grid, (TILE, TILE // ROWS_PER_THREAD),
            args)


def consumer_dw(dy, xc, mask: StepMask, dw) -> None:
    if DW_KERNEL == "tiles":
        return _window_dw(xc, dy, dw, mask, u_len=dw.shape[1], v_len=dw.shape[0],
                          dw_u=dw.stride(1), dw_v=dw.stride(0))
    dy, xc = dy.contiguous(), xc.contiguous()
    g, b, kmax = xc.shape
    n = dy.shape[2]
    _grouped_gemm(dy, xc, dw, mask, mode=2, m=n, n=kmax, k=b,
                  a_s=(b * n, 0, 1, n), b_s=(b * kmax, 0, kmax, 1),
                  c_s=(0, 1, dw.stride(0), 1), accumulate=True)


def producer_fwd(x, w, mask: StepMask):
    x = x.contiguous()
    g, b, i = x.shape
    kmax, ws = mask.kmax, w.stride(0)
    yc = new_output(x, (g, b, kmax), mask, True)
    _grouped_gemm(x, w, yc, mask, mode=2, m=b, n=kmax, k=i,
                  a_s=(b * i, 0, i, 1), b_s=(0, ws, 1, ws), c_s=(b * kmax, 0, kmax, 1))
    return yc


def producer_dx(dyc, w, mask: StepMask):
    dyc = dyc.contiguous()
    g, b, kmax = dyc.shape
    i, ws = w.shape[1], w.stride(0)
    dx = new_output(dyc, (g, b, i), mask, False)
    _grouped_gemm(dyc, w, dx, mask, mode=4, m=b, n=i, k=kmax,
                  a_s=(b * kmax, 0, kmax, 1), b_s=(0, ws, ws, 1), c_s=(b * i, 0, i, 1))
    return dx


def producer_dw(dyc, x, mask: StepMask, dw) -> None:
    if DW_KERNEL == "tiles":
        return _window_dw(dyc, x, dw, mask, u_len=dw.shape[0], v_len=dw.shape[1],
                          dw_u=dw.stride(0), dw_v=dw.stride(1))
    dyc, x = dyc.contiguous(), x.contiguous()
    g, b, kmax = dyc.shape
    i = x.shape[2]
    _grouped_gemm(dyc, x, dw, mask, mode=1, m=kmax, n=i, k=b,
                  a_s=(b * kmax, 0, 1, kmax), b_s=(b * i, 0, i, 1),
                  c_s=(0, dw.stride(0), dw.stride(0), 1), accumulate=True)


_GEMMS = sys.modules[__name__]


@autocast_op
def compact_matmul(xc: torch.Tensor, ww, mask: StepMask) -> torch.Tensor:
    return consumer(_GEMMS, xc, ww, mask)


@autocast_op
def matmul_compact(x: torch.Tensor, ww, mask: StepMask) -> torch.Tensor:
    return producer(_GEMMS, x, ww, mask)


def _launch_pointwise(fn: str, dtype, rows: int, h: int, args):
    threads = 256
    _launch("lstm_pointwise", f"{fn}_{_suffix(dtype)}", ((rows * h + threads - 1) // threads,),
            (threads,), [*args, np.int32(rows), np.int32(h)])


class _LSTMSequence(Function):
    """Same math as the torch backend's: cuBLAS for ``h W_hh^T``, one fused kernel per step."""

    @staticmethod
    def forward(ctx, gx, w_hh, h0, c0, valid):
        steps, d, b, four_h = gx.shape
        h = four_h // 4
        rows = d * b
        w_t = w_hh.transpose(1, 2)
        acts = gx.new_empty(steps, d, b, four_h)
        c_new = gx.new_empty(steps, d, b, h)
        hs = gx.new_empty(steps + 1, d, b, h)
        cs = gx.new_empty(steps + 1, d, b, h)
        outs = gx.new_empty(steps, d, b, h)
        hs[0], cs[0] = h0, c0
        v = None if valid is None else valid.to(torch.uint8).expand(steps, d, b, 1).contiguous()
        for t in range(steps):
            gates = torch.baddbmm(gx[t], hs[t], w_t).contiguous()
            _launch_pointwise("lstm_fwd", gx.dtype, rows, h, [
                gates, cs[t], hs[t], None if v is None else v[t],
                acts[t], c_new[t], cs[t + 1], hs[t + 1], outs[t]])
        ctx.save_for_backward(w_hh, acts, c_new, cs, hs,
                              v if v is not None else torch.empty(0, device=gx.device))
        ctx.has_valid = valid is not None
        return outs, hs[steps].clone(), cs[steps].clone()

    @staticmethod
    def backward(ctx, d_outs, d_hT, d_cT):
        w_hh, acts, c_new, cs, hs, v = ctx.saved_tensors
        steps, d, b, four_h = acts.shape
        h = four_h // 4
        rows = d * b
        dh = torch.zeros(d, b, h, dtype=torch.float32, device=acts.device)
        dc = torch.zeros_like(dh)
        if d_hT is not None:
            dh += d_hT
        if d_cT is not None:
            dc += d_cT
        d_outs = None if d_outs is None else d_outs.contiguous().to(acts.dtype)
        dgates = torch.empty_like(acts)
        for t in range(steps - 1, -1, -1):
            _launch_pointwise("lstm_bwd", acts.dtype, rows, h, [
                acts[t], c_new[t], cs[t], v[t] if ctx.has_valid else None,
                None if d_outs is None else d_outs[t], dh, dc, dgates[t]])
            if acts.dtype == torch.float32:
                dh.baddbmm_(dgates[t], w_hh)
            else:
                dh += torch.bmm(dgates[t], w_hh.to(acts.dtype)).float()
        d_whh = None
        if ctx.needs_input_grad[1]:
            dg_all = dgates.permute(1, 3, 0, 2).reshape(d, four_h, -1)
            hp_all = hs[:steps].permute(1, 0, 2, 3).reshape(d, -1, h)
            d_whh = torch.bmm(dg_all, hp_all).to(w_hh.dtype)
        return dgates, d_whh, dh.to(hs.dtype), dc.to(cs.dtype), None


@autocast_op
def lstm_sequence(gx, w_hh, h0, c0, valid=None):
    v = None if valid is None else valid[:, None, :, None]
    return _LSTMSequence.apply(gx.contiguous(), w_hh, h0.contiguous(), c0.contiguous(), v)


class _LSTMCell(Function):
    """One step: cuBLAS for ``gx + h W_hh^T``, one fused point-wise kernel each way."""

    @staticmethod
    def forward(ctx, gx, w_hh, h, c):
        b, four_h = gx.shape
        gates = torch.addmm(gx, h, w_hh.t())
        acts = torch.empty_like(gates)
        c1, h1 = torch.empty_like(c), torch.empty_like(h)
        # no length mask: c_new and the next cell are the same tensor, as are h and the output
        _launch_pointwise("lstm_fwd", gx.dtype, b, four_h // 4, [
            gates, c, h, None, acts, c1, c1, h1, h1])
        ctx.save_for_backward(w_hh, acts, h, c, c1)
        return h1, c1

    @staticmethod
    def backward(ctx, dh1, dc1):
        w_hh, acts, h, c, c1 = ctx.saved_tensors
        b, four_h = acts.shape
        dh = torch.zeros(b, four_h // 4, dtype=torch.float32, device=acts.device) \
            if dh1 is None else dh1.float().clone()
        dc = torch.zeros_like(dh) if dc1 is None else dc1.float().clone()
        dgates = torch.empty_like(acts)
        _launch_pointwise("lstm_bwd", acts.dtype, b, four_h // 4, [
            acts, c1, c, None, None, dh, dc, dgates])
        d_whh = (dgates.t() @ h).to(w_hh.dtype) if ctx.needs_input_grad[1] else None
        dh = torch.addmm(dh, dgates.float(), w_hh.float()) if acts.dtype != torch.float32 \
            else dh.addmm_(dgates, w_hh)
        return dgates, d_whh, dh.to(h.dtype), dc.to(c.dtype)


@autocast_op
def lstm_cell(gx, w_hh, h, c):
    return _LSTMCell.apply(gx.contiguous(), w_hh, h.contiguous(), c.contiguous())
