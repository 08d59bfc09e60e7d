"""The generator (vocabulary projection) reading only the kept units of the decoder output.

It is OpenNMT-py's ``nn.Linear`` generator with another ``forward``: same parameters, same
checkpoints. In training, when its input is exactly the decoder output of the last forward pass and
that output was dropped with a compact pattern, each step's logits are
``dec_out_t[:, K_t] @ W[:, K_t]^T + b``; otherwise it is the plain linear layer.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Function
from onmt.utils.logging import logger

from ..ops import common


class GeneratorLink:
    """The compact decoder output of the last training forward, for the generator to consume.
    The generator recognises the decoder output it is given by its storage (pointer and size)."""

    def __init__(self, dense, site, compact):
        self.key = (dense.data_ptr(), dense.numel())
        self.site, self.compact = site, compact

    def matches(self, x) -> bool:
        return (x.data_ptr(), x.numel()) == self.key


class SdropGenerator(nn.Linear):
    def attach(self, decoder) -> None:
        # a weak reference, not a submodule: the state dict stays that of nn.Linear
        self.__dict__["_decoder_ref"] = weakref.ref(decoder)

    @classmethod
    def adopt(cls, linear: nn.Linear, decoder) -> "SdropGenerator":
        """Turn the stock generator into this class in place (tied weights stay tied)."""
        linear.__class__ = cls
        linear.attach(decoder)
        return linear

    def forward(self, x):
        ref = self.__dict__.get("_decoder_ref")
        decoder = ref() if ref is not None else None
        link = getattr(decoder, "sdrop_link", None)
        if link is None or not self.training:
            return self._dense(x)
        if not link.matches(x):
            # the loss handed over a copy or a slice of the decoder output: correct, but dense
            if not self.__dict__.get("_warned"):
                self.__dict__["_warned"] = True
                logger.info("sdrop: the generator's input is not the decoder output of the last "
                            "forward pass (a copy or a slice of it?); the generator runs dense")
            return self._dense(x)
        decoder.sdrop_link = None  # consumed: the compact tensors can go
        site, compact = link.site, link.compact                 # compact: (T, B, kmax)
        logits = site.matmul(compact, None, site.prep(self.weight, 1))   # (T, B, V)
        # rows of x are (batch, step) in batch-major order
        if not logits.transpose(0, 1).is_contiguous():
            return _BatchMajor.apply(logits, self.bias)
        # the backend stored the logits batch-major (CPU): the bias in place, no copy
        if self.bias is not None:
            logits = logits.add_(self.bias)
        return logits.transpose(0, 1).view(-1, logits.shape[-1])

    def _dense(self, x):
        """The plain linear layer; in CPU training a large output (the logits of a batch) goes
        into a kept buffer, as the compacted path's does (``common.output_buffer``), so that the
        dense mode and the compacted one pay the same for it."""
        rows = x.shape[0] if x.dim() == 2 else 0
        if (self.training and rows and torch.is_grad_enabled()
                and common.keeps_buffer(x.device, rows * self.weight.shape[0] * x.dtype.itemsize)
                and not torch.is_autocast_enabled("cpu")):   # keeps_buffer: on a CPU
            return _KeptLinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class _KeptLinear(Function):
    """``x W^T + b`` written into :func:`common.output_buffer`; backward as ``F.linear``'s."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        out = common.output_buffer(x, (x.shape[0], weight.shape[0]), (weight.shape[0], 1))
        if bias is None:
            torch.mm(x, weight.t(), out=out)
        else:
            torch.addmm(bias, x, weight.t(), out=out)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        dx = grad @ weight if ctx.needs_input_grad[0] else None
        dw = grad.t() @ x if ctx.needs_input_grad[1] else None
        db = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


class _BatchMajor(Function):
    """(T, B, V) step-major logits -> (B*T, V) batch-major rows, plus the bias: one pass over
    the (large) logits instead of a bias add and a transposing copy."""

    @staticmethod
    def forward(ctx, logits, bias):
        t, b, v = logits.shape
        out = logits.new_empty(b, t, v)
        if bias is None:
            out.copy_(logits.transpose(0, 1))
        else:
            torch.add(logits.transpose(0, 1), bias, out=out)
        ctx.shape, ctx.has_bias = (t, b, v), bias is not None
        return out.view(b * t, v)

    @staticmethod
    def backward(ctx, grad):
        t, b, v = ctx.shape
        d_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return grad.reshape(b, t, v).transpose(0, 1), d_bias   # a view: the GEMMs read it strided
