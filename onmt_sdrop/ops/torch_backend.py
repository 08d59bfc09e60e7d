"""Pure-PyTorch backend: compacted GEMMs by contiguous windows of a permuted weight.

Every op works on *groups* ``g`` (time steps) with their own kept set, described by a
:class:`~onmt_sdrop.masks.StepMask`. Compact tensors are ``(G, B, kmax)``: column ``j`` of group
``g`` is unit ``perm[(offsets[g] + j) % H]``, zero past ``counts[g]``. Weights are permuted once
per batch (:func:`permute_weight`), after which each group's kept rows/columns are one contiguous
slice, so the per-group GEMMs read views and copy nothing.
"""
from __future__ import annotations

import torch
from torch.autograd import Function

from ..masks import StepMask
from .amp import autocast_op


# ---------------------------------------------------------------- gather / scatter (cheap copies)

def gather(x: torch.Tensor, mask: StepMask) -> torch.Tensor:
    """Dense ``(G, B, H)`` -> compact ``(G, B, kmax)``, scaled: the dropped value, kept columns only."""
    g, b, _ = x.shape
    idx = mask.window_index()[:, None, :].expand(g, b, mask.kmax)
    return torch.gather(x, 2, idx) * mask.column_weight(x.dtype)[:, None, :]


def scatter(xc: torch.Tensor, mask: StepMask) -> torch.Tensor:
    """Compact ``(G, B, kmax)`` -> dense ``(G, B, H)`` with zeros at the dropped units."""
    g, b, _ = xc.shape
    idx = mask.window_index()[:, None, :].expand(g, b, mask.kmax)
    # padding columns are zero and point at dropped units, so a plain scatter is exact
    return xc.new_zeros(g, b, mask.size).scatter(2, idx, xc)


class WindowedWeight:
    """A weight with one axis in extended permuted order (``H + kmax`` long), for one batch.

    Every group reads its kept slice of ``ext``; the ops add their weight gradients into one
    buffer (``grad``) instead of returning a full-size gradient per call, and :class:`_Fold` hands
    the folded sum to the real parameter once, after the last of them (autograd runs a node's
    backward only when every consumer of its output has run). Per-step callers (the input-fed
    decoder) thus write only the kept slices, never a full weight-sized buffer per step.
    """

    def __init__(self, w: torch.Tensor, mask: StepMask, dim: int):
        self.index = mask.ext_perm().to(w.device)
        self.dim = dim
        self.ext = w.detach().index_select(dim, self.index)
        self.grad = None
        self.token = _Fold.apply(w, self)
        self._cast = None

    def ext_as(self, dtype) -> torch.Tensor:
        """``ext`` in ``dtype`` (autocast's half), converted once per batch, not once per step."""
        if dtype == self.ext.dtype:
            return self.ext
        if self._cast is None or self._cast.dtype != dtype:
            self._cast = self.ext.to(dtype)
        return self._cast

    def grad_buffer(self, dtype=None) -> torch.Tensor:
        if self.grad is None:
            self.grad = torch.zeros(self.ext.shape, dtype=dtype or self.ext.dtype,
                                    device=self.ext.device)
        return self.grad


class _Fold(Function):
    @staticmethod
    def forward(ctx, w, ww):
        ctx.ww = ww
        ctx.shape, ctx.dtype = w.shape, w.dtype
        return w.new_zeros(())

    @staticmethod
    def backward(ctx, _):
        ww = ctx.ww
        if ww.grad is None:
            return None, None
        dw = torch.zeros(ctx.shape, dtype=ctx.dtype, device=ww.grad.device)
        dw.index_add_(ww.dim, ww.index, ww.grad.to(ctx.dtype))
        ww.grad = None
        return dw, None


def permute_weight(w: torch.Tensor, mask: StepMask, dim: int) -> WindowedWeight:
    """``w`` prepared for the windows of ``mask`` along axis ``dim`` (once per batch)."""
    return WindowedWeight(w, mask, dim)


# ---------------------------------------------------------------- grouped GEMMs
#
# Groups that share a window (the "fixed" pattern, or a step pattern with few distinct masks per
# batch) are stacked into one GEMM: on a CPU a GEMM of B rows re-packs its weight panel every call,
# so fewer, taller GEMMs are what makes the skipped work show up as time saved.

def _window_groups(mask: StepMask):
    """[(offset, count, group indices or None for "all groups")] for the distinct windows."""
    windows = mask.host_windows()
    by_window: dict = {}
    for g, w in enumerate(windows):
        by_window.setdefault(w, []).append(g)
    if len(by_window) == 1:
        (o, k), = by_window
        return [(o, k, None)]
    return [(o, k, torch.tensor(gs)) for (o, k), gs in by_window.items() if k > 0]


def _rows(t: torch.Tensor, gs, k=None):
    """Rows of the groups ``gs`` stacked as a matrix (first ``k`` columns if given)."""
    sel = t if gs is None else t.index_select(0, gs)
    sel = sel.reshape(-1, sel.shape[-1])
    return sel if k is None else sel[:, :k]


def _put(dst: torch.Tensor, gs, k, value: torch.Tensor):
    """Write ``value`` (rows of groups ``gs``) into ``dst[gs, :, :k]``."""
    if gs is None:
        dst[..., :k] = value.view(*dst.shape[:-1], k)
    else:
        dst[gs, :, :k] = value.view(len(gs), dst.shape[1], k)


def _accumulate(dw: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``dw += a @ b``; under autocast ``a, b`` are half and the gradient buffer stays float32."""
    if dw.dtype == a.dtype:
        dw.addmm_(a, b)
    else:
        dw.add_(a @ b)


class _CompactMatmul(Function):
    """Consumer: ``Y_g = X_g[:, K_g] @ W[:, K_g]^T`` on compact input."""

    @staticmethod
    def forward(ctx, xc, token, ww, mask):
        w_ext = ww.ext_as(xc.dtype)
        groups = _window_groups(mask)
        g, b, _ = xc.shape
        covered = sum(g if gs is None else len(gs) for _, k, gs in groups if k)
        y = (xc.new_empty if covered == g else xc.new_zeros)(g, b, w_ext.shape[0])
        for o, k, gs in groups:
            if k:
                _put(y, gs, w_ext.shape[0], _rows(xc, gs, k) @ w_ext[:, o:o + k].t())
        ctx.groups, ctx.ww = groups, ww
        ctx.save_for_backward(xc)
        return y

    @staticmethod
    def backward(ctx, dy):
        xc, = ctx.saved_tensors
        w_ext = ctx.ww.ext_as(xc.dtype)
        dxc = torch.zeros_like(xc) if ctx.needs_input_grad[0] else None
        dw = ctx.ww.grad_buffer() if ctx.needs_input_grad[1] else None
        for o, k, gs in ctx.groups:
            if k == 0:
                continue
            d = _rows(dy, gs)
            if dxc is not None:
                _put(dxc, gs, k, d @ w_ext[:, o:o + k])
            if dw is not None:
                _accumulate(dw[:, o:o + k], d.t(), _rows(xc, gs, k))
        return dxc, token_grad(ctx), None, None


def token_grad(ctx):
    """The (zero) gradient a window op returns for its weight token; the real one is in ``ww.grad``."""
    return ctx.ww.token.new_zeros(()) if ctx.needs_input_grad[1] else None


@autocast_op
def compact_matmul(xc: torch.Tensor, ww: WindowedWeight, mask: StepMask) -> torch.Tensor:
    """Consumer GEMM on compact input: ``(G, B, kmax) x (Out, H+kmax) -> (G, B, Out)``."""
    return _CompactMatmul.apply(xc, ww.token, ww, mask)


class _MatmulCompact(Function):
    """Producer: ``Y_g[:, K_g] = X_g @ W[K_g, :]^T``, the kept output columns only."""

    @staticmethod
    def forward(ctx, x, token, ww, mask):
        w_ext = ww.ext_as(x.dtype)
        groups = _window_groups(mask)
        g, b, _ = x.shape
        yc = x.new_zeros(g, b, mask.kmax)
        for o, k, gs in groups:
            if k:
                _put(yc, gs, k, _rows(x, gs) @ w_ext[o:o + k].t())
        ctx.groups, ctx.ww = groups, ww
        ctx.save_for_backward(x)
        return yc

    @staticmethod
    def backward(ctx, dyc):
        x, = ctx.saved_tensors
        w_ext = ctx.ww.ext_as(x.dtype)
        dx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        dw = ctx.ww.grad_buffer() if ctx.needs_input_grad[1] else None
        for o, k, gs in ctx.groups:
            if k == 0:
                continue
            d = _rows(dyc, gs, k)
            if dx is not None:
                _put(dx, gs, x.shape[-1], d @ w_ext[o:o + k])
            if dw is not None:
                _accumulate(dw[o:o + k], d.t(), _rows(x, gs))
        return dx, token_grad(ctx), None, None


@autocast_op
def matmul_compact(x: torch.Tensor, ww: WindowedWeight, mask: StepMask) -> torch.Tensor:
    """Producer GEMM, kept output columns only: ``(G, B, In) x (H+kmax, In) -> (G, B, kmax)``."""
    return _MatmulCompact.apply(x, ww.token, ww, mask)


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
