"""Mask sampling: counts, sharing, variation across steps, scaling, reproducibility."""
from __future__ import annotations

import pytest
import torch

from onmt_sdrop.masks import StepMask, kept_count, sample_dense_mask, sample_step_mask
from onmt_sdrop.nn import make_site
from onmt_sdrop.ops import torch_backend


@pytest.mark.parametrize("size,p", [(500, 0.3), (37, 0.5), (10, 0.0), (7, 0.9)])
def test_fixed_count_and_scale(size, p):
    m = sample_step_mask(12, size, p)
    k = kept_count(size, p)
    assert k == size - round(p * size)
    dense = m.dense(torch.float64)
    assert ((dense != 0).sum(1) == k).all()
    assert torch.allclose(dense[dense != 0], torch.tensor(size / k, dtype=torch.float64))
    # every kept set is a set: window indices are distinct units
    idx = m.window_index()
    assert all(len(set(row.tolist())) == m.kmax for row in idx)


def test_step_varies_across_steps_fixed_does_not():
    torch.manual_seed(0)
    step = sample_step_mask(20, 64, 0.3).dense()
    fixed = sample_step_mask(20, 64, 0.3, fixed=True).dense()
    assert len({tuple(r.tolist()) for r in step}) > 15
    assert len({tuple(r.tolist()) for r in fixed}) == 1


def test_step_mask_is_shared_across_the_batch():
    torch.manual_seed(0)
    site = make_site(0.4, pattern="step", count="fixed", mode="dense", ops=torch_backend, steps=6,
                     batch=5, size=32, device="cpu", dtype=torch.float32, training=True)
    m = site.mask                                     # (T, B, H)
    assert torch.equal(m, m[:, :1].expand_as(m))      # same within the batch
    assert not torch.equal(m[0], m[1])                 # new units each step


def test_sample_and_element_patterns():
    torch.manual_seed(0)
    s = sample_dense_mask((6, 5, 40), 0.5, "sample")
    assert torch.equal(s, s[:1].expand_as(s))          # same over time
    assert not torch.equal(s[0, 0], s[0, 1])           # differs per sample
    e = sample_dense_mask((6, 5, 40), 0.5, "element")
    assert not torch.equal(e[0], e[1])
    assert set(torch.unique(e).tolist()) == {0.0, 2.0}


def test_marginal_keep_rate_is_uniform():
    """Each unit is kept with probability (1-p) at a step, whatever its position."""
    torch.manual_seed(0)
    hits = torch.zeros(50)
    n = 2000
    for _ in range(n // 20):
        hits += (sample_step_mask(20, 50, 0.3).dense() != 0).float().sum(0)
    rate = hits / n
    assert (rate - 0.7).abs().max() < 0.06


def test_bernoulli_count_mean_and_scale():
    torch.manual_seed(0)
    m = sample_step_mask(4000, 100, 0.3, count="bernoulli")
    counts = m.counts.float()
    assert abs(counts.mean().item() - 70) < 0.5
    assert counts.std() > 2                              # really varies
    assert torch.allclose(m.scale, torch.tensor(1 / 0.7))
    d = m.dense(torch.float64)
    assert ((d != 0).sum(1) == m.counts).all()


def test_reproducible_under_seed():
    torch.manual_seed(7)
    a = sample_step_mask(8, 30, 0.3).dense()
    torch.manual_seed(7)
    b = sample_step_mask(8, 30, 0.3).dense()
    assert torch.equal(a, b)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_rate_out_of_range(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        sample_step_mask(3, 10, p)


def test_packed_mask_is_one_buffer_and_refills_in_place():
    """Host -> GPU is one copy of one packed buffer (pinned, asynchronous); a mask unpacked from
    a buffer is views of it, so writing a new packed mask into it is a new mask (CUDA graphs)."""
    torch.manual_seed(0)
    a, b = sample_step_mask(6, 20, 0.3), sample_step_mask(6, 20, 0.3)
    view = a.unpacked(a.packed().clone())
    for got, want in ((view.perm, a.perm), (view.offsets, a.offsets), (view.counts, a.counts)):
        assert torch.equal(got, want)
    torch.testing.assert_close(view.dense(torch.float64), a.dense(torch.float64))
    view.buffer.copy_(b.packed())
    assert torch.equal(view.perm, b.perm) and torch.equal(view.offsets, b.offsets)
    # derived index tensors are cached per mask object: a fresh one over the buffer sees b
    torch.testing.assert_close(view.unpacked(view.buffer).dense(torch.float64),
                               b.dense(torch.float64))
    assert not torch.equal(a.dense(), b.dense())


def test_host_index_goes_to_a_gpu_pinned_and_asynchronously(monkeypatch):
    """The group index of steps that share a window reaches a GPU by one pinned, non-blocking
    copy (a pageable one would stall the host); elsewhere it is a plain tensor."""
    from onmt_sdrop.masks import host_index

    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: calls.append("pin") or t)
    monkeypatch.setattr(torch.Tensor, "to",
                        lambda t, device, non_blocking=False: calls.append((str(device),
                                                                            non_blocking)) or t)
    t = host_index([3, 1, 4], torch.device("cuda"))
    assert calls == ["pin", ("cuda", True)] and t.tolist() == [3, 1, 4] and t.dtype == torch.long
    monkeypatch.undo()
    assert host_index([2, 0], "cpu").tolist() == [2, 0]


@pytest.mark.parametrize("size,p,align", [(500, 0.3, 8), (50, 0.3, 8), (64, 0.5, 16),
                                          (10, 0.0, 8), (12, 0.5, 5)])
def test_aligned_windows(size, p, align):
    """Windows start at multiples of ``align``; the compact width is padded to one (never past
    ``size``); every step keeps exactly its count, scaled as without alignment."""
    torch.manual_seed(size)
    m = sample_step_mask(40, size, p, align=align)
    k = kept_count(size, p)
    assert all(o % align == 0 and 0 <= o < size for o, _ in m.windows)
    assert m.kmax == min(-(-k // align) * align, size) and m.kmax >= k
    dense = m.dense(torch.float64)
    assert ((dense != 0).sum(1) == k).all()
    assert torch.allclose(dense[dense != 0], torch.tensor(size / k, dtype=torch.float64))
    # padding columns point at dropped units (a scatter of the compact tensor stays exact)
    idx = m.window_index()
    assert all(len(set(row.tolist())) == m.kmax for row in idx)
    assert len({o for o, _ in m.windows}) > 1 or size <= align
    # every form of the mask says its alignment (a CUDA graph's refill keeps it)
    assert m.align == align and m.step(3).align == align and m.packed_to("cpu").align == align
    assert StepMask.cat([m.step(0), m.step(slice(1, 3))]).align == align
    assert sample_step_mask(4, size, p).align == 1


def test_aligned_windows_keep_the_statistics_of_step_dropout():
    """Aligned windows change no per-step statistic: every unit is kept with probability 1 - p
    (also where the size is not a multiple of the alignment), and two units are kept together
    at a step as often as in a uniformly random k-subset. Across steps, two steps' kept sets
    overlap by k^2 / H units on average, as independent random subsets do (README "Aligned
    windows": the spread of the overlap is what changes)."""
    torch.manual_seed(0)
    size, p, align, draws = 50, 0.3, 8, 3000
    k = kept_count(size, p)
    keep = torch.stack([(sample_step_mask(2, size, p, align=align).dense() != 0).double()
                        for _ in range(draws)])       # (draws, 2 steps, size)
    steps = keep.reshape(-1, size)
    assert ((steps.mean(0) - k / size).abs() < 0.04).all()
    pairs = (steps.T @ steps) / len(steps)
    off = ~torch.eye(size, dtype=torch.bool)
    assert ((pairs[off] - k * (k - 1) / (size * (size - 1))).abs() < 0.05).all()
    overlap = (keep[:, 0] * keep[:, 1]).sum(1)          # two steps of one mask
    assert abs(overlap.mean().item() - k * k / size) < 0.4


def test_align_out_of_range():
    with pytest.raises(ValueError, match="align must be >= 1"):
        sample_step_mask(3, 10, 0.3, align=0)
