"""CI has no GPU, yet the GPU bugs of one class must be caught here: a tensor the ops make on the
CPU meeting the data on another device, and host syncs (``.tolist()``, ``.item()``, ``int(t)``)
in forward or backward. The data lives on the ``meta`` device, which holds no values (a host
sync fails on it), and a dispatch mode fails every aten op whose tensor arguments are on two
devices (torch's own check lets a CPU index tensor through on ``meta``, not on ``cuda``)."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import batch, build
from onmt_sdrop.masks import sample_step_mask
from onmt_sdrop.ops import torch_backend

META = torch.device("meta")


class OneDevice(TorchDispatchMode):
    """Fails any aten op whose tensor arguments (other than 0-dim CPU scalars) are on more than
    one device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        leaves = tree_leaves((args, kwargs or {}))
        devices = {t.device for t in leaves if isinstance(t, torch.Tensor)
                   and not (t.device.type == "cpu" and t.dim() == 0)}
        assert len(devices) <= 1, f"{func} mixes devices {sorted(map(str, devices))}"
        return func(*args, **(kwargs or {}))


def test_the_guard_catches_a_cpu_index_on_another_device():
    x = torch.randn(4, 3, device=META)
    x.index_select(0, torch.tensor([0, 2], device=META))  # same device: fine
    with pytest.raises(AssertionError, match="mixes devices"):
        with OneDevice():
            x.index_select(0, torch.tensor([0, 2]))
    with pytest.raises(RuntimeError):
        torch.ones(3, device=META).sum().item()       # a host sync fails on meta


@pytest.mark.parametrize("distinct", [0, 2, 1])     # fresh windows, shared windows, one window
def test_ops_make_no_cpu_tensors_and_no_host_syncs(distinct):
    m = sample_step_mask(6, 33, 0.3, distinct=distinct).to(META)
    ops = torch_backend

    def leaf(*shape):
        return torch.empty(*shape, device=META).requires_grad_(True)

    x, w_in, w_out, xd, b = leaf(6, 4, 21), leaf(33, 21), leaf(10, 33), leaf(6, 4, 33), leaf(33)
    lstm_in = [leaf(7, 2, 3, 20), leaf(2, 20, 5), leaf(2, 3, 5), leaf(2, 3, 5)]
    valid = torch.ones(7, 3, dtype=torch.bool, device=META)
    with OneDevice():
        outs = [ops.matmul_compact(x, ops.permute_weight(w_in, m, 0), m) + b[m.window_index()][:, None],
                ops.compact_matmul(ops.gather(xd, m), ops.permute_weight(w_out, m, 1), m),
                ops.scatter(ops.gather(xd, m), m),
                *ops.lstm_sequence(*lstm_in, valid)]
        # per-step calls, as the input-fed decoder makes them, with one weight for all steps
        ww = ops.permute_weight(w_out, m, 1)
        outs += [ops.compact_matmul(ops.gather(xd[t:t + 1], m.step(t)), ww, m.step(t))
                 for t in range(m.groups)]
        grads = torch.autograd.grad(sum(o.sum() for o in outs), [x, w_in, w_out, xd, b, *lstm_in])
    assert all(g.device == META for g in grads)


@pytest.mark.parametrize("extra", [[], ["-input_feed", "0"], ["-sdrop_step_masks", "3"],
                                   ["-sdrop_window_align", "4"],
                                   ["-sdrop_pattern", "fixed"]])
def test_full_training_step_on_another_device(extra):
    """Encoder, decoder (input feed on/off), attention, generator and backward, all on meta."""
    model, _ = build("-encoder_type", "sdrop_brnn", "-decoder_type", "sdrop_rnn", "-layers", "2",
                     "-hidden_size", "16", "-word_vec_size", "8", "-dropout", "0.3",
                     "-sdrop_backend", "torch", *extra, dtype=torch.float32)
    model.to(META).train()
    src, tgt, src_len = (t.to(META) for t in batch())
    with OneDevice():
        out, attns = model(src, tgt, src_len)
        logits = model.generator(out.reshape(-1, out.shape[-1]))
        (logits.sum() + sum(a.sum() for a in attns.values())).backward()
    assert all(p.grad is not None and p.grad.device == META
               for n, p in model.named_parameters() if "embeddings" not in n)
