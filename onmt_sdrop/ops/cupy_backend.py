"""CUDA backend: the grouped window GEMMs and the fused LSTM step as CuPy RawKernels.

Same contracts as :mod:`onmt_sdrop.ops.torch_backend` (and tested against it). Each compacted
GEMM is ONE launch for all groups (``grid.z`` = groups), reading its kept weights as a contiguous
window of the weight permuted once per batch; weight gradients accumulate in float32. The
recurrence keeps its dense ``h W_hh^T`` on cuBLAS (through torch) and fuses the point-wise LSTM
math, forward and backward, into one kernel per step. Kernel sources: ``onmt_sdrop/kernels/*.cu``.
Inputs may be float32, float16 or bfloat16. Which kernels run the grouped GEMMs is one switch,
:data:`GEMM_KERNEL` (with :data:`DW_KERNEL` for the weight gradients), see below.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.autograd import Function

from ..masks import StepMask
from .amp import autocast_op
from .common import (accumulate_mm, consumer, gather, new_output, permute_weight,  # noqa: F401
                     producer, scatter)

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
TILE, ROWS_PER_THREAD = 32, 8


@functools.lru_cache(maxsize=None)
def _module(name: str):
    import cupy

    src = (KERNELS / f"{name}.cu").read_text()
    return cupy.RawModule(code=src, options=("--std=c++17",), name_expressions=None)


SUFFIXES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def _suffix(dtype) -> str:
    try:
        return SUFFIXES[dtype]
    except KeyError:
        raise TypeError(f"the CUDA backend supports float32, float16 and bfloat16, not {dtype}") \
            from None


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


# ---------------------------------------------------------------- which GEMM kernel
#
# GEMM_KERNEL picks the kernels of the six grouped GEMMs (one switch for the whole backend):
#   "simt"   kernels/grouped_gemm.cu: 32x32 SIMT tiles (passed its GPU tests on an H200).
#   "tiled"  kernels/gemm_fast.cu gemm_tiled_*: true-FP32 SIMT, 64x64 block tiles, 4x4 outputs
#            per thread, double-buffered shared memory, for every dtype.
#   "wide"   kernels/gemm_fast.cu gemm_wide_*: true-FP32 SIMT for large shapes, 128x128 block
#            tiles, 8x8 outputs per thread, for every dtype; NOT run on a GPU yet (untimed).
#   "tensor" kernels/gemm_fast.cu gemm_tc_*: fp16 / bf16 on the tensor cores (mma.sync, float
#            accumulation), 64x64 tiles, double-buffered; fp32 uses TF32 tensor cores only when
#            the user allowed TF32 (torch.backends.cuda.matmul.allow_tf32), else "tiled".
#   "cublas" forward and dX with one kept count for all groups (the default masks): ONE
#            cuBLAS GemmBatchedEx over pointer arrays built on the device from the mask's offsets
#            (no host sync), through torch's cuBLAS handle, so CUDA graphs capture it; every other
#            case as "tensor". fp16, bf16 and TF32 only when every matrix is 16-byte aligned:
#            cuBLAS's tensor-core kernels need it, and by default a window starts at any unit
#            (fp16 ended in "misaligned address" on an H100,
#            bench/results/logs/gpu-tests-2026-11-28.log); -sdrop_window_align 8 aligns them
#            (judged by the mask's alignment, which every refill keeps; not run on a GPU yet).
# DW_KERNEL picks the weight-gradient form: "atomic" = the chosen family's grouped GEMM
# accumulating with atomicAdd; "tiles" = its window_dw (atomic-free and deterministic: each
# block owns a dW tile and loops over the groups whose window meets it); "cublas" = ONE cuBLAS
# GEMM over all groups (torch.mm) on the compact operand spread back to full width with zeros
# at the dropped units: the dense GEMM's work (the windows overlap, so no batched call can skip
# the dropped units), but cuBLAS's speed; atomic-free, deterministic, captured by graphs.
# On an H200 (bench/results/logs/gpu-tests-2026-11-27.log) every choice of 2026-11-27 passed its
# GPU tests ("wide", the ctypes cuBLAS transport and DW_KERNEL "cublas" came later);
# CPU machines check them through tests/kernel_emulator.py and tests/cuda_host.cpp. The default
# GEMM_KERNEL, "tensor", was the fastest capturable choice at every size and precision timed there
# (bench/results/gpu-2026-11-27.json; cuBLAS sgemmBatched, through CuPy then, which no graph
# could capture, was faster still for the large fp32 forward and dX). The default DW_KERNEL,
# "cublas", beat "tiles" on an H100 in fp32 (generator dW 0.92x of dense against 0.79x,
# attention output dW 0.65x against 0.37x; bench/results/gpu-2026-11-28-h100-micro.json) and
# passed the GPU tests with every GEMM family in fp32, fp16 and bf16; its fp16 speed is not
# measured yet.
# The environment variables SDROP_GEMM_KERNEL / SDROP_DW_KERNEL set them for a whole run (e.g.
# onmt_train) without code.
GEMM_KERNELS = ("simt", "tiled", "wide", "tensor", "cublas")
DW_KERNELS = ("atomic", "tiles", "cublas")
GEMM_KERNEL = os.environ.get("SDROP_GEMM_KERNEL", "tensor")
DW_KERNEL = os.environ.get("SDROP_DW_KERNEL", "cublas")
if GEMM_KERNEL not in GEMM_KERNELS or DW_KERNEL not in DW_KERNELS:
    raise ValueError(f"SDROP_GEMM_KERNEL must be one of {GEMM_KERNELS} and SDROP_DW_KERNEL one "
                     f"of {DW_KERNELS}, got {GEMM_KERNEL!r}, {DW_KERNEL!r}")


class _Family(NamedTuple):
    module: str
    gemm: str      # kernel name prefixes; the dtype suffix follows
    acc: str
    window_dw: str
    suffix: str
    tile: int      # output tile edge of one block (rows and columns)
    block: tuple


_SIMT = ("grouped_gemm", "grouped_gemm_", "grouped_gemm_acc_", "window_dw_")
_TILED = ("gemm_fast", "gemm_tiled_", "gemm_tiled_acc_", "window_dw_tiled_")
_WIDE = ("gemm_fast", "gemm_wide_", "gemm_wide_acc_", "window_dw_wide_")
_TENSOR = ("gemm_fast", "gemm_tc_", "gemm_tc_acc_", "window_dw_tc_")


def tf32_allowed() -> bool:
    """Whether the user let float32 matmuls use TF32 (torch leaves it off)."""
    m = torch.backends.cuda.matmul
    try:
        return bool(m.allow_tf32)
    except RuntimeError:   # torch refuses the legacy flag once the new API was used
        return getattr(m, "fp32_precision", "") == "tf32"


@functools.lru_cache(maxsize=None)
def _has_tensor_cores(index) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 8   # mma.sync m16n8k16 / tf32


def _family(dtype, device, kernel=None) -> _Family:
    """The kernels ``kernel`` (default GEMM_KERNEL) runs for inputs of ``dtype`` on ``device``."""
    kernel = kernel or GEMM_KERNEL
    if kernel not in GEMM_KERNELS:
        raise ValueError(f"GEMM_KERNEL must be one of {GEMM_KERNELS}, got {kernel!r}")
    suffix = _suffix(dtype)
    if kernel in ("tensor", "cublas"):
        capable = device.type != "cuda" or _has_tensor_cores(device.index)
        if capable and dtype != torch.float32:
            return _Family(*_TENSOR, suffix, 64, (128, 1, 1))
        if capable and tf32_allowed():
            return _Family(*_TENSOR, "tf32", 64, (128, 1, 1))
        kernel = "tiled"
    if kernel == "tiled":
        return _Family(*_TILED, suffix, 64, (16, 16, 1))
    if kernel == "wide":
        return _Family(*_WIDE, suffix, 128, (16, 16, 1))
    return _Family(*_SIMT, suffix, TILE, (TILE, TILE // ROWS_PER_THREAD, 1))


def _grouped_gemm(a, b, c, mask, *, mode, m, n, k, a_s, b_s, c_s, accumulate=False):
    """C_g (M x N) (+)= A_g (M x K) B_g (K x N) for every group g, in one launch.

    ``*_s`` = (group stride, window-offset stride, row stride, column stride) in elements;
    ``mode`` bits 1/2/4: M/N/K is the group's kept count (m/n/k give the maximum otherwise)."""
    if GEMM_KERNEL == "cublas" and not accumulate and _cublas_grouped(
            a, b, c, mask, mode=mode, m=m, n=n, k=k, a_s=a_s, b_s=b_s, c_s=c_s):
        return
    fam = _family(a.dtype, a.device)
    off, cnt = _windows(mask, a.device)
    kmax = mask.kmax
    rows = kmax if mode & 1 else m
    cols = kmax if mode & 2 else n
    grid = (-(-cols // fam.tile), -(-rows // fam.tile), mask.groups)
    parts = 1 if accumulate else _k_parts(grid, mode, k, a_s, b_s, c_s)
    if parts > 1:
        return _split_k(a, b, c, off, cnt, fam, grid, parts, mode=mode, m=m, n=n, k=k, a_s=a_s,
                        b_s=b_s, rows=rows, cols=cols)
    name = (fam.acc if accumulate else fam.gemm) + fam.suffix
    args = [a, b, c, off, cnt, *map(np.int32, (mode, m, n, k)),
            *map(np.int64, (*a_s, *b_s, *c_s))]
    _launch(fam.module, name, grid, fam.block, args)


# ---------------------------------------------------------------- split K
#
# One group's GEMM with a small output (the input-feed decoder's per-step calls: the feed's dX,
# 64 x 350 with K = 2,000, is 6 tiles of 64 x 64) fills a handful of the GPU's SMs and runs the
# whole K loop in each: on an H100 the per-step kernels took 90 us each on average (241 a step,
# 21.6 of 35.4 ms; bench/results/gpu-2026-11-28-h100-e2e.json). Split K into parts, each part one
# group of the same launch (grid.z), into a buffer of partial products, then sum the parts:
# more blocks, a shorter K loop each, deterministic. The parts of a window K (mode bit 4) are
# windows of their own (offset + s * ks, count clipped); a full K is split into equal parts.
SPLIT_K_BLOCKS = 96     # split when one group has fewer output tiles than this (132 SMs on an H100)
SPLIT_K_MIN = 128       # ... into parts of at least this much K
SPLIT_K_MAX = 16


def _k_parts(grid, mode, k, a_s, b_s, c_s) -> int:
    """How many parts to split K of a grouped GEMM with ``grid`` into (1: none). Only the
    layouts of the forward and dX GEMMs: the window moves B alone, along N (mode 2) or along K
    (mode 4: B's window stride is its K stride)."""
    tiles = grid[0] * grid[1]
    if grid[2] != 1 or tiles >= SPLIT_K_BLOCKS or mode not in (2, 4) or a_s[1] or c_s[1] \
            or (mode == 4 and b_s[1] != b_s[2]):
        return 1
    most = min(SPLIT_K_MAX, -(-SPLIT_K_BLOCKS // tiles), k // SPLIT_K_MIN)
    if mode & 4:        # K is the window: any number of parts, the last one shorter
        return max(1, most)
    return next((p for p in range(most, 1, -1) if k % p == 0), 1)   # equal parts of K


def _split_k(a, b, c, off, cnt, fam, grid, parts, *, mode, m, n, k, a_s, b_s, rows, cols):
    """``c`` (one group) = the sum over ``parts`` parts of K, each a group of one launch."""
    ks = -(-k // parts)
    _, a_o, a_rs, a_cs = a_s
    _, b_o, b_rs, b_cs = b_s
    if mode & 4:        # part s: window positions [s * ks, s * ks + ks) of the group's count
        start = torch.arange(parts, device=off.device, dtype=off.dtype) * ks
        off_p, cnt_p = (off + start).contiguous(), (cnt - start).clamp(0, ks).contiguous()
        b_step = 0      # B's K axis is the window axis: the part's offset moves it
    else:
        off_p, cnt_p = off.expand(parts).contiguous(), cnt.expand(parts).contiguous()
        b_step = ks * b_rs
    part = torch.zeros(parts, rows, cols, dtype=c.dtype, device=c.device)
    args = [a, b, part, off_p, cnt_p, *map(np.int32, (mode, m, n, ks)),
            *map(np.int64, (ks * a_cs, a_o, a_rs, a_cs, b_step, b_o, b_rs, b_cs,
                            rows * cols, 0, cols, 1))]
    _launch(fam.module, fam.gemm + fam.suffix, (grid[0], grid[1], parts), fam.block, args)
    torch.sum(part, 0, keepdim=True, out=c)


# ---------------------------------------------------------------- one group: its window gathered
#
# ONE_GROUP_GEMM picks how the forward and dX GEMMs of ONE group run (the input-feed decoder's
# per-step calls; on an H100 our kernels took 90 us per call there, 241 calls and 21.6 of 35.4 ms
# a step, where cuBLAS took 9-24 us for dense's per-step GEMMs; bench/results/
# gpu-2026-11-28-h100-e2e.json): "gather" copies the group's kept rows or columns of ``ext`` into a
# contiguous block, by the mask's device-side positions (so a CUDA graph's refill moves it; only
# the count is read on the host, and graphs take fixed counts only), and runs torch's own GEMM on
# it: cuBLAS, any dtype, aligned whatever the window, TF32 as the user set. "kernel" runs
# GEMM_KERNEL (with split K, below). Not measured on a GPU yet: bench/gpu_check.sh's training
# runs compare both.
ONE_GROUP_GEMMS = ("gather", "kernel")
ONE_GROUP_GEMM = os.environ.get("SDROP_ONE_GROUP_GEMM", "gather")
if ONE_GROUP_GEMM not in ONE_GROUP_GEMMS:
    raise ValueError(f"SDROP_ONE_GROUP_GEMM must be one of {ONE_GROUP_GEMMS}, "
                     f"got {ONE_GROUP_GEMM!r}")


def _gathered(mask: StepMask):
    """The kept count of a one-group ``mask`` whose GEMMs ONE_GROUP_GEMM "gather" runs, else
    None."""
    if ONE_GROUP_GEMM != "gather" or mask.groups != 1:
        return None
    return mask.windows[0][1]


def _window_of(w: torch.Tensor, mask: StepMask, dim: int, k: int) -> torch.Tensor:
    """The one group's ``k`` kept slices of ``w`` (``ext``) along ``dim``, as a contiguous copy."""
    return w.index_select(dim, mask.window_positions()[0, :k])


# ---------------------------------------------------------------- cuBLAS pointer arrays
#
# Through torch's own cuBLAS handle (ctypes), not CuPy's: torch binds that handle to its current
# stream, gives it a workspace of its caching allocator and sets its math mode from the user's
# TF32 choice at every torch.cuda.current_blas_handle(), so a call is captured by a CUDA graph as
# torch's own matmuls are (CuPy refuses cuBLAS calls during a capture).

# library_types.h / cublas_api.h enum values
CUDA_TYPES = {torch.float32: 0, torch.float16: 2, torch.bfloat16: 14}
CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT = 68, -1
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1


@functools.lru_cache(maxsize=None)
def _gemm_batched_ex():
    """``cublasGemmBatchedEx`` of the cuBLAS library torch itself loaded (found in this process's
    memory map, so it is the very library whose handle torch hands out)."""
    import ctypes
    import re

    torch.cuda.current_blas_handle()     # loads torch's cuBLAS if nothing has yet
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if re.search(r"/libcublas\.so[.0-9]*$",
                                                                line.strip())}
    if not paths:
        raise RuntimeError("torch's cuBLAS library is not loaded in this process")
    fn = ctypes.CDLL(sorted(paths)[0]).cublasGemmBatchedEx
    p, i = ctypes.c_void_p, ctypes.c_int
    fn.argtypes = [p, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i, i]
    fn.restype = i
    return fn


def _cublas_batched(ptrs, operands, *, transa, transb, m, n, k, lda, ldb, ldc, alpha=1.0,
                    beta=0.0) -> None:
    """cuBLAS ``GemmBatchedEx`` (column-major ``C_i = alpha op(A_i) op(B_i) + beta C_i``, float
    accumulation, operands of one dtype: fp32, or fp16 / bf16 with every matrix 16-byte aligned)
    on torch's current stream;
    ``ptrs`` = (A, B, C) pointer arrays, int64 tensors on the device; ``operands`` = the tensors
    they point into (tests/kernel_emulator.py reads through the pointers into them). The one place
    that calls cuBLAS directly."""
    dtype = operands[2].dtype
    kind = CUDA_TYPES[dtype]
    a_p, b_p, c_p = ptrs
    al, be = np.array(alpha, np.float32), np.array(beta, np.float32)
    handle = torch.cuda.current_blas_handle()   # bound to the current stream, TF32 as the user set
    status = _gemm_batched_ex()(handle, transa, transb, m, n, k, al.ctypes.data, a_p.data_ptr(),
                                kind, lda, b_p.data_ptr(), kind, ldb, be.ctypes.data,
                                c_p.data_ptr(), kind, ldc, a_p.numel(), CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT)
    if status:
        raise RuntimeError(f"cublasGemmBatchedEx failed with status {status} ({dtype}, m {m}, "
                           f"n {n}, k {k}, batch {a_p.numel()})")


def _pointers(t: torch.Tensor, off: torch.Tensor, g_stride: int, o_stride: int) -> torch.Tensor:
    """Addresses ``t + g * g_stride + off[g] * o_stride`` (in elements), int64, on the device:
    two small kernels (the H100 profile showed the five of the first version, times three
    operands, at 3 ms and 3,000 launches a training step)."""
    size, base = t.element_size(), t.data_ptr()
    if g_stride:
        step = g_stride * size
        rows = torch.arange(base, base + off.numel() * step, step, device=off.device,
                            dtype=torch.long)
        return torch.add(rows, off, alpha=o_stride * size)
    return torch.mul(off, o_stride * size).add_(base)


def _blas_operand(rs, cs, rows, cols):
    """(op, leading dimension) of a row-major ``rows x cols`` operand with strides ``(rs, cs)`` as
    cuBLAS's column-major operand of the transposed product, or None if cuBLAS cannot read it."""
    if cs == 1 and rs >= max(1, cols):
        return CUBLAS_OP_N, rs      # its transpose stored column-major
    if rs == 1 and cs >= max(1, rows):
        return CUBLAS_OP_T, cs      # itself stored column-major
    return None


def _on_16_bytes(t: torch.Tensor, g_stride: int, o_stride: int, mask: StepMask, ld: int) -> bool:
    """Whether every matrix :func:`_pointers` makes of ``t`` starts on 16 bytes and its leading
    dimension ``ld`` is a multiple of 16 bytes, for ANY offsets the mask may hold: those of its
    sampling's ``align``, not the host-side ones, which a CUDA graph's refill leaves stale (a
    capture on offsets aligned by chance would replay on unaligned ones)."""
    size = t.element_size()
    return (t.data_ptr() % 16 == 0 and g_stride * size % 16 == 0 and ld * size % 16 == 0
            and mask.align * o_stride * size % 16 == 0)


def _cublas_grouped(a, b, c, mask, *, mode, m, n, k, a_s, b_s, c_s) -> bool:
    """The grouped GEMM as one batched cuBLAS call when every group keeps the same number of units
    (then every group has the same M, N, K and only base pointers differ); False (nothing done)
    when it does not apply: counts differ or are zero, a layout cuBLAS cannot express, or, for
    its tensor-core kernels (fp16, bf16, TF32), a matrix off 16 bytes (windows at any unit; see
    ``-sdrop_window_align``)."""
    if not (a.dtype == b.dtype == c.dtype and c.dtype in CUDA_TYPES):
        return False
    counts = {cnt for _, cnt in mask.windows}   # host-side windows: no device read
    if len(counts) != 1 or 0 in counts:
        return False
    kk = counts.pop()
    M, N, K = (kk if mode & 1 else m), (kk if mode & 2 else n), (kk if mode & 4 else k)
    a_g, a_o, a_rs, a_cs = a_s
    b_g, b_o, b_rs, b_cs = b_s
    c_g, c_o, c_rs, c_cs = c_s
    # row-major C (M x N) = A B is column-major C^T (N x M) = B^T A^T
    if c_cs != 1 or c_rs < max(1, N):
        return False
    op_b, op_a = _blas_operand(b_rs, b_cs, K, N), _blas_operand(a_rs, a_cs, M, K)
    if op_b is None or op_a is None:
        return False
    (transa, lda), (transb, ldb) = op_b, op_a
    exact_fp32 = c.dtype == torch.float32 and not tf32_allowed()
    if not exact_fp32 and not all(_on_16_bytes(t, g, o, mask, ld) for t, g, o, ld in (
            (b, b_g, b_o, lda), (a, a_g, a_o, ldb), (c, c_g, c_o, c_rs))):
        return False
    off, _ = _windows(mask, a.device)
    ptrs = (_pointers(b, off, b_g, b_o), _pointers(a, off, a_g, a_o), _pointers(c, off, c_g, c_o))
    _cublas_batched(ptrs, (b, a, c), transa=transa, transb=transb, m=N, n=M, k=K, lda=lda,
                    ldb=ldb, ldc=c_rs)
    return True


# The six grouped GEMMs of kernels/grouped_gemm.cu's table, each ONE launch for all groups.
# ``w`` is ``WindowedWeight.ext`` (permuted once per batch); weight gradients accumulate into a
# float32 buffer ``dw``.

def consumer_fwd(xc, w, mask: StepMask):
    xc = xc.contiguous()
    g, b, kmax = xc.shape
    n = w.shape[0]
    y = new_output(xc, (g, b, n), mask, False)
    k = _gathered(mask)
    if k is not None:
        if k:   # none kept: y is zeros
            torch.mm(xc[0, :, :k], _window_of(w, mask, 1, k).t(), out=y[0])
        return y
    _grouped_gemm(xc, w, y, mask, mode=4, m=b, n=n, k=kmax,
                  a_s=(b * kmax, 0, kmax, 1), b_s=(0, 1, 1, w.stride(0)), c_s=(b * n, 0, n, 1))
    return y


def consumer_dx(dy, w, mask: StepMask):
    dy = dy.contiguous()
    g, b, n = dy.shape
    kmax = mask.kmax
    dxc = new_output(dy, (g, b, kmax), mask, True)
    k = _gathered(mask)
    if k is not None:
        if k:   # the columns past k stay zero
            torch.mm(dy[0], _window_of(w, mask, 1, k), out=dxc[0, :, :k])
        return dxc
    _grouped_gemm(dy, w, dxc, mask, mode=2, m=b, n=kmax, k=n,
                  a_s=(b * n, 0, n, 1), b_s=(0, 1, w.stride(0), 1), c_s=(b * kmax, 0, kmax, 1))
    return dxc


def _window_dw(q, p, dw, mask, *, u_len, v_len, dw_u, dw_v):
    """dW[u, v] += sum_g Q[g][:, u - off[g]]^T P[g][:, v] over each group's window, one launch."""
    q, p = q.contiguous(), p.contiguous()
    fam = _family(q.dtype, q.device)
    off, cnt = _windows(mask, q.device)
    groups, rows = q.shape[0], q.shape[1]
    grid = (-(-v_len // fam.tile), -(-u_len // fam.tile), 1)
    args = [q, p, dw, off, cnt, *map(np.int32, (groups, rows, u_len, v_len)),
            *map(np.int64, (q.stride(0), q.stride(1), p.stride(0), p.stride(1), dw_u, dw_v))]
    _launch(fam.module, fam.window_dw + fam.suffix, grid, fam.block, args)


def _spread(xc, mask: StepMask) -> torch.Tensor:
    """Compact ``(G, B, kmax)`` -> ``(G * B, H)`` in the permuted order of ``ext``: column ``j`` of
    group ``g`` at ``(offsets[g] + j) % H``, zeros at the dropped units and for padding columns
    (``kmax <= H``, so one group's positions are distinct)."""
    g, b, kmax = xc.shape
    _, cnt = _windows(mask, xc.device)
    kept = (torch.arange(kmax, device=xc.device) < cnt[:, None]).to(xc.dtype)[:, None, :]
    pos = mask.window_positions()[:, None, :].expand(g, b, kmax)
    return xc.new_zeros(g, b, mask.size).scatter_(2, pos, xc * kept).view(g * b, mask.size)


def consumer_dw(dy, xc, mask: StepMask, dw) -> None:
    if DW_KERNEL == "cublas":
        return accumulate_mm(dw[:, :mask.size], dy.reshape(-1, dy.shape[2]).t(),
                             _spread(xc, mask))
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
    k = _gathered(mask)
    if k is not None:
        if k:
            torch.mm(x[0], _window_of(w, mask, 0, k).t(), out=yc[0, :, :k])
        return yc
    _grouped_gemm(x, w, yc, mask, mode=2, m=b, n=kmax, k=i,
                  a_s=(b * i, 0, i, 1), b_s=(0, ws, 1, ws), c_s=(b * kmax, 0, kmax, 1))
    return yc


def producer_dx(dyc, w, mask: StepMask):
    dyc = dyc.contiguous()
    g, b, kmax = dyc.shape
    i, ws = w.shape[1], w.stride(0)
    dx = new_output(dyc, (g, b, i), mask, False)
    k = _gathered(mask)
    if k is not None:
        if k:
            torch.mm(dyc[0, :, :k], _window_of(w, mask, 0, k), out=dx[0])
        return dx
    _grouped_gemm(dyc, w, dx, mask, mode=4, m=b, n=i, k=kmax,
                  a_s=(b * kmax, 0, kmax, 1), b_s=(0, ws, ws, 1), c_s=(b * i, 0, i, 1))
    return dx


def producer_dw(dyc, x, mask: StepMask, dw) -> None:
    if DW_KERNEL == "cublas":
        return accumulate_mm(dw[:mask.size], _spread(dyc, mask).t(), x.reshape(-1, x.shape[2]))
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
