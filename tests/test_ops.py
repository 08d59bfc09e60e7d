"""Compacted ops of every available backend against the dense masked reference (float64)."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_close_scaled, ops_under_autocast
from onmt_sdrop.masks import StepMask, sample_step_mask
from onmt_sdrop.nn import CompactDrop
from onmt_sdrop.ops import reference, torch_backend

BACKENDS = [torch_backend]


def masks(size):
    """Random fixed-count, Bernoulli-count, aligned (padded), all-kept and none-kept groups."""
    torch.manual_seed(size)
    yield sample_step_mask(5, size, 0.3)
    yield sample_step_mask(5, size, 0.5, count="bernoulli")
    yield sample_step_mask(5, size, 0.3, align=4)
    perm = torch.randperm(size)
    yield StepMask(perm, torch.tensor([0, 3, size - 1]), torch.tensor([size, 0, 1]),
                   torch.tensor([1.0, 1.0, float(size)]), size, size)


@pytest.mark.parametrize("ops", BACKENDS)
@pytest.mark.parametrize("size,out,batch", [(11, 7, 3), (32, 20, 1), (17, 64, 6)])
def test_consumer_matches_reference(ops, size, out, batch):
    for m in masks(size):
        g = m.groups
        x = torch.randn(g, batch, size, dtype=torch.float64, requires_grad=True)
        w = torch.randn(out, size, dtype=torch.float64, requires_grad=True)

        def f(x, w, m=m):
            return ops.compact_matmul(ops.gather(x, m), ops.permute_weight(w, m, 1), m)

        y = f(x, w)
        torch.testing.assert_close(y, reference.consumer(x, w, m), rtol=1e-12, atol=1e-12)
        dy = torch.randn_like(y)
        gx, gw = torch.autograd.grad(y, (x, w), dy)
        rx, rw = torch.autograd.grad(reference.consumer(x, w, m), (x, w), dy)
        torch.testing.assert_close(gx, rx, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gw, rw, rtol=1e-12, atol=1e-12)
        # dX is zero at dropped units, without being computed there
        assert (gx[m.dense(torch.float64)[:, None, :].expand_as(gx) == 0] == 0).all()
        assert torch.autograd.gradcheck(f, (x, w))


def test_wide_consumer_in_column_tiles_matches_reference(monkeypatch):
    """The torch backend's column-tiled consumer (a wide output, many windows: the generator on a
    CPU) is exact in forward, dX and dW, for one-step and shared windows and ragged counts; its
    output is stored batch-major (the loss's row order)."""
    monkeypatch.setattr(torch_backend, "OUT_TILE", 4)
    torch.manual_seed(1)
    for m in (sample_step_mask(6, 13, 0.3), sample_step_mask(6, 13, 0.3, distinct=2),
              sample_step_mask(9, 13, 0.3, distinct=4),
              sample_step_mask(6, 13, 0.5, count="bernoulli")):
        x = torch.randn(m.groups, 3, 13, dtype=torch.float64, requires_grad=True)
        w = torch.randn(18, 13, dtype=torch.float64, requires_grad=True)   # 4 tiles and a part
        y = torch_backend.compact_matmul(torch_backend.gather(x, m),
                                         torch_backend.permute_weight(w, m, 1), m)
        assert y.transpose(0, 1).is_contiguous() == (len(m.window_groups()) >= 4)   # tiled
        want = reference.consumer(x, w, m)
        torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
        dy = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, w), dy)
        for g, r in zip(got, torch.autograd.grad(want, (x, w), dy)):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_cpu_short_gemms_read_column_major_blocks():
    """On a CPU, per-step GEMMs (several windows) read each step's compact (B, k) block
    column-major, which MKL's short GEMMs do fastest, and write the forward's output row-major
    (what the LSTM code reads next); one window (one tall GEMM) stays row-major. The values are
    those of the reference either way."""
    torch.manual_seed(2)
    for m, blocks in ((sample_step_mask(4, 12, 0.3), True),
                      (sample_step_mask(4, 12, 0.3, fixed=True), False)):
        x = torch.randn(4, 3, 12, dtype=torch.float64, requires_grad=True)
        w = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
        xc = torch_backend.gather(x, m)
        y = torch_backend.compact_matmul(xc, torch_backend.permute_weight(w, m, 1), m)
        assert xc.transpose(1, 2).is_contiguous() == blocks
        assert xc.is_contiguous() != blocks
        assert y.is_contiguous()
        want = reference.consumer(x, w, m)
        torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
        dy = torch.randn_like(y)
        for g, r in zip(torch.autograd.grad(y, (x, w), dy), torch.autograd.grad(want, (x, w), dy)):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tile", [None, 4])
def test_cpu_groups_run_side_by_side_on_threads(monkeypatch, tile):
    """With several CPU threads, the groups of a grouped GEMM (forward, dX) and the column ranges
    of its weight gradient run side by side, one thread each with torch single-threaded: exact
    in all six GEMMs (tiled and untiled), and torch's thread count is restored."""
    import threading
    monkeypatch.setattr(torch_backend, "SIDE_BY_SIDE_MACS", 0)
    if tile:
        monkeypatch.setattr(torch_backend, "OUT_TILE", tile)
    seen = set()
    mm_into = torch_backend._mm_into

    def spy(*args, **kwargs):
        seen.add((threading.get_ident(), torch.get_num_threads()))
        return mm_into(*args, **kwargs)

    monkeypatch.setattr(torch_backend, "_mm_into", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(4)
        for m in (sample_step_mask(7, 13, 0.3), sample_step_mask(7, 13, 0.3, distinct=3),
                  sample_step_mask(6, 13, 0.5, count="bernoulli")):
            x = torch.randn(m.groups, 3, 13, dtype=torch.float64, requires_grad=True)
            w = torch.randn(18, 13, dtype=torch.float64, requires_grad=True)
            y = torch_backend.compact_matmul(torch_backend.gather(x, m),
                                             torch_backend.permute_weight(w, m, 1), m)
            want = reference.consumer(x, w, m)
            torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
            dy = torch.randn_like(y)
            for g, r in zip(torch.autograd.grad(y, (x, w), dy),
                            torch.autograd.grad(want, (x, w), dy)):
                torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
            x = torch.randn(m.groups, 3, 9, dtype=torch.float64, requires_grad=True)
            w = torch.randn(13, 9, dtype=torch.float64, requires_grad=True)
            b = torch.randn(13, dtype=torch.float64, requires_grad=True)
            y = CompactDrop(m, torch_backend).produce(
                x, None, torch_backend.permute_weight(w, m, 0), b, torch.tanh)
            want = reference.producer(x, w, b, torch.tanh, m)
            torch.testing.assert_close(torch_backend.scatter(y, m), want, rtol=1e-12, atol=1e-12)
            dy = torch.randn_like(want)
            got = torch.autograd.grad(torch_backend.scatter(y, m), (x, w, b), dy)
            for g, r in zip(got, torch.autograd.grad(want, (x, w, b), dy)):
                torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert len({ident for ident, _ in seen}) == 2          # two threads did GEMMs
    assert {n for _, n in seen} == {1}                      # each single-threaded


def test_on_this_thread_keeps_every_gemm_on_the_calling_thread(monkeypatch):
    """Inside ``on_this_thread()`` (for profilers and dispatch modes, which see one thread) no
    group runs on a worker, even where side by side would; after it they do again."""
    import threading
    monkeypatch.setattr(torch_backend, "SIDE_BY_SIDE_MACS", 0)
    seen = []
    mm_into = torch_backend._mm_into

    def spy(*args, **kwargs):
        seen.append(threading.get_ident())
        return mm_into(*args, **kwargs)

    monkeypatch.setattr(torch_backend, "_mm_into", spy)
    torch.manual_seed(5)
    m = sample_step_mask(6, 13, 0.3)
    x = torch.randn(m.groups, 3, 13, dtype=torch.float64)
    w = torch.randn(18, 13, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch_backend.on_this_thread():
            inside = torch_backend.compact_matmul(torch_backend.gather(x, m),
                                                  torch_backend.permute_weight(w, m, 1), m)
        on_caller, seen[:] = set(seen), []
        after = torch_backend.compact_matmul(torch_backend.gather(x, m),
                                             torch_backend.permute_weight(w, m, 1), m)
    finally:
        torch.set_num_threads(threads)
    assert on_caller == {threading.get_ident()}
    assert len(set(seen)) == 2                          # side by side again after it
    assert torch_backend.SIDE_BY_SIDE_MACS == 0         # restored
    torch.testing.assert_close(inside, after, rtol=0, atol=0)
    torch.testing.assert_close(inside, reference.consumer(x, w, m), rtol=1e-12, atol=1e-12)


def test_side_by_side_restores_threads_when_a_share_fails():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def work(share):
            if share == [1]:
                raise RuntimeError("boom")
        with pytest.raises(RuntimeError, match="boom"):
            torch_backend._run_side_by_side(work, [[0], [1]])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_reusable_buffer_is_reused_once_what_it_handed_out_is_gone(monkeypatch):
    """Also when the caller's view is the buffer itself (the default): an alias is handed out,
    so that its death, not the kept buffer's, frees the buffer."""
    from onmt_sdrop.ops import common

    monkeypatch.setattr(common, "REUSE_BYTES", 1)
    w = torch.zeros(3)
    for view in (None, torch.Tensor.zero_):
        first = common.reusable_buffer(w, "t", (4, 5), torch.float32, view)
        ptr = first.data_ptr()
        del first
        again = common.reusable_buffer(w, "t", (4, 5), torch.float32, view)
        assert again.data_ptr() == ptr
        assert common.reusable_buffer(w, "t", (4, 5), torch.float32, view).data_ptr() != ptr
        del again


def test_large_cpu_buffers_are_reused_only_once_their_batch_is_gone(monkeypatch):
    """A weight's permuted copy and its gradient buffer (large ones, on a CPU) are handed to the
    next batch once the previous batch's graph is gone, never while it lives; gradients stay
    exact across batches."""
    from onmt_sdrop.ops import common

    monkeypatch.setattr(common, "REUSE_BYTES", 1)
    torch.manual_seed(3)
    w = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)

    def batch_loss():
        m = sample_step_mask(4, 12, 0.3)
        x = torch.randn(4, 3, 12, dtype=torch.float64)
        ww = torch_backend.permute_weight(w, m, 1)
        y = torch_backend.compact_matmul(torch_backend.gather(x, m), ww, m)
        return ww.ext, y.square().sum(), reference.consumer(x, w, m).square().sum()

    ext1, loss1, want1 = batch_loss()
    ptr1, kept1 = ext1.data_ptr(), ext1.clone()
    ext2, loss2, want2 = batch_loss()               # batch 1 still alive: a buffer of its own
    ptr2 = ext2.data_ptr()
    assert ptr2 != ptr1
    torch.testing.assert_close(ext1, kept1, rtol=0, atol=0)
    for loss, want in ((loss1, want1), (loss2, want2)):
        g, = torch.autograd.grad(loss, w)
        torch.testing.assert_close(g, torch.autograd.grad(want, w)[0], rtol=1e-12, atol=1e-12)
    del ext1, loss1, ext2, loss2, loss
    for _ in range(2):                              # the last batch gone: its buffers again
        ext, loss, want = batch_loss()
        assert ext.data_ptr() == ptr2
        g, = torch.autograd.grad(loss, w)
        torch.testing.assert_close(g, torch.autograd.grad(want, w)[0], rtol=1e-12, atol=1e-12)
        del ext, loss


@pytest.mark.parametrize("ops", BACKENDS)
@pytest.mark.parametrize("act", [torch.tanh, lambda y: y])
def test_producer_matches_reference(ops, act):
    size, inp, batch = 13, 9, 4
    for m in masks(size):
        site = CompactDrop(m, ops)
        x = torch.randn(m.groups, batch, inp, dtype=torch.float64, requires_grad=True)
        w = torch.randn(size, inp, dtype=torch.float64, requires_grad=True)
        b = torch.randn(size, dtype=torch.float64, requires_grad=True)

        def f(x, w, b, site=site):
            return site.dense(site.produce(x, None, site.prep(w, 0), b, act), None)

        torch.testing.assert_close(f(x, w, b), reference.producer(x, w, b, act, m),
                                   rtol=1e-12, atol=1e-12)
        assert torch.autograd.gradcheck(f, (x, w, b))


@pytest.mark.parametrize("ops", BACKENDS)
def test_compact_roundtrip_and_scatter(ops):
    m = sample_step_mask(4, 10, 0.4)
    x = torch.randn(4, 3, 10, dtype=torch.float64)
    dense = ops.scatter(ops.gather(x, m), m)
    torch.testing.assert_close(dense, x * m.dense(torch.float64)[:, None, :])


@pytest.mark.parametrize("ops", BACKENDS)
@pytest.mark.parametrize("lengths", [None, [6, 3, 1]])
@pytest.mark.parametrize("dirs", [1, 2])
def test_lstm_sequence_matches_reference(ops, lengths, dirs):
    torch.manual_seed(0)
    t, b, h = 6, 3, 5
    gx = torch.randn(t, dirs, b, 4 * h, dtype=torch.float64, requires_grad=True)
    w = torch.randn(dirs, 4 * h, h, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(dirs, b, h, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(dirs, b, h, dtype=torch.float64, requires_grad=True)
    valid = None if lengths is None else torch.arange(t)[:, None] < torch.tensor(lengths)[None]
    got = ops.lstm_sequence(gx, w, h0, c0, valid)
    want = reference.lstm_sequence(gx, w, h0, c0, valid)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *a: ops.lstm_sequence(*a, valid), (gx, w, h0, c0))


def test_lstm_sequence_equals_nn_lstm():
    """The recurrence with nn.LSTM's weights is nn.LSTM."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 6).double()
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    want, (hn, cn) = lstm(x)
    gx = (x @ lstm.weight_ih_l0.t() + lstm.bias_ih_l0 + lstm.bias_hh_l0)[:, None]
    z = torch.zeros(1, 3, 6, dtype=torch.float64)
    out, h, c = torch_backend.lstm_sequence(gx, lstm.weight_hh_l0[None], z, z)
    torch.testing.assert_close(out[:, 0], want)
    torch.testing.assert_close(h, hn)
    torch.testing.assert_close(c, cn)


@pytest.mark.parametrize("ops", BACKENDS)
def test_ops_under_autocast(ops):
    """-model_dtype fp16 (AMP): the ops compute in half, gradients come back in the inputs'
    dtype (float32), and both stay close to the float32 results."""
    outs32, grads32 = ops_under_autocast(ops, "cpu", amp=False)
    outs16, grads16 = ops_under_autocast(ops, "cpu", amp=True)
    assert all(o.dtype == torch.float16 for o in outs16)
    for got, want in zip(outs16 + grads16, outs32 + grads32):
        assert_close_scaled(got.float(), want, 2e-2)
    assert all(gr.dtype == torch.float32 for gr in grads16)


def test_every_backend_exports_the_interface():
    """The torch and CUDA backends are interchangeable: the same names, each callable."""
    from onmt_sdrop.ops import INTERFACE, cupy_backend

    for backend in (torch_backend, cupy_backend):
        missing = [n for n in INTERFACE if not callable(getattr(backend, n, None))]
        assert not missing, f"{backend.__name__} lacks {missing}"


def test_per_step_weight_gradients_fold_into_one_grouped_gemm():
    """Per-step consumer calls on one windowed weight (the input-fed decoder) defer their weight
    gradients; the fold runs ONE grouped dW over all steps and equals the dense reference."""
    torch.manual_seed(0)
    m = sample_step_mask(5, 12, 0.3)
    x = torch.randn(5, 3, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    ww = torch_backend.permute_weight(w, m, 1)
    calls = []
    real = torch_backend.consumer_dw

    def counted(*a):
        calls.append(a[2].groups)
        return real(*a)

    torch_backend.consumer_dw = counted
    try:
        ys = [torch_backend.compact_matmul(torch_backend.gather(x[t:t + 1], m.step(t)), ww,
                                           m.step(t)) for t in range(5)]
        gw, = torch.autograd.grad(sum((y * (t + 1)).sum() for t, y in enumerate(ys)), (w,))
    finally:
        torch_backend.consumer_dw = real
    want, = torch.autograd.grad(sum((reference.consumer(x, w, m)[t] * (t + 1)).sum()
                                    for t in range(5)), (w,))
    torch.testing.assert_close(gw, want, rtol=1e-12, atol=1e-12)
    assert calls == [5]


@pytest.mark.parametrize("ops", BACKENDS)
def test_recurrent_weight_gradient_is_one_gemm_over_all_steps(ops):
    """The input-fed decoder's per-step cells read W_hh detached (no per-step weight gradient);
    its gradient, one GEMM over the taps of all steps, equals that of plain per-step cells."""
    from onmt_sdrop.nn import lstm_cell, recurrent_weight

    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(6, 5).double()
    gxs = torch.randn(4, 3, 20, dtype=torch.float64, requires_grad=True)

    def run(step):
        h = c = torch.zeros(3, 5, dtype=torch.float64)
        outs = []
        for t in range(4):
            h, c = step(gxs[t] + h.sum(), h, c)   # h feeds the next input too, as input feed does
            outs.append(h * (t + 1))
        return torch.autograd.grad(torch.stack(outs).sum(), (gxs, cell.weight_hh))

    w_hh = recurrent_weight(cell)
    assert not w_hh.w.requires_grad
    got = run(lambda gx, h, c: lstm_cell(ops, gx, w_hh, h, c))
    want = run(lambda gx, h, c: ops.lstm_cell(gx, cell.weight_hh, h, c))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert w_hh.pending == []


def test_torch_backend_reads_and_writes_each_window_as_one_block():
    """On the torch backend a consumer weight is permuted window-major: each group's slice of it
    (and of its gradient) is one contiguous block, which a CPU GEMM handles much faster than a
    strided column range; the values are those of the plain permutation."""
    torch.manual_seed(0)
    m = sample_step_mask(5, 12, 0.3)
    w = torch.randn(7, 12)
    ww = torch_backend.permute_weight(w, m, 1)
    torch.testing.assert_close(ww.ext, w[:, m.ext_perm()], rtol=0, atol=0)
    for o, k in m.windows:
        assert ww.ext[:, o:o + k].t().is_contiguous()
    assert torch_backend.permute_weight(w.t(), m, 0).ext.is_contiguous()   # producer: rows


@pytest.mark.parametrize("shape", [(7, 1100), (1100, 7), (512, 512)])
def test_transpose_copy_in_blocks(shape, monkeypatch):
    """The blocked transposing copy equals ``copy_(src.t())``, ragged last block included."""
    from onmt_sdrop.ops import common

    monkeypatch.setattr(common, "TRANSPOSE_BLOCK", 256)
    src = torch.randn(shape[::-1])
    dst = torch.empty(shape)
    assert common.transpose_copy(dst, src) is dst
    assert torch.equal(dst, src.t())


def test_window_major_weight_gradient_is_handed_to_grad_as_is():
    """The window-major weight's gradient comes back contiguous, so autograd stores it in .grad
    without another (transposing) copy; its values are the plain masked gradient's."""
    torch.manual_seed(0)
    m = sample_step_mask(5, 12, 0.3)
    w = torch.randn(7, 12, requires_grad=True)
    ww = torch_backend.permute_weight(w, m, 1)
    x = torch.randn(5, 3, 12)
    y = torch_backend.compact_matmul(torch_backend.gather(x, m), ww, m)
    grad = torch.autograd.grad(y.sum(), w)[0]
    assert grad.is_contiguous()
    want = torch.einsum("gbn,gbh->nh", torch.ones(5, 3, 7), x * m.dense()[:, None, :])
    torch.testing.assert_close(grad, want)


def test_auto_picks_the_cuda_kernels_on_a_gpu(monkeypatch):
    """The CUDA backend is validated: "auto" takes it wherever a GPU and CuPy are, else torch."""
    import onmt_sdrop.ops as ops_pkg
    from onmt_sdrop.ops import cupy_backend, get_ops

    monkeypatch.setattr(ops_pkg, "cupy_available", lambda: (True, ""))
    assert get_ops("auto", torch.device("cuda")) is cupy_backend
    assert get_ops("auto", torch.device("cpu")) is torch_backend
    monkeypatch.setattr(ops_pkg, "cupy_available", lambda: (False, "no GPU"))
    assert get_ops("auto", torch.device("cuda")) is torch_backend
