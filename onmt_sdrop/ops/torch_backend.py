"""Pure-PyTorch backend: compacted GEMMs by contiguous windows of a permuted weight.

Every op works on *groups* ``g`` (time steps) with their own kept set, described by a
:class:`~onmt_sdrop.masks.StepMask`. Compact tensors are ``(G, B, kmax)``: column ``j`` of group
``g`` is unit ``perm[(offsets[g] + j) % H]``, zero past ``counts[g]``. Weights are permuted once
per batch (:func:`permute_weight`), after which each group's kept rows/columns are one contiguous
slice, so the per-group GEMMs read views and copy nothing.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import sys

import torch
from torch.autograd import Function

from ..masks import StepMask
from .amp import autocast_op
from . import common
from .common import WindowedWeight, consumer, new_output, producer, scatter
from .common import accumulate_mm as _accumulate
from .common import permute_weight_window_major as permute_weight


# ---------------------------------------------------------------- the six grouped GEMMs
#
# Named as in kernels/grouped_gemm.cu's table; ``w`` is ``WindowedWeight.ext`` (permuted once per
# batch), ``dw`` a gradient buffer of its shape. Groups that share a window (the "fixed" pattern,
# or few distinct masks per batch) are stacked into one GEMM: on a CPU a GEMM of B rows re-packs
# its weight panel at every call, so fewer, taller GEMMs are what turns skipped work into time.

def _rows(t: torch.Tensor, gs, k=None):
    """Rows of the groups ``gs`` (None = all, an int, or an index tensor) as a matrix, first ``k``
    columns if given."""
    if gs is None:
        sel = t.reshape(-1, t.shape[-1])
    elif isinstance(gs, int):
        sel = t[gs]
    else:
        sel = t.index_select(0, gs).reshape(-1, t.shape[-1])
    return sel if k is None else sel[:, :k]


def _mm_into(dst: torch.Tensor, gs, k: int, a: torch.Tensor, b: torch.Tensor,
             accumulate: bool = False) -> None:
    """``dst[gs, :, :k] = a @ b`` (``+=`` if ``accumulate``, for one group ``gs``), written in
    place where the destination is one block (row- or column-major)."""
    full = k == dst.shape[-1]
    if accumulate and isinstance(gs, int):
        _accumulate(dst[gs, :, :k], a, b)
    elif accumulate:
        dst[gs, :, :k] += (a @ b).view(len(gs), dst.shape[1], k)
    elif gs is None and full:
        torch.mm(a, b, out=dst.view(-1, k))
    elif isinstance(gs, int) and full:
        torch.mm(a, b, out=dst[gs])
    elif gs is None:
        dst[..., :k] = (a @ b).view(*dst.shape[:-1], k)
    elif isinstance(gs, int):
        dst[gs, :, :k] = a @ b
    else:
        dst[gs, :, :k] = (a @ b).view(len(gs), dst.shape[1], k)


# On a CPU, MKL's GEMMs of one step (B rows, a few dozen) are shaped by measured choices
# (2-core EPYC, README "Benchmarks"); on a GPU they would only add launches or copies:
# * Column tiles: a wide full-size side (the generator's vocabulary) is done in tiles of
#   OUT_TILE, every group within a tile before the next tile, so that the tile's weight rows and
#   weight-gradient rows stay in cache across the groups instead of streaming from memory once
#   per group (the gradient's read-modify-write was as slow as dense's whole GEMM).
# * Column-major blocks: a step's compact input and its dX, stored column by column ((G, N, B)
#   storage), are read and written 1.2-1.4x faster than row by row. The forward's output stays
#   row-major, the layout the LSTM code reads next.
# * The tiled forward's output (the generator's logits) is stored batch-major, the row order of
#   OpenNMT-py's loss, so that no transposing copy of it is needed.
OUT_TILE = 1024
ROWS, COLUMNS_MAJOR, BATCH_MAJOR = (0, 1, 2), (0, 2, 1), (1, 0, 2)


def _column_tiles(t: torch.Tensor, n: int, mask: StepMask):
    """Slices of the full-size side ``n``: tiles on a CPU for a wide side and many windows."""
    tile = n
    if t.device.type == "cpu" and n >= 4 * OUT_TILE and len(mask.window_groups()) >= 4:
        tile = OUT_TILE
    return [slice(n0, n0 + tile) for n0 in range(0, n, tile)]


def _block_order(t: torch.Tensor, mask: StepMask):
    """Column-major compact blocks on a CPU, for per-group GEMMs (more than one window)."""
    return COLUMNS_MAJOR if t.device.type == "cpu" and len(mask.window_groups()) > 1 else ROWS


# * Side by side: with several CPU threads, MKL splits one step's short GEMM between them at a
#   loss (64 rows: 1.4x on 2 threads); whole GEMMs on each thread, single-threaded, run about
#   1.25x faster (README "Benchmarks"). So the groups of a call (forward, dX: their outputs are
#   disjoint) or the column ranges of a weight gradient (the groups' windows overlap) are dealt
#   to the threads, and torch's thread count is 1 while they run.
_pool, _pool_workers = None, 0


SIDE_BY_SIDE_MACS = 1 << 24   # below this a call's GEMMs are too short to pay for the threads


def _threads(t: torch.Tensor, macs: int) -> int:
    """Threads for a call of ``macs`` multiply-adds: torch's count on a CPU, else (other
    devices, a small call) one."""
    return torch.get_num_threads() if t.device.type == "cpu" and macs >= SIDE_BY_SIDE_MACS else 1


@contextlib.contextmanager
def on_this_thread():
    """No grouped GEMM side by side while inside: every op runs on the calling thread, the only
    one that the torch profiler and dispatch modes entered there see (benchmarks that count ops)."""
    global SIDE_BY_SIDE_MACS
    saved, SIDE_BY_SIDE_MACS = SIDE_BY_SIDE_MACS, float("inf")
    try:
        yield
    finally:
        SIDE_BY_SIDE_MACS = saved


def _side_by_side(t: torch.Tensor, items: list, macs: int) -> list:
    """``items`` dealt round-robin into one share per thread (:func:`_threads`)."""
    n = max(1, min(_threads(t, macs), len(items)))
    return [items[i::n] for i in range(n)]


def _run_side_by_side(work, shares: list) -> None:
    """``work(share)`` for every share, each on its own thread (the first on this one), with
    torch (and MKL) single-threaded meanwhile."""
    global _pool, _pool_workers
    if len(shares) == 1:
        work(shares[0])
        return
    if _pool_workers < len(shares) - 1:
        _pool_workers = len(shares) - 1
        _pool = concurrent.futures.ThreadPoolExecutor(_pool_workers,
                                                      thread_name_prefix="sdrop-gemm")

    def in_worker(share):
        with torch.no_grad():   # the worker's own grad mode; out= GEMMs must not record
            work(share)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        futures = [_pool.submit(in_worker, share) for share in shares[1:]]
        try:
            in_worker(shares[0])
        finally:   # every share done before the thread count goes back, also on an error
            concurrent.futures.wait(futures)
    finally:
        torch.set_num_threads(threads)
    for f in futures:
        f.result()   # a worker's error, raised here


def _macs(t: torch.Tensor, mask: StepMask, n: int) -> int:
    """Multiply-adds of one grouped GEMM: rows of ``t`` times kept units times ``n``."""
    return t.shape[0] * t.shape[1] * mask.kmax * n


def _column_shares(t: torch.Tensor, n: int, mask: StepMask):
    """Column slices of a weight gradient's full-size side ``n``, dealt to the threads: its tiles,
    or, untiled, as many equal ranges as threads."""
    tiles = _column_tiles(t, n, mask)
    macs = _macs(t, mask, n)
    if len(tiles) == 1 and len(mask.window_groups()) > 1:
        parts = _threads(t, macs)
        tiles = [slice(n * i // parts, n * (i + 1) // parts) for i in range(parts)]
    return _side_by_side(t, tiles, macs)


def gather(x: torch.Tensor, mask: StepMask) -> torch.Tensor:
    """:func:`common.gather`, each group's compact block column-major where the GEMMs' outputs
    are (the left operand that MKL's short GEMMs read fastest)."""
    return common.gather(x, mask, columns_major=_block_order(x, mask) == COLUMNS_MAJOR)


def consumer_fwd(xc, w, mask: StepMask):
    """``Y[g] = Xc[g][:, :k] @ W[:, o:o+k]^T``: (G, B, kmax) -> (G, B, N)."""
    g, b, _ = xc.shape
    n = w.shape[0]
    groups = [(o, k, gs, _rows(xc, gs, k)) for o, k, gs in mask.window_groups()]
    tiles = _column_tiles(xc, n, mask)
    y = new_output(xc, (g, b, n), mask, False, BATCH_MAJOR if len(tiles) > 1 else ROWS)

    def work(share):
        for cols in tiles:
            y_tile, w_tile = y[..., cols], w[cols]
            for o, k, gs, x_rows in share:
                _mm_into(y_tile, gs, y_tile.shape[-1], x_rows, w_tile[:, o:o + k].t())
    _run_side_by_side(work, _side_by_side(xc, groups, _macs(xc, mask, n)))
    return y


def consumer_dx(dy, w, mask: StepMask):
    """``dXc[g][:, :k] = dY[g] @ W[:, o:o+k]``: (G, B, N) -> (G, B, kmax), zero past k. Tiled,
    the sum over N runs tile by tile, accumulated in place."""
    g, b, n = dy.shape
    tiles = _column_tiles(dy, n, mask)
    dxc = new_output(dy, (g, b, mask.kmax), mask, True, _block_order(dy, mask))

    def work(share):
        for i, cols in enumerate(tiles):
            w_tile = w[cols]
            for o, k, gs in share:
                _mm_into(dxc, gs, k, _rows(dy[..., cols], gs), w_tile[:, o:o + k],
                         accumulate=i > 0)
    _run_side_by_side(work, _side_by_side(dy, mask.window_groups(), _macs(dy, mask, n)))
    return dxc


def consumer_dw(dy, xc, mask: StepMask, dw) -> None:
    """``dW[:, o:o+k] += dY[g]^T @ Xc[g][:, :k]``, in place, tile by tile of N."""
    groups = [(o, k, gs, _rows(xc, gs, k)) for o, k, gs in mask.window_groups()]

    def work(share):
        for cols in share:
            dw_tile = dw[cols]
            for o, k, gs, x_rows in groups:
                _accumulate(dw_tile[:, o:o + k], _rows(dy[..., cols], gs).t(), x_rows)
    _run_side_by_side(work, _column_shares(dy, dy.shape[-1], mask))


def producer_fwd(x, w, mask: StepMask):
    """``Yc[g][:, :k] = X[g] @ W[o:o+k, :]^T``: (G, B, I) -> (G, B, kmax), zero past k."""
    g, b, _ = x.shape
    yc = new_output(x, (g, b, mask.kmax), mask, True)

    def work(share):
        for o, k, gs in share:
            _mm_into(yc, gs, k, _rows(x, gs), w[o:o + k].t())
    _run_side_by_side(work, _side_by_side(x, mask.window_groups(), _macs(x, mask, w.shape[1])))
    return yc


def producer_dx(dyc, w, mask: StepMask):
    """``dX[g] = dYc[g][:, :k] @ W[o:o+k, :]``: (G, B, kmax) -> (G, B, I)."""
    g, b, _ = dyc.shape
    i = w.shape[1]
    dx = new_output(dyc, (g, b, i), mask, False)

    def work(share):
        for o, k, gs in share:
            _mm_into(dx, gs, i, _rows(dyc, gs, k), w[o:o + k])
    _run_side_by_side(work, _side_by_side(dyc, mask.window_groups(), _macs(dyc, mask, i)))
    return dx


def producer_dw(dyc, x, mask: StepMask, dw) -> None:
    """``dW[o:o+k, :] += dYc[g][:, :k]^T @ X[g]``, in place."""
    def work(share):
        for cols in share:
            for o, k, gs in mask.window_groups():
                _accumulate(dw[o:o + k, cols], _rows(dyc, gs, k).t(), _rows(x[..., cols], gs))
    _run_side_by_side(work, _column_shares(x, x.shape[-1], mask))


_GEMMS = sys.modules[__name__]


@autocast_op
def compact_matmul(xc: torch.Tensor, ww: WindowedWeight, mask: StepMask) -> torch.Tensor:
    """Consumer GEMM on compact input: ``(G, B, kmax) x (Out, H+kmax) -> (G, B, Out)``."""
    return consumer(_GEMMS, xc, ww, mask)


@autocast_op
def matmul_compact(x: torch.Tensor, ww: WindowedWeight, mask: StepMask) -> torch.Tensor:
    """Producer GEMM, kept output columns only: ``(G, B, In) x (H+kmax, In) -> (G, B, kmax)``."""
    return producer(_GEMMS, x, ww, mask)


# ---------------------------------------------------------------- LSTM recurrence (dense W_hh, fused point-wise)

def lstm_pointwise(gates: torch.Tensor, c_prev: torch.Tensor, out=None):
    """Gate activations (order i, f, g, o as in ``nn.LSTM``), new cell and hidden state; written
    into ``out = (acts, c, h)`` if given (the sequence's saved buffers: no copy per step)."""
    h = c_prev.shape[-1]
    acts, c, hn = out or (torch.empty_like(gates), torch.empty_like(c_prev),
                          torch.empty_like(c_prev))
    torch.sigmoid(gates, out=acts)
    torch.tanh(gates[..., 2 * h:3 * h], out=acts[..., 2 * h:3 * h])
    i, f, g, o = acts.chunk(4, -1)
    torch.addcmul(f * c_prev, i, g, out=c)
    torch.mul(o, c.tanh(), out=hn)
    return acts, c, hn


def lstm_pointwise_backward(acts, c_new, c_prev, dh, dc, d_out=None, valid=None):
    """Backward of :func:`lstm_pointwise` through one step under the length mask ``valid``.

    ``dh``, ``dc``: gradients w.r.t. the state after the step; ``d_out``: w.r.t. its output.
    Returns (gate gradients; the part of ``dh`` that passes a padded step unchanged, to which the
    caller adds ``dgates @ W_hh`` for h_{t-1}; dc_{t-1})."""
    dhn = dh if d_out is None else dh + d_out
    carry_h = carry_c = 0
    if valid is not None:
        v = valid.to(acts.dtype)
        carry_h, carry_c = (1 - v) * dh, (1 - v) * dc
        dhn, dc = v * dhn, v * dc
    dgates, dc_prev = _gate_grads(acts, c_new.tanh(), c_prev, dhn, dc)
    return dgates, carry_h, dc_prev + carry_c


def _gate_grads(acts, tc, c_prev, dh, dc, out=None):
    """Gate gradients and dc_{t-1} of one step, given tanh(c_t) and the state gradients."""
    h = c_prev.shape[-1]
    i, f, g, o = acts.chunk(4, -1)
    dcn = torch.addcmul(dc, dh, o * (1 - tc * tc))
    # d act / d pre-activation: a(1-a) for the sigmoid gates, 1-g^2 for the tanh gate
    local = acts * (1 - acts)
    local[..., 2 * h:3 * h].fill_(1).addcmul_(g, g, value=-1)
    value = torch.cat([g * dcn, c_prev * dcn, i * dcn, tc * dh], -1)
    dgates = torch.mul(value, local, out=out) if out is not None else value * local
    return dgates, dcn * f


class _LSTMSequence(Function):
    """Forward and backward-through-time of a (multi-direction) LSTM layer whose input projections
    ``gx`` (biases included) are precomputed: per step only the recurrent GEMM and the point-wise
    math, as in haste; ``W_hh``'s gradient is one GEMM over all steps after the loop. No length
    mask inside the loop: padding sits at the end of every sequence (both directions), so the
    caller zeroes the outputs and takes the final state at each sequence's last step afterwards,
    and padded steps get zero gradients."""

    @staticmethod
    def forward(ctx, gx, w_hh, h0, c0):
        # gx (T, D, B, 4h), w_hh (D, 4h, h), h0/c0 (D, B, h) -> all h (T, D, B, h), all c
        steps = gx.shape[0]
        w_t = w_hh.transpose(1, 2)
        hs = gx.new_empty(steps + 1, *h0.shape)
        cs = gx.new_empty(steps + 1, *c0.shape)
        acts = torch.empty_like(gx)
        hs[0], cs[0] = h0, c0
        for t in range(steps):
            lstm_pointwise(torch.baddbmm(gx[t], hs[t], w_t), cs[t],
                           out=(acts[t], cs[t + 1], hs[t + 1]))
        ctx.save_for_backward(w_hh, acts, hs, cs)
        return hs[1:], cs[1:]

    @staticmethod
    def backward(ctx, d_hs, d_cs):
        w_hh, acts, hs, cs = ctx.saved_tensors
        steps = acts.shape[0]
        dh = torch.zeros_like(hs[0])
        dc = torch.zeros_like(cs[0])
        dgates = torch.empty_like(acts)
        tcs = cs[1:].tanh()
        for t in range(steps - 1, -1, -1):
            if d_hs is not None:
                dh = dh + d_hs[t]
            if d_cs is not None:
                dc = dc + d_cs[t]
            _, dc = _gate_grads(acts[t], tcs[t], cs[t], dh, dc, out=dgates[t])
            dh = torch.bmm(dgates[t], w_hh)
        d_whh = None
        if ctx.needs_input_grad[1]:
            # sum_t dgates_t^T h_{t-1}: one GEMM over all steps
            d, four_h, h = w_hh.shape
            dg_all = dgates.permute(1, 3, 0, 2).reshape(d, four_h, -1)
            hp_all = hs[:steps].permute(1, 0, 2, 3).reshape(d, -1, h)
            d_whh = torch.bmm(dg_all, hp_all)
        return dgates, d_whh, dh, dc


@autocast_op
def lstm_sequence(gx, w_hh, h0, c0, valid=None):
    """Run an LSTM layer over precomputed input projections.

    gx: (T, D, B, 4h) input projections plus both biases, for D directions already in their own
    time order; w_hh: (D, 4h, h); h0, c0: (D, B, h); valid: (T, B) bool or None (each sequence's
    valid steps come first; output is zero where False and the final state is that of the last
    valid step). Returns outputs (T, D, B, h) and the final (h, c), each (D, B, h).
    """
    hs, cs = _LSTMSequence.apply(gx, w_hh, h0, c0)
    if valid is None:
        return hs, hs[-1], cs[-1]
    last = (valid.sum(0) - 1).clamp(min=0)              # (B,) index of each last valid step
    idx = last.view(1, 1, -1, 1).expand(1, *hs.shape[1:])
    return hs * valid[:, None, :, None], hs.gather(0, idx)[0], cs.gather(0, idx)[0]


class _LSTMCell(Function):
    """One step of an LSTM cell whose input projection ``gx`` (biases included) is given: the
    recurrent GEMM with ``gx`` folded in as its bias, and the point-wise math."""

    @staticmethod
    def forward(ctx, gx, w_hh, h, c):
        acts, c1, h1 = lstm_pointwise(torch.addmm(gx, h, w_hh.t()), c)
        ctx.save_for_backward(w_hh, acts, h, c, c1)
        return h1, c1

    @staticmethod
    def backward(ctx, dh1, dc1):
        w_hh, acts, h, c, c1 = ctx.saved_tensors
        dh1 = torch.zeros_like(h) if dh1 is None else dh1
        dc1 = torch.zeros_like(c) if dc1 is None else dc1
        dgates, dc = _gate_grads(acts, c1.tanh(), c, dh1, dc1)
        d_whh = dgates.t() @ h if ctx.needs_input_grad[1] else None
        return dgates, d_whh, dgates @ w_hh, dc


@autocast_op
def lstm_cell(gx, w_hh, h, c):
    """One LSTM step: gx (B, 4h) input projection plus both biases, w_hh (4h, h), h, c (B, h).
    Returns the new (h, c)."""
    return _LSTMCell.apply(gx, w_hh, h, c)
