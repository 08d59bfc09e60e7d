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


def permute_weight(w: torch.Tensor, mask: StepMask, dim: int) -> torch.Tensor:
    """``w`` with its ``dim`` axis in extended permuted order (``H + kmax`` long). Differentiable."""
    return w.index_select(dim, mask.ext_perm())


# ---------------------------------------------------------------- consumer: Y_g = X_g[:, K_g] @ W[:, K_g]^T

class _CompactMatmul(Function):
    @staticmethod
    def forward(ctx, xc, w_ext, mask):
        windows = mask.host_windows()
        g, b, _ = xc.shape
        y = xc.new_empty(g, b, w_ext.shape[0])
        for i, (o, k) in enumerate(windows):
            if k == 0:
                y[i].zero_()
            else:
                torch.mm(xc[i, :, :k], w_ext[:, o:o + k].t(), out=y[i])
        ctx.windows = windows
        ctx.save_for_backward(xc, w_ext)
        return y

    @staticmethod
    def backward(ctx, dy):
        xc, w_ext = ctx.saved_tensors
        dxc = torch.zeros_like(xc) if ctx.needs_input_grad[0] else None
        dw = torch.zeros_like(w_ext) if ctx.needs_input_grad[1] else None
        for i, (o, k) in enumerate(ctx.windows):
            if k == 0:
                continue
            if dxc is not None:
                dxc[i, :, :k] = dy[i] @ w_ext[:, o:o + k]
            if dw is not None:
                dw[:, o:o + k].addmm_(dy[i].t(), xc[i, :, :k])
        return dxc, dw, None


def compact_matmul(xc: torch.Tensor, w_ext: torch.Tensor, mask: StepMask) -> torch.Tensor:
    """Consumer GEMM on compact input: ``(G, B, kmax) x (Out, H+kmax) -> (G, B, Out)``."""
    return _CompactMatmul.apply(xc, w_ext, mask)


# ---------------------------------------------------------------- producer: Y_g[:, K_g] = X_g @ W[K_g, :]^T

class _MatmulCompact(Function):
    @staticmethod
    def forward(ctx, x, w_ext, mask):
        windows = mask.host_windows()
        g, b, _ = x.shape
        yc = x.new_zeros(g, b, mask.kmax)
        for i, (o, k) in enumerate(windows):
            if k:
                yc[i, :, :k] = x[i] @ w_ext[o:o + k].t()
        ctx.windows = windows
        ctx.save_for_backward(x, w_ext)
        return yc

    @staticmethod
    def backward(ctx, dyc):
        x, w_ext = ctx.saved_tensors
        dx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        dw = torch.zeros_like(w_ext) if ctx.needs_input_grad[1] else None
        for i, (o, k) in enumerate(ctx.windows):
            if k == 0:
                continue
            d = dyc[i, :, :k]
            if dx is not None:
                torch.mm(d, w_ext[o:o + k], out=dx[i])
            if dw is not None:
                dw[o:o + k].addmm_(d.t(), x[i])
        return dx, dw, None


def matmul_compact(x: torch.Tensor, w_ext: torch.Tensor, mask: StepMask) -> torch.Tensor:
    """Producer GEMM, kept output columns only: ``(G, B, In) x (H+kmax, In) -> (G, B, kmax)``."""
    return _MatmulCompact.apply(x, w_ext, mask)


# ---------------------------------------------------------------- LSTM recurrence (dense W_hh, fused point-wise)

def lstm_pointwise(gates: torch.Tensor, c_prev: torch.Tensor):
    """Gate activations (order i, f, g, o as in ``nn.LSTM``), new cell and hidden state."""
    i, f, g, o = gates.chunk(4, -1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = torch.addcmul(f * c_prev, i, g)
    h = o * c.tanh()
    return torch.cat([i, f, g, o], -1), c, h


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
            i, f, g, o = acts[t].chunk(4, -1)
            tc = c_new[t].tanh()
            d_out = d_outs[t] if d_outs is not None else 0
            if ctx.has_valid:
                v = valid[t].to(acts.dtype)
                dhn = v * (dh + d_out)
                dcn = v * dc + dhn * o * (1 - tc * tc)
                carry_h, carry_c = (1 - v) * dh, (1 - v) * dc
            else:
                dhn = dh + d_out
                dcn = dc + dhn * o * (1 - tc * tc)
                carry_h = carry_c = 0
            dg = dgates[t]
            di, df, dgg, do = dg.chunk(4, -1)
            torch.mul(dcn * g, i * (1 - i), out=di)
            torch.mul(dcn * c_prev[t], f * (1 - f), out=df)
            torch.mul(dcn * i, 1 - g * g, out=dgg)
            torch.mul(dhn * tc, o * (1 - o), out=do)
            dh = torch.bmm(dg, w_hh) + carry_h
            dc = dcn * f + carry_c
        d_gx = dgates if ctx.needs_input_grad[0] else None
        d_whh = None
        if ctx.needs_input_grad[1]:
            # sum_t dgates_t^T h_{t-1}: one GEMM over all steps
            D = acts.shape[1]
            dg_all = dgates.permute(1, 3, 0, 2).reshape(D, acts.shape[3], -1)
            hp_all = h_prev.permute(1, 0, 2, 3).reshape(D, -1, h_prev.shape[3])
            d_whh = torch.bmm(dg_all, hp_all)
        return d_gx, d_whh, dh, dc, None


def lstm_sequence(gx, w_hh, h0, c0, valid=None):
    """Run an LSTM layer over precomputed input projections.

    gx: (T, D, B, 4h) input projections plus both biases, for D directions already in their own
    time order; w_hh: (D, 4h, h); h0, c0: (D, B, h); valid: (T, B) bool or None (state holds and
    output is zero where False). Returns outputs (T, D, B, h) and the final (h, c), each (D, B, h).
    """
    v = None if valid is None else valid[:, None, :, None]
    return _LSTMSequence.apply(gx, w_hh, h0, c0, v)
