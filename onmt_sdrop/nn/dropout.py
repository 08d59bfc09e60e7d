"""Dropout sites: where a dropped activation meets the GEMMs that consume or produce it.

A site lives for one forward pass over ``T`` steps. It draws its masks at construction and offers
the few operations the LSTM code needs, so that the modules are written once for every pattern:

* ``prep(w, dim)``          -- the weight as the site wants it (permuted once per batch if compact)
* ``drop(x, t)``            -- the dropped value of ``x`` at step ``t`` (``t=None``: all steps)
* ``matmul(v, t, w)``       -- ``v @ w^T`` for a dropped value ``v`` (consumer GEMM)
* ``produce(x, t, w, b, act)`` -- the dropped value of ``act(x @ w^T + b)`` (producer GEMM)
* ``dense(v, t)``           -- the dropped value as a dense tensor (zeros at dropped units)

For the compact site a "dropped value" is a ``(..., B, kmax)`` compact tensor and the GEMMs touch
only kept units; for the others it is a dense tensor and the GEMMs are the plain ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..masks import COMPACT_PATTERNS, sample_dense_mask, sample_step_mask


class NoDrop:
    """Evaluation, or dropout 0: the identity."""

    compact = False

    def prep(self, w, dim):
        return w

    def drop(self, x, t):
        return x

    def matmul(self, v, t, w):
        return F.linear(v, w)

    def produce(self, x, t, w, b, act):
        return act(F.linear(x, w, b))

    def dense(self, v, t):
        return v


class DenseDrop(NoDrop):
    """Dropout by a dense multiplicative mask (T, B, H): every pattern, no work skipped."""

    def __init__(self, mask):
        self.mask = mask

    def _m(self, t):
        return self.mask if t is None else self.mask[t]

    def drop(self, x, t):
        return x * self._m(t)

    def produce(self, x, t, w, b, act):
        return act(F.linear(x, w, b)) * self._m(t)


class CompactDrop:
    """Step/fixed dropout computed on kept units only, by the ops backend ``ops``."""

    compact = True

    def __init__(self, mask, ops):
        self.mask = mask
        self.ops = ops
        self._steps = {}

    def _m(self, t):
        if t is None:
            return self.mask
        if t not in self._steps:   # a step's mask is asked for by several ops
            self._steps[t] = self.mask.step(t)
        return self._steps[t]

    @staticmethod
    def _3d(x, t):
        return x if t is None else x.unsqueeze(0)

    @staticmethod
    def _out(y, t):
        return y if t is None else y.squeeze(0)

    def prep(self, w, dim):
        return self.ops.permute_weight(w, self.mask, dim)

    def drop(self, x, t):
        return self._out(self.ops.gather(self._3d(x, t), self._m(t)), t)

    def matmul(self, v, t, w_ext):
        return self._out(self.ops.compact_matmul(self._3d(v, t), w_ext, self._m(t)), t)

    def produce(self, x, t, w_ext, b, act):
        m = self._m(t)
        y = self.ops.matmul_compact(self._3d(x, t), w_ext, m)
        if b is not None:
            y = y + b[m.window_index()][:, None, :]
        y = act(y) * m.column_weight(y.dtype)[:, None, :]
        return self._out(y, t)

    def dense(self, v, t):
        return self._out(self.ops.scatter(self._3d(v, t), self._m(t)), t)


# Where the step/fixed masks come from: drawn on the host RNG and copied to the device, unless a
# source is installed (CUDA graphs: masks in static device buffers, refilled before each replay).
_mask_source = None


def set_mask_source(source):
    """Install ``source(steps, size, p, count, fixed, distinct, align, device) -> StepMask``
    (None: the default); returns the previous one."""
    global _mask_source
    previous, _mask_source = _mask_source, source
    return previous


def draw_step_mask(steps, size, p, *, count, fixed, distinct, align, device):
    if _mask_source is not None:
        return _mask_source(steps, size, p, count, fixed, distinct, align, device)
    return sample_step_mask(steps, size, p, count=count, fixed=fixed, distinct=distinct,
                            align=align).to(device)


def make_site(p, *, pattern, count, mode, ops, steps, batch, size, device, dtype, training,
              distinct=0, align=1):
    """The site for one dropout location of one forward pass.

    ``mode`` is "compact" (skip dropped work where the pattern allows it) or "dense" (masked
    reference path). Masks are drawn on the host RNG (reproducible under ``torch.manual_seed``).
    """
    if not training or p == 0:
        return NoDrop()
    if pattern in COMPACT_PATTERNS:
        mask = draw_step_mask(steps, size, p, count=count, fixed=pattern == "fixed",
                              distinct=distinct, align=align, device=device)
        if mode == "compact":
            return CompactDrop(mask, ops)
        dense = mask.dense(dtype)[:, None, :].expand(steps, batch, size)
        return DenseDrop(dense)
    return DenseDrop(sample_dense_mask((steps, batch, size), p, pattern, dtype=dtype, device=device))
