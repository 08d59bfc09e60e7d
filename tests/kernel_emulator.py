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

import torch

from onmt_sdrop.ops import torch_backend

TILE, GEMM_BLOCK = 32, (32, 4)
DTYPES = {"f32": torch.float32, "f16": torch.float16}


def launch(module: str, fn: str, grid, block, args) -> None:
    {"grouped_gemm": _grouped_gemm, "lstm_pointwise": _lstm_pointwise}[module](
        fn, tuple(grid), tuple(block), list(args))


def use_cuda_backend(models, setattr_=setattr, launch_with=None) -> None:
    """Run ``-sdrop_backend cupy`` on this CPU: every kernel launch through ``launch_with`` (by
    default :func:`launch`), and ``models``, built with the torch backend (cupy is refused without
    a GPU), switched to the CUDA backend. ``setattr_`` is ``monkeypatch.setattr`` in tests."""
    from onmt_sdrop.ops import cupy_backend
    from onmt_sdrop.plugin import config

    setattr_(cupy_backend, "_launch", launch_with or launch)
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


def _window_dw(fn, grid, block, args):
    """dW[u, v] += sum_g Q[g][:, u - off[g]]^T P[g][:, v] for off[g] <= u < off[g] + cnt[g]."""
    q, p, dw, off, cnt, groups, rows, u_len, v_len, q_g, q_b, p_g, p_b, dw_u, dw_v = args
    assert block == GEMM_BLOCK, block
    dtype = DTYPES[fn.rsplit("_", 1)[1]]
    assert q.dtype == p.dtype == dtype and dw.dtype == torch.float32, (fn, q.dtype, dw.dtype)
    assert off.dtype == cnt.dtype == torch.int64 and off.is_contiguous() and cnt.is_contiguous()
    groups, rows, u_len, v_len = map(int, (groups, rows, u_len, v_len))
    assert grid[0] * TILE >= v_len and grid[1] * TILE >= u_len and grid[2] == 1, \
        f"grid {grid} misses dW ({u_len} x {v_len})"
    assert len(off) == len(cnt) == groups
    for g in range(groups):
        o, k = int(off[g]), int(cnt[g])
        if k == 0:
            continue
        assert o + k <= u_len, f"window [{o}, {o + k}) past the {u_len}-long window axis"
        qv = _memory(q, g * int(q_g), (rows, k), (int(q_b), 1)).float()
        pv = _memory(p, g * int(p_g), (rows, v_len), (int(p_b), 1)).float()
        _memory(dw, o * int(dw_u), (k, v_len), (int(dw_u), int(dw_v))).add_(qv.t() @ pv)


def _grouped_gemm(fn, grid, block, args):
    if fn.startswith("window_dw_"):
        return _window_dw(fn, grid, block, args)
    a, b, c, off, cnt, mode, m_full, n_full, k_full, *strides = args
    assert block == GEMM_BLOCK, block
    accumulate = fn.startswith("grouped_gemm_acc_")
    dtype = DTYPES[fn.rsplit("_", 1)[1]]
    assert a.dtype == b.dtype == dtype, (fn, a.dtype, b.dtype)
    assert c.dtype == (torch.float32 if accumulate else dtype), (fn, c.dtype)
    assert off.dtype == cnt.dtype == torch.int64 and off.is_contiguous() and cnt.is_contiguous()
    assert grid[2] == len(cnt) == len(off)
    a_g, a_o, a_rs, a_cs, b_g, b_o, b_rs, b_cs, c_g, c_o, c_rs, c_cs = map(int, strides)
    mode = int(mode)
    for g in range(grid[2]):
        k_g, o = int(cnt[g]), int(off[g])
        m = k_g if mode & 1 else int(m_full)
        n = k_g if mode & 2 else int(n_full)
        k = k_g if mode & 4 else int(k_full)
        assert m <= grid[1] * TILE and n <= grid[0] * TILE, f"grid {grid} misses C ({m} x {n})"
        if m == 0 or n == 0 or k == 0:
            continue
        av = _memory(a, g * a_g + o * a_o, (m, k), (a_rs, a_cs)).float()
        bv = _memory(b, g * b_g + o * b_o, (k, n), (b_rs, b_cs)).float()
        cv = _memory(c, g * c_g + o * c_o, (m, n), (c_rs, c_cs))
        if accumulate:
            cv += av @ bv
        else:
            cv.copy_(av @ bv)


def _rows(t, rows: int, width: int, what: str) -> torch.Tensor:
    """A (rows, width) row-major buffer as the point-wise kernel indexes it."""
    assert t is not None, f"{what} must not be a null pointer"
    return _memory(t, 0, (rows, width), (width, 1))


def _lstm_pointwise(fn, grid, block, args):
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
