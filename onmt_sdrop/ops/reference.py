"""Dense masked reference of every op, in plain autograd PyTorch: what the backends must equal."""
from __future__ import annotations

import torch

from ..masks import StepMask


def consumer(x: torch.Tensor, w: torch.Tensor, mask: StepMask) -> torch.Tensor:
    """``(x * m_g) @ w^T`` per group: (G, B, H) x (Out, H) -> (G, B, Out)."""
    return (x * mask.dense(x.dtype)[:, None, :]) @ w.t()


def producer(x: torch.Tensor, w: torch.Tensor, b, act, mask: StepMask) -> torch.Tensor:
    """``act(x @ w^T + b) * m_g`` per group: (G, B, In) x (H, In) -> (G, B, H)."""
    y = x @ w.t()
    if b is not None:
        y = y + b
    return act(y) * mask.dense(x.dtype)[:, None, :]


def lstm_sequence(gx, w_hh, h0, c0, valid=None):
    """Same contract as :func:`onmt_sdrop.ops.torch_backend.lstm_sequence`, step by step."""
    h, c, outs = h0, c0, []
    for t in range(gx.shape[0]):
        gates = gx[t] + torch.bmm(h, w_hh.transpose(1, 2))
        i, f, g, o = gates.chunk(4, -1)
        cn = f.sigmoid() * c + i.sigmoid() * g.tanh()
        hn = o.sigmoid() * cn.tanh()
        if valid is None:
            h, c = hn, cn
            outs.append(hn)
        else:
            v = valid[t][None, :, None]
            h, c = torch.where(v, hn, h), torch.where(v, cn, c)
            outs.append(hn * v)
    return torch.stack(outs), h, c
