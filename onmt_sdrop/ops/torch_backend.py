"""Pure-PyTorch backend: compacted GEMMs by contiguous windows of a permuted weight.

Every op works on *groups* ``g`` (time steps) with their own kept set, described by a
:class:`~onmt_sdrop.masks.StepMask`. Compact tensors are ``(G, B, kmax)``: column ``j`` of group
``g`` is unit ``perm[(offsets[g] + j) % H]``, zero past ``counts[g]``. Weights are permuted once
per batch (:func:`permute_weight`), after which each group's kept rows/columns are one contiguous
slice, so the per-group GEMMs read views and copy nothing.
"""
from __future__ import annotations

import sys

import torch
from torch.autograd import Function

from ..masks import StepMask
from .amp import autocast_op
from .common import CompactMatmul, MatmulCompact, WindowedWeight, gather, permute_weight, scatter


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


def _mm_into(dst: torch.Tensor, gs, k: int, a: torch.Tensor, b: torch.Tensor) -> None:
    """``dst[gs, :, :k] = a @ b``, written in place where the destination is contiguous."""
    full = k == dst.shape[-1]
    if gs is None and full:
        torch.mm(a, b, out=dst.view(-1, k))
    elif isinstance(gs, int) and full:
        torch.mm(a, b, out=dst[gs])
    elif gs is None:
        dst[..., :k] = (a @ b).view(*dst.shape[:-1], k)
    elif isinstance(gs, int):
        dst[gs, :, :k] = a @ b
    else:
        dst[gs, :, :k] = (a @ b).view(len(gs), dst.shape[1], k)


def _new_out(like: torch.Tensor, shape, mask: StepMask, width_is_count: bool):
    """An output every group writes whole (empty), or one with untouched parts (zeros)."""
    covered = sum(1 for _, k in mask.windows if k) == mask.groups
    whole = covered and (not width_is_count or all(k == mask.kmax for _, k in mask.windows))
    return (like.new_empty if whole else like.new_zeros)(shape)


def _accumulate(dw: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``dw += a @ b``; under autocast ``a, b`` are half and the gradient buffer stays float32."""
    if dw.dtype == a.dtype:
        dw.addmm_(a, b)
    else:
        dw.add_(a @ b)


def consumer_fwd(xc, w, mask: StepMask):
    """``Y[g] = Xc[g][:, :k] @ W[:, o:o+k]^T``: (G, B, kmax) -> (G, B, N)."""
    g, b, _ = xc.shape
    n = w.shape[0]
    y = _new_out(xc, (g, b, n), mask, False)
    for o, k, gs in mask.window_groups():
        _mm_into(y, gs, n, _rows(xc, gs, k), w[:, o:o + k].t())
    return y


def consumer_dx(dy, w, mask: StepMask):
    """``dXc[g][:, :k] = dY[g] @ W[:, o:o+k]``: (G, B, N) -> (G, B, kmax), zero past k."""
    g, b, _ = dy.shape
    dxc = _new_out(dy, (g, b, mask.kmax), mask, True)
    for o, k, gs in mask.window_groups():
        _mm_into(dxc, gs, k, _rows(dy, gs), w[:, o:o + k])
    return dxc


def consumer_dw(dy, xc, mask: StepMask, dw) -> None:
    """``dW[:, o:o+k] += dY[g]^T @ Xc[g][:, :k]``, in place."""
    for o, k, gs in mask.window_groups():
        _accumulate(dw[:, o:o + k], _rows(dy, gs).t(), _rows(xc, gs, k))


def producer_fwd(x, w, mask: StepMask):
    """``Yc[g][:, :k] = X[g] @ W[o:o+k, :]^T``: (G, B, I) -> (G, B, kmax), zero past k."""
    g, b, _ = x.shape
    yc = _new_out(x, (g, b, mask.kmax), mask, True)
    for o, k, gs in mask.window_groups():
        _mm_into(yc, gs, k, _rows(x, gs), w[o:o + k].t())
    return yc


def producer_dx(dyc, w, mask: StepMask):
    """``dX[g] = dYc[g][:, :k] @ W[o:o+k, :]``: (G, B, kmax) -> (G, B, I)."""
    g, b, _ = dyc.shape
    i = w.shape[1]
    dx = _new_out(dyc, (g, b, i), mask, False)
    for o, k, gs in mask.window_groups():
        _mm_into(dx, gs, i, _rows(dyc, gs, k), w[o:o + k])
    return dx


def producer_dw(dyc, x, mask: StepMask, dw) -> None:
    """``dW[o:o+k, :] += dYc[g][:, :k]^T @ X[g]``, in place."""
    for o, k, gs in mask.window_groups():
        _accumulate(dw[o:o + k], _rows(dyc, gs, k).t(), _rows(x, gs))


_GEMMS = sys.modules[__name__]


@autocast_op
def compact_matmul(xc: torch.Tensor, ww: WindowedWeight, mask: StepMask) -> torch.Tensor:
    """Consumer GEMM on compact input: ``(G, B, kmax) x (Out, H+kmax) -> (G, B, Out)``."""
    return CompactMatmul.apply(xc, ww.token, ww, mask, _GEMMS)


@autocast_op
def matmul_compact(x: torch.Tensor, ww: WindowedWeight, mask: StepMask) -> torch.Tensor:
    """Producer GEMM, kept output columns only: ``(G, B, In) x (H+kmax, In) -> (G, B, kmax)``."""
    return MatmulCompact.apply(x, ww.token, ww, mask, _GEMMS)


# ---------------------------------------------------------------- LSTM recurrence (dense W_hh, fused point-wise)

def lstm_pointwise(gates: torch.Tensor, c_prev: torch.Tensor):
    """Gate activations (order i, f, g, o as in ``nn.LSTM``), new cell and hidden state."""
    i, f, g, o = gates.chunk(4, -1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = torch.addcmul(f * c_prev, i, g)
    h = o * c.tanh()
    return torch.cat([i, f, g, o], -1), c, h


def lstm_pointwise_backward(acts, c_new, c_prev, dh, dc, d_out=None, valid=None, out=None):
    """Backward of :func:`lstm_pointwise` through one step under the length mask ``valid``.

    ``dh``, ``dc``: gradients w.r.t. the state after the step; ``d_out``: w.r.t. its output.
    Returns (gate gradients, written into ``out`` if given; the part of ``dh`` that passes a
    padded step unchanged, to which the caller adds ``dgates @ W_hh`` for h_{t-1}; dc_{t-1})."""
    i, f, g, o = acts.chunk(4, -1)
    tc = c_new.tanh()
    dhn = dh if d_out is None else dh + d_out
    carry_h = carry_c = 0
    if valid is not None:
        v = valid.to(acts.dtype)
        carry_h, carry_c = (1 - v) * dh, (1 - v) * dc
        dhn, dc = v * dhn, v * dc
    dcn = dc + dhn * o * (1 - tc * tc)
    dgates = torch.empty_like(acts) if out is None else out
    di, df, dgg, do = dgates.chunk(4, -1)
    torch.mul(dcn * g, i * (1 - i), out=di)
    torch.mul(dcn * c_prev, f * (1 - f), out=df)
    torch.mul(dcn * i, 1 - g * g, out=dgg)
    torch.mul(dhn * tc, o * (1 - o), out=do)
    return dgates, carry_h, dcn * f + carry_c


class _LSTMSequence(Function):
    """Forward and backward-through-time of a (multi-direction) LSTM layer whose input projections
    ``gx`` are precomputed. One dense recurrent GEMM per step, no autograd graph inside."""

    @staticmethod
    def forward(ctx, gx, w_hh, h0, c0, valid):
        # gx (T, D, B, 4h) incl. biases, w_hh (D, 4h, h), h0/c0 (D, B, h), valid (T, 1, B, 1) or None
        steps = gx.shape[0]
        w_t = w_hh.transpose(1, 2)
        acts, c_new_all, h_prev_all, c_prev_all = [], [], [], []
        outs = gx.new_empty(steps, *h0.shape)
        h, c = h0, c0
        for t in range(steps):
            h_prev_all.append(h)
            c_prev_all.append(c)
            a, cn, hn = lstm_pointwise(torch.baddbmm(gx[t], h, w_t), c)
            acts.append(a)
            c_new_all.append(cn)
            if valid is None:
                h, c = hn, cn
                outs[t] = hn
            else:
                v = valid[t]
                outs[t] = hn * v
                h = torch.where(v, hn, h)
                c = torch.where(v, cn, c)
        ctx.save_for_backward(w_hh, torch.stack(acts), torch.stack(c_new_all),
                              torch.stack(h_prev_all), torch.stack(c_prev_all),
                              valid if valid is not None else torch.empty(0))
        ctx.has_valid = valid is not None
        return outs, h, c

    @staticmethod
    def backward(ctx, d_outs, d_hT, d_cT):
        w_hh, acts, c_new, h_prev, c_prev, valid = ctx.saved_tensors
        steps = acts.shape[0]
        dh = torch.zeros_like(h_prev[0]) if d_hT is None else d_hT.clone()
        dc = torch.zeros_like(c_prev[0]) if d_cT is None else d_cT.clone()
        dgates = torch.empty_like(acts)
        for t in range(steps - 1, -1, -1):
            _, carry_h, dc = lstm_pointwise_backward(
                acts[t], c_new[t], c_prev[t], dh, dc, None if d_outs is None else d_outs[t],
                valid[t] if ctx.has_valid else None, out=dgates[t])
            dh = torch.bmm(dgates[t], w_hh) + carry_h
        d_gx = dgates if ctx.needs_input_grad[0] else None
        d_whh = None
        if ctx.needs_input_grad[1]:
            # sum_t dgates_t^T h_{t-1}: one GEMM over all steps
            D = acts.shape[1]
            dg_all = dgates.permute(1, 3, 0, 2).reshape(D, acts.shape[3], -1)
            hp_all = h_prev.permute(1, 0, 2, 3).reshape(D, -1, h_prev.shape[3])
            d_whh = torch.bmm(dg_all, hp_all)
        return d_gx, d_whh, dh, dc, None


@autocast_op
def lstm_sequence(gx, w_hh, h0, c0, valid=None):
    """Run an LSTM layer over precomputed input projections.

    gx: (T, D, B, 4h) input projections plus both biases, for D directions already in their own
    time order; w_hh: (D, 4h, h); h0, c0: (D, B, h); valid: (T, B) bool or None (state holds and
    output is zero where False). Returns outputs (T, D, B, h) and the final (h, c), each (D, B, h).
    """
    v = None if valid is None else valid[:, None, :, None]
    return _LSTMSequence.apply(gx, w_hh, h0, c0, v)
