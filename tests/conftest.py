"""Shared helpers: OpenNMT-py models built from command-line options, without any files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import onmt_sdrop.hook

onmt_sdrop.hook.install()

from onmt_sdrop.plugin.factory import model_from_args  # noqa: E402  (after the hook)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "iwslt14-sample"
VOCAB = 37


def build(*args: str, seed: int = 0, dtype=torch.float64):
    """A model built by OpenNMT-py's own builder from options, on CPU, in ``dtype``."""
    model, opt = model_from_args(args, vocab_size=VOCAB, seed=seed)
    return model.to(dtype), opt


def batch(b=5, s=9, t=7, seed=1):
    """A random batch: src (B, S, 1), tgt (B, T, 1), src_len (B,) with varied lengths."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (b, s, 1), generator=g)
    tgt = torch.randint(4, VOCAB, (b, t, 1), generator=g)
    src_len = torch.tensor([s] + [max(1, s - 1 - i) for i in range(b - 1)])
    for i, n in enumerate(src_len.tolist()):
        src[i, n:] = 1  # padding id
    return src, tgt, src_len


def loss_of(model, src, tgt, src_len):
    """Forward through model and generator; a scalar that touches every output."""
    out, attns = model(src, tgt, src_len)
    gen = getattr(model.generator, "linear", model.generator)  # CopyGenerator: its vocab part
    logits = gen(out.reshape(-1, out.shape[-1]))
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)
    return (logits * weights).sum() + sum((a * 0.3).sum() for a in attns.values()), out


def copy_weights(dst, src):
    """Strict load of ``src``'s parameters (generator included) into ``dst``."""
    torch.nn.Module.load_state_dict(dst, src.state_dict(), strict=True)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def run(cmd, cwd=None, timeout=600, env=None):
    """Run a command; returns CompletedProcess with text output."""
    e = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e)


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.fixture
def sample_dir():
    return SAMPLE
