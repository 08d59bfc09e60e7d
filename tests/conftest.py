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

from onmt_sdrop.factory import model_from_args  # noqa: E402  (after the hook)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "iwslt14-sample"
VOCAB = 37
# the option pair that selects the structured-dropout encoder and decoder
SDROP_PAIR = ("-encoder_type", "sdrop_brnn", "-decoder_type", "sdrop_rnn")


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
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype,
                             device=logits.device).view_as(logits)
    return (logits * weights).sum() + sum((a * 0.3).sum() for a in attns.values()), out


def assert_close_scaled(got, want, tol: float, msg=None):
    """``got`` equals ``want`` within ``tol``, relative and absolute; the absolute part grows with
    ``want``'s largest entry (half precision rounds relative to magnitude)."""
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, want.abs().max().item()),
                               msg=msg)


def ops_under_autocast(ops, device, amp: bool):
    """Outputs and input gradients of the producer, consumer and LSTM ops of backend ``ops`` on
    fixed float32 inputs, inside ``torch.autocast(device, float16)`` when ``amp``."""
    from onmt_sdrop.masks import sample_step_mask

    g = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(True)

    m = sample_step_mask(6, 33, 0.3, generator=g).to(device)
    x, w_in, w_out, xd = rand(6, 4, 21), rand(33, 21), rand(10, 33), rand(6, 4, 33)
    t, d, b, h = 7, 2, 3, 5
    lstm_in = [rand(t, d, b, 4 * h), rand(d, 4 * h, h), rand(d, b, h), rand(d, b, h)]
    valid = torch.arange(t, device=device)[:, None] < torch.tensor([7, 4, 1], device=device)
    with torch.autocast(device, dtype=torch.float16, enabled=amp):
        outs = [ops.matmul_compact(x, ops.permute_weight(w_in, m, 0), m),
                ops.compact_matmul(ops.gather(xd, m), ops.permute_weight(w_out, m, 1), m),
                *ops.lstm_sequence(*lstm_in, valid)]
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=device).view_as(o)).sum()
               for o in outs)
    leaves = [x, w_in, w_out, xd, *lstm_in]
    return outs, list(torch.autograd.grad(loss, leaves))


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
