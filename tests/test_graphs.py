"""CUDA graphs of the sdrop encoder+decoder (-sdrop_cuda_graphs). On every machine the graph
machinery runs with the capture replaced by an eager stand-in (a warm-up run that records the
masks, then plain calls), so bucketing, the static masks refilled before each step, the generator
link and the cache bound are checked against eager steps; the capture itself needs a GPU."""
from __future__ import annotations

import logging

import pytest
import torch

import kernel_emulator
from conftest import SDROP_PAIR, batch, build, copy_weights, grads, loss_of
from onmt_sdrop.ops import cupy_available
from onmt_sdrop.plugin import graphs

ARGS = ["-layers", "2", "-hidden_size", "16", "-word_vec_size", "8", "-dropout", "0.3", *SDROP_PAIR]


def eager_capture(module, args):
    """Stand-in for make_graphed_callables: one warm-up run (it records the masks), then calls."""
    module(*args)
    return module


def batches():
    """Three batches in two shape buckets."""
    return [batch(b=4, s=8, t=8, seed=1), batch(b=4, s=8, t=8, seed=2), batch(b=4, s=16, t=8, seed=3)]


@pytest.mark.parametrize("backend", ["dense", "cupy-emulated"])
def test_graph_steps_equal_eager_steps(backend, monkeypatch):
    """Same seed, same weights: every step through the graph machinery gives the eager step's
    loss and gradients; the masks change from step to step; the cache keeps its bound."""
    extra = ["-sdrop_backend", "dense" if backend == "dense" else "torch"]
    eager, _ = build(*ARGS, *extra, dtype=torch.float32)
    graphed, _ = build(*ARGS, *extra, dtype=torch.float32)
    if backend != "dense":
        kernel_emulator.use_cuda_backend([eager, graphed], monkeypatch.setattr)
    copy_weights(graphed, eager)
    runner = graphs.GraphedModel(graphed, capacity=1, capture=eager_capture)
    assert_steps_equal(eager, graphed, runner, "cpu", rtol=1e-5, atol=1e-5)


def assert_steps_equal(eager, graphed, runner, device, rtol, atol):
    """Three seeded steps (two buckets): the graphed model's loss and every gradient equal the
    eager model's; a bucket's masks are refilled between its steps; the cache keeps its bound."""
    graphed.__dict__["_sdrop_graphs"] = runner
    perms = []
    for i, data in enumerate(batches()):
        data = [t.to(device) for t in data]
        res = []
        for m in (eager, graphed):
            m.train()
            m.zero_grad()
            torch.manual_seed(100 + i)
            loss, _ = loss_of(m, *data)
            loss.backward()
            res.append((loss.detach(), grads(m)))
        torch.testing.assert_close(res[1][0], res[0][0], rtol=rtol, atol=atol)
        assert res[1][1].keys() == res[0][1].keys()
        for k in res[0][1]:
            torch.testing.assert_close(res[1][1][k], res[0][1][k], rtol=10 * rtol, atol=atol,
                                       msg=k)
        assert len(runner.cache) <= 1
        masks = next(iter(runner.cache.values()))[2]
        perms.append(masks.records[0][1].perm.clone())
    assert not torch.equal(perms[0], perms[1])   # same bucket: refilled with new masks


def test_pad_batch_to_the_bucket():
    b = {"src": torch.ones(2, 9, 1, dtype=torch.long), "tgt": torch.ones(2, 16, 1, dtype=torch.long)}
    graphs.pad_batch(b, src_pad=7, tgt_pad=5)
    assert b["src"].shape == (2, 16, 1) and (b["src"][:, 9:] == 7).all()
    assert b["tgt"].shape == (2, 16, 1) and (b["tgt"] == 1).all()


def test_graphs_off_by_default_until_validated_and_refused_in_one_line(caplog):
    model, opt = build(*ARGS, "-sdrop_backend", "torch", dtype=torch.float32)
    assert opt.sdrop_cuda_graphs == -1
    assert graphs.enable(model, opt) is (graphs.GRAPHS_VALIDATED and torch.cuda.is_available())
    opt.sdrop_cuda_graphs = 1
    logging.getLogger().addHandler(caplog.handler)
    with caplog.at_level(logging.INFO):
        assert graphs.enable(model, opt) is False
    lines = [r.getMessage() for r in caplog.records if "CUDA graphs off" in r.getMessage()]
    assert lines == ["sdrop: CUDA graphs off, eager steps instead: the model is not on a GPU"]


@pytest.fixture(params=[("tensor", "cublas"), ("tensor", "tiles"), ("cublas", "cublas")],
                ids="+".join)
def gpu_kernels(request, monkeypatch):
    """The CUDA backend's kernel choices a real capture is checked with: our own kernels, and
    cuBLAS through torch's handle."""
    from onmt_sdrop.ops import cupy_backend

    monkeypatch.setattr(cupy_backend, "GEMM_KERNEL", request.param[0])
    monkeypatch.setattr(cupy_backend, "DW_KERNEL", request.param[1])
    return request.param


@pytest.mark.skipif(not cupy_available()[0], reason="needs a CUDA GPU and CuPy")
def test_captured_graphs_equal_eager_on_a_gpu(gpu_kernels):
    """The real capture: replays equal eager steps on the same masks (loss and every gradient),
    masks differ between replays, the cache keeps its bound."""
    eager, graphed = gpu_pair()
    assert_steps_equal(eager, graphed, graphs.GraphedModel(graphed, capacity=1), "cuda",
                       rtol=1e-4, atol=1e-4)


def gpu_pair():
    """Two sdrop models with the same weights on the GPU, CUDA backend."""
    eager, _ = build(*ARGS, "-sdrop_backend", "cupy", dtype=torch.float32)
    graphed, _ = build(*ARGS, "-sdrop_backend", "cupy", dtype=torch.float32)
    copy_weights(graphed, eager)
    return eager.cuda(), graphed.cuda()


def test_a_failed_capture_falls_back_to_eager_with_one_line(caplog):
    model, _ = build(*ARGS, "-sdrop_backend", "dense", dtype=torch.float32)
    reference, _ = build(*ARGS, "-sdrop_backend", "dense", dtype=torch.float32)
    copy_weights(reference, model)

    def broken(module, args):
        module(*args)   # the warm-up draws masks: the eager step after it must not notice
        raise RuntimeError("operation not permitted when stream is capturing")

    model.__dict__["_sdrop_graphs"] = graphs.GraphedModel(model, capture=broken)
    data = batch(b=4, s=8, t=8)
    logging.getLogger().addHandler(caplog.handler)
    losses = []
    with caplog.at_level(logging.INFO):
        for m in (model, reference):
            m.train()
            torch.manual_seed(7)
            losses.append(loss_of(m, *data)[0])
    assert model.__dict__["_sdrop_graphs"] is None
    torch.testing.assert_close(losses[0], losses[1])
    lines = [r.getMessage() for r in caplog.records if "capture failed" in r.getMessage()]
    assert len(lines) == 1 and "not permitted" in lines[0]


def test_captures_run_in_thread_local_mode_and_torch_is_restored(monkeypatch):
    """make_graphed_callables builds its capture contexts as ThreadLocalCapture ("thread_local":
    a DataLoader's pin-memory thread may allocate during a capture), and torch.cuda.graph is
    torch's own again afterwards, also when the capture fails."""
    seen = []

    def make_graphed_callables(module, args, **kwargs):
        seen.append(torch.cuda.graph)
        raise RuntimeError("capture invalidated")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", make_graphed_callables)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    original = torch.cuda.graph
    with pytest.raises(RuntimeError, match="capture invalidated"):
        graphs.GraphedModel(model=None)._make_graphed(None, ())
    assert seen == [graphs.ThreadLocalCapture] and torch.cuda.graph is original
    assert graphs.ThreadLocalCapture(object(), stream="side").capture_error_mode == "thread_local"


@pytest.mark.parametrize("stream_after_failure", ["side", "main"])
def test_a_failed_capture_end_leaves_the_capture_stream(monkeypatch, stream_after_failure):
    """When capture_end raises, torch's __exit__ stays on the capture stream; ours leaves it
    (once: not when the failure came after leaving it) and re-raises."""
    class Graph:
        def capture_end(self):
            raise RuntimeError("operation failed due to a previous error during capture")

    class StreamContext:
        exits = 0

        def __exit__(self, *exc):
            StreamContext.exits += 1

    capture = graphs.ThreadLocalCapture(Graph(), stream="side")
    capture.stream_ctx = StreamContext()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream_after_failure)
    with pytest.raises(RuntimeError, match="previous error during capture"):
        capture.__exit__(None, None, None)
    assert StreamContext.exits == (1 if stream_after_failure == "side" else 0)


@pytest.mark.parametrize("gemm_kernel", ["tensor", "cublas"])
def test_every_kernel_choice_is_captured(monkeypatch, gemm_kernel):
    """cuBLAS runs through torch's own handle, which a capture takes as torch's matmuls: every
    GEMM_KERNEL of the CUDA backend is captured (the real capture: the GPU tests above)."""
    from onmt_sdrop.ops import cupy_backend

    model, opt = build(*ARGS, "-sdrop_backend", "torch", dtype=torch.float32)
    kernel_emulator.use_cuda_backend([model], monkeypatch.setattr)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(cupy_backend, "GEMM_KERNEL", gemm_kernel)
    assert graphs.unsupported(opt, model) is None


def test_autocast_steps_are_captured_under_autocast_without_its_cast_cache():
    """Under autocast (-model_dtype fp16) a bucket is captured with the caller's autocast dtype
    and the cast cache off, keyed apart from fp32 steps of the same shape; its steps equal eager
    autocast steps (CPU autocast, bfloat16, through the eager stand-in)."""
    seen = []

    def capture(module, args):
        on = torch.is_autocast_enabled("cpu")
        seen.append((on, torch.get_autocast_dtype("cpu") if on else None,
                     torch.is_autocast_cache_enabled()))
        return eager_capture(module, args)

    eager, _ = build(*ARGS, "-sdrop_backend", "torch", dtype=torch.float32)
    graphed, _ = build(*ARGS, "-sdrop_backend", "torch", dtype=torch.float32)
    copy_weights(graphed, eager)
    runner = graphs.GraphedModel(graphed, capture=capture)
    assert_autocast_steps_equal(eager, graphed, runner, "cpu", torch.bfloat16, tol=1e-5)
    assert seen == [(True, torch.bfloat16, False), (False, None, True)]
    assert len(runner.cache) == 2


@pytest.mark.skipif(not cupy_available()[0], reason="needs a CUDA GPU and CuPy")
def test_captured_autocast_graphs_equal_eager_on_a_gpu(gpu_kernels):
    """The real capture under fp16 autocast (the CUDA backend): replays equal eager steps."""
    eager, graphed = gpu_pair()
    assert_autocast_steps_equal(eager, graphed, graphs.GraphedModel(graphed), "cuda",
                                torch.float16, tol=1e-3)


def assert_autocast_steps_equal(eager, graphed, runner, device, dtype, tol):
    """One seeded step under autocast ``dtype``, then one without, on the same batch: the graphed
    model's loss, output dtype and every gradient equal the eager model's."""
    graphed.__dict__["_sdrop_graphs"] = runner
    data = [t.to(device) for t in batch(b=4, s=8, t=8, seed=1)]
    for amp in (True, False):
        res = []
        for m in (eager, graphed):
            m.train()
            m.zero_grad()
            torch.manual_seed(3)
            with torch.autocast(device, dtype=dtype, enabled=amp):
                loss, out = loss_of(m, *data)
            loss.float().backward()
            res.append((loss.detach().float(), out.dtype, grads(m)))
        torch.testing.assert_close(res[1][0], res[0][0], rtol=tol, atol=tol)
        assert res[1][1] == res[0][1] == (dtype if amp else torch.float32)
        for k in res[0][2]:
            torch.testing.assert_close(res[1][2][k], res[0][2][k], rtol=10 * tol, atol=tol, msg=k)


@pytest.mark.parametrize("option, value", [("model_dtype", "fp16"), ("world_size", 2)])
def test_auto_leaves_unvalidated_graphs_to_an_explicit_1(monkeypatch, caplog, option, value):
    """Autocast and multi-GPU graphs have not run on a GPU: "auto" (-1) trains them eagerly with
    one line saying how to turn graphs on; -sdrop_cuda_graphs 1 captures them."""
    model, opt = build(*ARGS, "-sdrop_backend", "torch", dtype=torch.float32)
    kernel_emulator.use_cuda_backend([model], monkeypatch.setattr)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert graphs.enable(model, opt) is True            # fp32, one GPU: on
    setattr(opt, option, value)
    model.__dict__["_sdrop_graphs"] = None
    logging.getLogger().addHandler(caplog.handler)
    with caplog.at_level(logging.INFO):
        assert graphs.enable(model, opt) is False
    lines = [r.getMessage() for r in caplog.records if "CUDA graphs off" in r.getMessage()]
    assert len(lines) == 1 and "-sdrop_cuda_graphs 1 turns them on" in lines[0]
    opt.sdrop_cuda_graphs = 1
    assert graphs.enable(model, opt) is True
