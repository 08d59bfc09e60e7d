"""Autocast (AMP, OpenNMT-py's ``-model_dtype fp16``) for the compacted ops of every backend.

A custom autograd Function is opaque to autocast: its inputs arrive in whatever dtype the caller
had, and the torch ops inside would pick their own. ``autocast_op`` does for an op what
``torch.amp.custom_fwd(cast_inputs=...)`` does, with the dtype autocast is using at the call:
floating tensor arguments are cast to it (the casts are on the autograd graph, so gradients come
back in the callers' dtypes) and the op runs with autocast off, choosing its own precision inside
(float32 accumulation, float32 weight-gradient buffers).
"""
from __future__ import annotations

import functools

import torch


def autocast_op(op):
    @functools.wraps(op)
    def run(first: torch.Tensor, *args):
        device = first.device.type
        if not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
            return op(first, *args)
        dtype = torch.get_autocast_dtype(device)
        first, *args = (a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
                        else a for a in (first, *args))
        with torch.autocast(device, enabled=False):
            return op(first, *args)
    return run
