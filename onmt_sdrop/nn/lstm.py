"""LSTM layers whose input GEMMs go through dropout sites.

The weights are those of ``nn.LSTM`` / ``nn.LSTMCell`` (gate order i, f, g, o; two biases), so a
model can load the very state dict of its stock twin. Per layer:

    G_x = drop(x) W_ih^T + b_ih + b_hh     for all steps at once (one grouped GEMM, both directions)
    h_t, c_t = LSTM(G_x[t] + h_{t-1} W_hh^T, c_{t-1})   the recurrence, dense

The decoder with input feeding cannot precompute ``G_x``; :func:`lstm_cell` is its per-step form.
"""
from __future__ import annotations

import torch

from ..ops.common import StepSummedWeight


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence of ``x`` (T, B, ...) within its own length; padding stays in place."""
    steps = x.shape[0]
    if lengths is None:
        return x.flip(0)
    t = torch.arange(steps, device=x.device)[:, None]
    idx = torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
    idx = idx.view(steps, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, idx)


def lstm_layer_weights(rnn: torch.nn.LSTM, layer: int):
    """(W_ih stacked over directions, b_ih + b_hh stacked, W_hh as (D, 4h, h)) of one layer."""
    sfx = [f"_l{layer}"] + ([f"_l{layer}_reverse"] if rnn.bidirectional else [])
    w_ih = torch.cat([getattr(rnn, "weight_ih" + s) for s in sfx], 0)
    bias = torch.cat([getattr(rnn, "bias_ih" + s) + getattr(rnn, "bias_hh" + s) for s in sfx], 0)
    w_hh = torch.stack([getattr(rnn, "weight_hh" + s) for s in sfx], 0)
    return w_ih, bias, w_hh


def run_lstm(rnn: torch.nn.LSTM, x: torch.Tensor, sites, ops, lengths=None, state=None):
    """Run the stacked (bi)LSTM ``rnn`` (parameters only) over ``x`` (T, B, In).

    ``sites[l]`` is the dropout site of layer ``l``'s input (the embeddings for layer 0).
    Returns the top layer's outputs (T, B, D*h), zero at padded steps, and the final ``(h_n, c_n)``
    in ``nn.LSTM``'s layout ((layers*D), B, h), taken at each sequence's last valid step.
    """
    steps, batch, _ = x.shape
    d = 2 if rnn.bidirectional else 1
    h = rnn.hidden_size
    valid = None
    if lengths is not None:
        valid = torch.arange(steps, device=x.device)[:, None] < lengths[None, :]
    h_n, c_n = [], []
    for layer in range(rnn.num_layers):
        w_ih, bias, w_hh = lstm_layer_weights(rnn, layer)
        site = sites[layer]
        gx = site.matmul(site.drop(x, None), None, site.prep(w_ih, 1)) + bias
        gx = gx.view(steps, batch, d, 4 * h)
        if d == 2:
            gx = torch.stack([gx[:, :, 0], reverse_padded(gx[:, :, 1], lengths)], 1)
        else:
            gx = gx.transpose(1, 2)
        if state is None:
            h0 = c0 = x.new_zeros(d, batch, h)
        else:
            h0, c0 = (s[layer * d:(layer + 1) * d] for s in state)
        outs, h_last, c_last = ops.lstm_sequence(gx, w_hh, h0, c0, valid)
        if d == 2:
            x = torch.cat([outs[:, 0], reverse_padded(outs[:, 1], lengths)], -1)
        else:
            x = outs[:, 0]
        h_n.append(h_last)
        c_n.append(c_last)
    return x, (torch.cat(h_n, 0), torch.cat(c_n, 0))


def recurrent_weight(cell: torch.nn.LSTMCell) -> StepSummedWeight:
    """``cell``'s ``W_hh`` for one batch of per-step calls: its gradient is one GEMM over all
    steps."""
    return StepSummedWeight(cell.weight_hh)


def lstm_cell(ops, gx: torch.Tensor, w_hh: StepSummedWeight, h: torch.Tensor, c: torch.Tensor):
    """One step of an LSTM cell given its input projection ``gx`` (B, 4h) with both biases added
    and its :func:`recurrent_weight`."""
    return ops.lstm_cell(w_hh.tap(gx, h), w_hh.w, h, c)
