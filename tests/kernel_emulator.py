"""A CPU stand-in for the CUDA launches of :mod:`onmt_sdrop.ops.cupy_backend`.

``launch`` takes exactly what ``cupy_backend._launch`` would hand to CuPy (kernel name, grid,
block, tensors for pointers, numpy scalars) and carries out the contract written at the top of
each ``onmt_sdrop/kernels/*.cu``, reading and writing memory through the same pointers, strides
and extents the kernel would. So on every machine the Python half of the CUDA backend (argument
order, strides, modes, grid sizes, dtypes, in-place protocols) runs against the torch backend;
the CUDA half is compiled by nvcc here and checked against the torch backend on a GPU.
Out-of-bounds addresses and grids that miss part of the output fail loudly.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from onmt_sdrop.ops import torch_backend

TILE, GEMM_BLOCK = 32, (32, 4, 1)
# kernel name suffix -> input dtype ("tf32": float32 inputs rounded to TF32 by the tensor cores)
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
          "tf32": torch.float32}
# the GEMM kernel families: (module, name prefixes) -> (output tile edge of a block, block shape)
FAMILIES = {
    ("grouped_gemm", ("grouped_gemm_", "window_dw_")): (TILE, GEMM_BLOCK),
    ("gemm_fast", ("gemm_tiled_", "window_dw_tiled_")): (64, (16, 16, 1)),
    ("gemm_fast", ("gemm_wide_", "window_dw_wide_")): (128, (16, 16, 1)),
    ("gemm_fast", ("gemm_tc_", "window_dw_tc_")): (64, (128, 1, 1)),
}


def launch(module: str, fn: str, grid, block, args) -> None:
    block = tuple(block) + (1,) * (3 - len(block))
    {"grouped_gemm": _grouped_gemm, "gemm_fast": _grouped_gemm,
     "lstm_pointwise": _lstm_pointwise}[module](module, fn, tuple(grid), block, list(args))


def _family(module: str, fn: str):
    """(tile, block, input dtype, tf32) of GEMM kernel ``fn`` of ``module``."""
    prefix, suffix = fn.rsplit("_", 1)
    base = prefix.replace("_acc", "") + "_"      # gemm_tc_acc_f16 -> gemm_tc_
    for (mod, prefixes), (tile, block) in FAMILIES.items():
        if mod == module and base in prefixes:
            tc = "_tc_" in base
            assert suffix in DTYPES and (suffix == "tf32") <= tc and (suffix != "f32" or not tc), \
                f"{fn}: no such dtype for this family"
            return tile, block, DTYPES[suffix], suffix == "tf32"
    raise AssertionError(f"no kernel {fn} in kernels/{module}.cu")


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32 (10 mantissa bits, to nearest, ties away: cvt.rna.tf32.f32)."""
    i = x.float().contiguous().view(torch.int32)
    return ((i + 0x1000) & -0x2000).view(torch.float32)


def cublas_batched(ptrs, operands, *, transa, transb, m, n, k, lda, ldb, ldc, alpha=1.0,
                   beta=0.0) -> None:
    """Stand-in for ``cupy_backend._cublas_batched`` (cuBLAS GemmBatchedEx, column-major, float
    accumulation): maps each device pointer back into the tensor it points into and checks what
    cuBLAS would need (one dtype it supports, leading dimensions, every matrix inside its
    tensor)."""
    from onmt_sdrop.ops import cupy_backend as cb

    a_p, b_p, c_p = ptrs
    a, b, c = operands
    assert a.dtype == b.dtype == c.dtype and c.dtype in cb.CUDA_TYPES, (a.dtype, b.dtype, c.dtype)
    for p in ptrs:
        assert p.dtype == torch.int64 and p.is_contiguous() and p.device == c.device
        assert p.numel() == a_p.numel()
    assert transa in (cb.CUBLAS_OP_N, cb.CUBLAS_OP_T) and transb in (cb.CUBLAS_OP_N,
                                                                     cb.CUBLAS_OP_T)
    # cuBLAS's own argument checks: ld >= rows of the stored column-major matrix
    assert lda >= max(1, m if transa == cb.CUBLAS_OP_N else k), (lda, m, k)
    assert ldb >= max(1, k if transb == cb.CUBLAS_OP_N else n), (ldb, k, n)
    assert ldc >= max(1, m), (ldc, m)

    if c.dtype != torch.float32:
        # cuBLAS's tensor-core kernels read 16-byte vectors: a matrix must start on 16 bytes and
        # its columns too (an H100 stopped with "misaligned address" on windows at odd units)
        for p in ptrs:
            assert all(int(v) % 16 == 0 for v in p.tolist()), "a matrix not on 16 bytes"
        assert all(ld * c.element_size() % 16 == 0 for ld in (lda, ldb, ldc)), (lda, ldb, ldc)

    def view(t, ptr, shape, strides):
        delta = int(ptr) - t.data_ptr()
        assert delta % t.element_size() == 0, "pointer not on an element"
        return _memory(t, delta // t.element_size(), shape, strides)

    a_st = (1, lda) if transa == cb.CUBLAS_OP_N else (lda, 1)
    b_st = (1, ldb) if transb == cb.CUBLAS_OP_N else (ldb, 1)
    for i in range(a_p.numel()):
        av = view(a, a_p[i], (m, k), a_st)
        bv = view(b, b_p[i], (k, n), b_st)
        cv = view(c, c_p[i], (m, n), (1, ldc))
        cv.copy_(alpha * (av.float() @ bv.float()) + (beta * cv.float() if beta else 0))


def use_cuda_backend(models, setattr_=setattr, launch_with=None) -> None:
    """Run ``-sdrop_backend cupy`` on this CPU: every kernel launch through ``launch_with`` (by
    default :func:`launch`), and ``models``, built with the torch backend (cupy is refused without
    a GPU), switched to the CUDA backend. ``setattr_`` is ``monkeypatch.setattr`` in tests."""
    from onmt_sdrop.ops import cupy_backend
    from onmt_sdrop.plugin import config

    setattr_(cupy_backend, "_launch", launch_with or launch)
    setattr_(cupy_backend, "_cublas_batched", cublas_batched)
    setattr_(config, "get_ops",
             lambda name, device: cupy_backend if name == "cupy" else torch_backend)
    for model in models:
        for mod in model.modules():
            if hasattr(mod, "sdrop"):
                mod.sdrop.backend = "cupy"


def _memory(t: torch.Tensor, offset: int, shape, strides) -> torch.Tensor:
    """The (shape, strides) view a kernel reads at ``pointer + offset`` (elements), checked to
    stay inside the tensor's own memory."""
    extent = sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1
    lo = offset + sum((n - 1) * s for n, s in zip(shape, strides) if s < 0)
    hi = offset + sum((n - 1) * s for n, s in zip(shape, strides) if s > 0)
    assert 0 <= lo and hi < extent, \
        f"kernel would address [{lo}, {hi}] of a {extent}-element buffer"
    return t.as_strided(shape, strides, t.storage_offset() + offset)


def _window_dw(module, fn, grid, block, args):
    """dW[u, v] += sum_g Q[g][:, u - off[g]]^T P[g][:, v] for off[g] <= u < off[g] + cnt[g]."""
    q, p, dw, off, cnt, groups, rows, u_len, v_len, q_g, q_b, p_g, p_b, dw_u, dw_v = args
    tile, want_block, dtype, tf32 = _family(module, fn)
    assert block == want_block, (fn, block)
    assert q.dtype == p.dtype == dtype and dw.dtype == torch.float32, (fn, q.dtype, dw.dtype)
    assert off.dtype == cnt.dtype == torch.int64 and off.is_contiguous() and cnt.is_contiguous()
    groups, rows, u_len, v_len = map(int, (groups, rows, u_len, v_len))
    assert grid == (-(-v_len // tile), -(-u_len // tile), 1), \
        f"grid {grid} is not the contract's for dW ({u_len} x {v_len}) in {tile}-tiles"
    rnd = _tf32 if tf32 else (lambda t: t.float())
    assert len(off) == len(cnt) == groups
    for g in range(groups):
        o, k = int(off[g]), int(cnt[g])
        if k == 0:
            continue
        assert o + k <= u_len, f"window [{o}, {o + k}) past the {u_len}-long window axis"
        qv = rnd(_memory(q, g * int(q_g), (rows, k), (int(q_b), 1)))
        pv = rnd(_memory(p, g * int(p_g), (rows, v_len), (int(p_b), 1)))
        _memory(dw, o * int(dw_u), (k, v_len), (int(dw_u), int(dw_v))).add_(qv.t() @ pv)


def _grouped_gemm(module, fn, grid, block, args):
    if fn.startswith("window_dw_"):
        return _window_dw(module, fn, grid, block, args)
    a, b, c, off, cnt, mode, m_full, n_full, k_full, *strides = args
    tile, want_block, dtype, tf32 = _family(module, fn)
    assert block == want_block, (fn, block)
    accumulate = "_acc_" in fn
    rnd = _tf32 if tf32 else (lambda t: t.float())
    assert a.dtype == b.dtype == dtype, (fn, a.dtype, b.dtype)
    assert c.dtype == (torch.float32 if accumulate else dtype), (fn, c.dtype)
    assert off.dtype == cnt.dtype == torch.int64 and off.is_contiguous() and cnt.is_contiguous()
    assert grid[2] == len(cnt) == len(off)
    a_g, a_o, a_rs, a_cs, b_g, b_o, b_rs, b_cs, c_g, c_o, c_rs, c_cs = map(int, strides)
    mode = int(mode)
    # the contract's grid: the largest extents (m_full / n_full: the largest count under a mode
    # bit) in the family's tiles, so a launcher that assumes another family's tile fails here
    assert grid[:2] == (-(-int(n_full) // tile), -(-int(m_full) // tile)), \
        f"grid {grid} is not the contract's for C ({m_full} x {n_full}) in {tile}-tiles"
    for g in range(grid[2]):
        k_g, o = int(cnt[g]), int(off[g])
        m = k_g if mode & 1 else int(m_full)
        n = k_g if mode & 2 else int(n_full)
        k = k_g if mode & 4 else int(k_full)
        assert m <= grid[1] * tile and n <= grid[0] * tile, f"grid {grid} misses C ({m} x {n})"
        if m == 0 or n == 0 or k == 0:
            continue
        av = rnd(_memory(a, g * a_g + o * a_o, (m, k), (a_rs, a_cs)))
        bv = rnd(_memory(b, g * b_g + o * b_o, (k, n), (b_rs, b_cs)))
        cv = _memory(c, g * c_g + o * c_o, (m, n), (c_rs, c_cs))
        if accumulate:
            cv += av @ bv
        else:
            cv.copy_(av @ bv)


def _rows(t, rows: int, width: int, what: str) -> torch.Tensor:
    """A (rows, width) row-major buffer as the point-wise kernel indexes it."""
    assert t is not None, f"{what} must not be a null pointer"
    return _memory(t, 0, (rows, width), (width, 1))


def _lstm_pointwise(module, fn, grid, block, args):
    kind, suffix = fn.rsplit("_", 1)
    dtype = DTYPES[suffix]
    rows, h = int(args[-2]), int(args[-1])
    assert grid[0] * block[0] >= rows * h, f"grid {grid} x {block} misses {rows * h} elements"
    if kind == "lstm_fwd":
        gates, c_prev, h_prev, valid, acts, c_new, c_next, h_next, out = args[:-2]
        tensors = (gates, c_prev, h_prev, acts, c_new, c_next, h_next, out)
    else:
        acts, c_new, c_prev, valid, d_out, dh, dc, dgates = args[:-2]
        tensors = (acts, c_new, c_prev, dgates) + (() if d_out is None else (d_out,))
        assert dh.dtype == dc.dtype == torch.float32, "dh / dc are float32 accumulators"
    assert all(t.dtype == dtype for t in tensors), (fn, [t.dtype for t in tensors])
    v = (torch.ones(rows, 1, dtype=torch.bool) if valid is None
         else _rows(valid, rows, 1, "valid").bool())
    if kind == "lstm_fwd":
        cp, hp = _rows(c_prev, rows, h, "c_prev").float(), _rows(h_prev, rows, h, "h_prev").float()
        a, c, hn = torch_backend.lstm_pointwise(_rows(gates, rows, 4 * h, "gates").float(), cp)
        _rows(acts, rows, 4 * h, "acts").copy_(a)
        _rows(c_new, rows, h, "c_new").copy_(c)
        _rows(c_next, rows, h, "c_next").copy_(torch.where(v, c, cp))
        _rows(h_next, rows, h, "h_next").copy_(torch.where(v, hn, hp))
        _rows(out, rows, h, "out").copy_(torch.where(v, hn, torch.zeros_like(hn)))
        return
    # dh, dc are updated in place: dh keeps only what passes a padded step (the caller's GEMM adds
    # dgates W_hh), dc becomes dc_{t-1}
    dhv, dcv = _rows(dh, rows, h, "dh"), _rows(dc, rows, h, "dc")
    dg, carry_h, dc_prev = torch_backend.lstm_pointwise_backward(
        _rows(acts, rows, 4 * h, "acts").float(), _rows(c_new, rows, h, "c_new").float(),
        _rows(c_prev, rows, h, "c_prev").float(), dhv, dcv,
        None if d_out is None else _rows(d_out, rows, h, "d_out").float(), v)
    _rows(dgates, rows, 4 * h, "dgates").copy_(dg)
    dhv.copy_(carry_h)
    dcv.copy_(dc_prev)


# ---------------------------------------------------------------- the kernels' own code on the CPU

HOST_SOURCE = Path(__file__).with_name("cuda_host.cpp")


def build_host_kernels(out_dir) -> Path | None:
    """Compile tests/cuda_host.cpp (kernels/gemm_fast.cu for the CPU) into ``out_dir``; None
    without a C++20 compiler that has _Float16 and ucontext."""
    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        return None
    probe = Path(out_dir) / "probe.cpp"     # _Float16 (GCC 12+, clang 15+ on x86-64 / arm64)
    probe.write_text("#include <ucontext.h>\nint main() { _Float16 h = 1; return (int)h - 1; }\n")
    if subprocess.run([cxx, "-std=c++20", str(probe), "-o", str(probe.with_suffix(""))],
                      capture_output=True, timeout=120).returncode != 0:
        return None
    lib = Path(out_dir) / "cuda_host.so"
    proc = subprocess.run([cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-fno-strict-aliasing",
                           "-Wno-unknown-pragmas", str(HOST_SOURCE), "-o", str(lib)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return lib


def host_launcher(lib_path):
    """A ``_launch`` that runs kernels/gemm_fast.cu's kernels themselves on the CPU (one fiber
    per CUDA thread, tests/cuda_host.cpp) after :func:`launch` has checked the launch against
    the kernel's contract on a copy of the output; other modules go to :func:`launch`."""
    lib = ctypes.CDLL(str(lib_path))

    def c_arg(a):
        if a is None:
            return ctypes.c_void_p(None)
        if isinstance(a, torch.Tensor):
            return ctypes.c_void_p(a.data_ptr())
        if isinstance(a, np.int32):
            return ctypes.c_int(int(a))
        assert isinstance(a, np.int64), type(a)
        return ctypes.c_longlong(int(a))

    def run(module, fn, grid, block, args):
        if module != "gemm_fast":
            return launch(module, fn, grid, block, args)
        checked = list(args)
        checked[2] = args[2].clone()
        launch(module, fn, grid, block, checked)       # contract: bounds, grid, block, dtypes
        block = tuple(block) + (1,) * (3 - len(block))
        assert all(t.device.type == "cpu" for t in args if isinstance(t, torch.Tensor))
        getattr(lib, "host_" + fn)(*map(ctypes.c_int, (*grid, *block)), *map(c_arg, args))

    return run
