"""The CUDA backend: every .cu compiles with nvcc (any machine); its kernels and a full model
match the torch backend, on a GPU for real (skipped without CUDA and CuPy) and on every machine
with the kernel launches carried out by tests/kernel_emulator.py, which checks the Python half
(strides, modes, grids, argument order, dtypes) before a GPU is ever lent."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import kernel_emulator
from conftest import (assert_close_scaled, batch, build, copy_weights, grads, loss_of,
                      ops_under_autocast)
from onmt_sdrop.masks import StepMask, sample_step_mask
from onmt_sdrop.ops import cupy_available, cupy_backend, torch_backend

KERNELS = sorted((Path(__file__).resolve().parents[1] / "onmt_sdrop" / "kernels").glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_kernel_sources_exist():
    assert {p.name for p in KERNELS} >= {"grouped_gemm.cu", "gemm_fast.cu", "lstm_pointwise.cu"}


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("src", KERNELS, ids=lambda p: p.name)
def test_cuda_sources_compile(src, arch, tmp_path):
    proc = subprocess.run([NVCC, "-c", f"-arch={arch}", "-std=c++17", "-Werror",
                           "all-warnings", str(src), "-o", str(tmp_path / "k.o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


GPU = cupy_available()[0]


@pytest.fixture(params=["emulated", "gpu"])
def device(request, monkeypatch):
    """Where the CUDA backend runs: "cuda" for real, or "cpu" with emulated kernel launches."""
    if request.param == "gpu":
        if not GPU:
            pytest.skip("needs a CUDA GPU and CuPy")
        return "cuda"
    monkeypatch.setattr(cupy_backend, "_launch", kernel_emulator.launch)
    monkeypatch.setattr(cupy_backend, "_cublas_batched", kernel_emulator.cublas_batched)
    return "cpu"


@pytest.fixture(params=cupy_backend.DW_KERNELS)
def dw_kernel(request, monkeypatch):
    """Every test runs with each weight-gradient kernel (atomicAdd grouped GEMM, window_dw)."""
    monkeypatch.setattr(cupy_backend, "DW_KERNEL", request.param)
    return request.param


@pytest.fixture(params=cupy_backend.GEMM_KERNELS)
def gemm_kernel(request, monkeypatch):
    """... and each GEMM kernel family (simt, tiled, wide, tensor, cublas)."""
    monkeypatch.setattr(cupy_backend, "GEMM_KERNEL", request.param)
    return request.param


@pytest.fixture
def launched(monkeypatch):
    """The kernel names launched (and "cublas" for each batched cuBLAS call), in order."""
    names = []
    launch, batched = cupy_backend._launch, cupy_backend._cublas_batched

    def record(module, fn, grid, block, args):
        names.append(fn)
        launch(module, fn, grid, block, args)

    def record_cublas(*args, **kwargs):
        names.append("cublas")
        batched(*args, **kwargs)

    monkeypatch.setattr(cupy_backend, "_launch", record)
    monkeypatch.setattr(cupy_backend, "_cublas_batched", record_cublas)
    return names


def _masks(size, groups):
    torch.manual_seed(size)
    yield sample_step_mask(groups, size, 0.3)
    yield sample_step_mask(groups, size, 0.5, count="bernoulli")
    yield sample_step_mask(groups, size, 0.3, distinct=2)
    yield sample_step_mask(groups, size, 0.3, align=8)
    perm = torch.randperm(size)
    yield StepMask(perm, torch.tensor([0, 3, size - 1]), torch.tensor([size, 0, 1]),
                   torch.tensor([1.0, 1.0, float(size)]), size, size)   # all kept, none, one


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2),
                                       (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("size,out,b", [(37, 53, 5), (500, 2000, 64), (64, 10, 1)])
def test_grouped_gemms_match_torch_backend(device, gemm_kernel, dw_kernel, dtype, tol, size, out,
                                           b):
    """Consumer GEMM, dX and dW: CUDA kernels (fp32, fp16 or bf16 inputs, float accumulation)
    against the torch backend in float32, on strided inputs and all-kept / none-kept groups."""
    for m in _masks(size, 3 if size == 37 else 7):
        m = m.to(device)
        x = torch.randn(m.groups, b, size * 2, device=device).to(dtype)[..., ::2]  # strided
        w = torch.randn(out, size, device=device, requires_grad=True)
        res = []
        for ops, xin in ((torch_backend, x.float()), (cupy_backend, x)):
            xr = xin.detach().clone().requires_grad_(True)
            y = ops.compact_matmul(ops.gather(xr, m), ops.permute_weight(w, m, 1), m).float()
            weights = torch.linspace(-1, 1, y.numel(), device=device).view_as(y)
            (y * weights).sum().backward()
            res.append((y, xr.grad.float(), w.grad.clone()))
            w.grad = None
        for got, want in zip(res[1], res[0]):
            assert_close_scaled(got, want, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4)])
def test_producer_and_lstm_match_torch_backend(device, gemm_kernel, dw_kernel, dtype, tol):
    m = sample_step_mask(6, 33, 0.3).to(device)
    x = torch.randn(6, 4, 21, device=device, requires_grad=True)
    w = torch.randn(33, 21, device=device, requires_grad=True)
    outs = []
    for ops in (torch_backend, cupy_backend):
        y = ops.matmul_compact(x, ops.permute_weight(w, m, 0), m)
        gx, gw = torch.autograd.grad((y * y).sum(), (x, w))
        outs.append((y, gx, gw))
    for a, r in zip(*outs[::-1]):
        torch.testing.assert_close(a, r, rtol=tol, atol=tol)
    t, d, b, h = 7, 2, 3, 5
    args = [torch.randn(t, d, b, 4 * h, device=device), torch.randn(d, 4 * h, h, device=device),
            torch.randn(d, b, h, device=device), torch.randn(d, b, h, device=device)]
    valid = torch.arange(t, device=device)[:, None] < torch.tensor([7, 4, 1], device=device)[None]
    results = []
    for ops in (torch_backend, cupy_backend):
        leaves = [a.clone().requires_grad_(True) for a in args]
        o, hn, cn = ops.lstm_sequence(*leaves, valid)
        (o.sum() + (hn * 2).sum() + cn.sum()).backward()
        results.append([o, hn, cn] + [lf.grad for lf in leaves])
    for a, r in zip(results[1], results[0]):
        torch.testing.assert_close(a, r, rtol=tol, atol=tol)


def test_autocast_matches_torch_backend(device, gemm_kernel, dw_kernel):
    """Under AMP the CUDA backend runs its half kernels (float accumulation) and gives what the
    torch backend gives under AMP: half outputs, float32 gradients."""
    want_outs, want_grads = ops_under_autocast(torch_backend, device, amp=True)
    got_outs, got_grads = ops_under_autocast(cupy_backend, device, amp=True)
    for got, want in zip(got_outs + got_grads, want_outs + want_grads):
        assert got.dtype == want.dtype
        assert_close_scaled(got.float(), want.float(), 2e-2)


def test_full_model_cupy_equals_torch_backend(device, gemm_kernel, dw_kernel, monkeypatch):
    args = ["-layers", "2", "-hidden_size", "64", "-word_vec_size", "32", "-encoder_type",
            "sdrop_brnn", "-decoder_type", "sdrop_rnn", "-dropout", "0.3"]
    ref, _ = build(*args, "-sdrop_backend", "torch", dtype=torch.float32)
    if device == "cuda":
        cuda, _ = build(*args, "-sdrop_backend", "cupy", dtype=torch.float32)
    else:   # -sdrop_backend cupy is refused without a GPU: hand the CPU model the CUDA backend
        cuda, _ = build(*args, "-sdrop_backend", "torch", dtype=torch.float32)
        kernel_emulator.use_cuda_backend([cuda], monkeypatch.setattr)
    copy_weights(cuda, ref)
    data = [t.to(device) for t in batch()]
    res = []
    for m in (ref.to(device), cuda.to(device)):
        m.train()
        torch.manual_seed(5)
        loss, out = loss_of(m, *data)
        loss.backward()
        res.append((loss, grads(m)))
    torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-4, atol=1e-4)
    for k in res[0][1]:
        torch.testing.assert_close(res[1][1][k], res[0][1][k], rtol=1e-3, atol=1e-4, msg=k)


def _six_gemms(ops, m, dtype, device, batch=6, out=23, inp=19):
    """Run consumer and producer forward + backward of backend ``ops``; return outputs, grads."""
    torch.manual_seed(1)
    xc = torch.randn(m.groups, batch, m.size, device=device).to(dtype).requires_grad_(True)
    x = torch.randn(m.groups, batch, inp, device=device).to(dtype).requires_grad_(True)
    w_c = torch.randn(out, m.size, device=device, requires_grad=True)
    w_p = torch.randn(m.size, inp, device=device, requires_grad=True)
    y_c = ops.compact_matmul(ops.gather(xc, m), ops.permute_weight(w_c, m, 1), m)
    y_p = ops.matmul_compact(x, ops.permute_weight(w_p, m, 0), m)
    loss = sum((y.float() * torch.linspace(-1, 1, y.numel(), device=device).view_as(y)).sum()
               for y in (y_c, y_p))
    return [y_c, y_p, *torch.autograd.grad(loss, (xc, x, w_c, w_p))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tf32", [False, True])
def test_gemm_kernel_selection(device, gemm_kernel, dw_kernel, dtype, tf32, launched,
                               monkeypatch):
    """Which kernels each GEMM_KERNEL / DW_KERNEL runs (as the README's table says), and that the
    result still equals the torch backend: fp32 stays true FP32 unless the user allows TF32;
    cuBLAS takes true-fp32 forward and dX when every group keeps the same count."""
    monkeypatch.setattr(cupy_backend, "tf32_allowed", lambda: tf32)
    for count in ("fixed", "bernoulli"):
        m = sample_step_mask(5, 40, 0.3, count=count).to(device)
        equal = len({k for _, k in m.windows}) == 1
        launched.clear()
        got = _six_gemms(cupy_backend, m, dtype, device)
        want = _six_gemms(torch_backend, m, torch.float32, device)
        tol = 1e-4 if dtype == torch.float32 and not tf32 else 3e-2
        for a, r in zip(got, want):
            assert_close_scaled(a.float(), r.float(), tol)
        suffix = cupy_backend.SUFFIXES[dtype]
        family = {"simt": "grouped_gemm_", "tiled": "gemm_tiled_",
                  "wide": "gemm_wide_"}.get(gemm_kernel, "gemm_tc_")
        if family == "gemm_tc_" and dtype == torch.float32:
            family, suffix = ("gemm_tc_", "tf32") if tf32 else ("gemm_tiled_", suffix)
        fwd_dx = [n for n in launched if "acc" not in n and not n.startswith("window_dw")]
        dws = [n for n in launched if n not in fwd_dx]
        if gemm_kernel == "cublas" and equal and dtype == torch.float32 and not tf32:
            assert fwd_dx == ["cublas"] * 4, launched
        else:
            assert fwd_dx == [family + suffix] * 4, launched
        want_dw = family.replace("gemm_", "gemm_acc_") if family == "grouped_gemm_" else \
            family + "acc_"
        if dw_kernel == "tiles":
            want_dw = {"grouped_gemm_": "window_dw_", "gemm_tiled_": "window_dw_tiled_",
                       "gemm_wide_": "window_dw_wide_", "gemm_tc_": "window_dw_tc_"}[family]
        if dw_kernel == "cublas":    # torch.mm on the spread operand: no kernel of ours
            assert dws == [], launched
        else:
            assert dws == [want_dw + suffix] * 2, launched


def test_k_parts():
    """Parts of K: only one group with few output tiles; a full K in equal parts (a divisor), a
    window K in any number; at least SPLIT_K_MIN each, at most SPLIT_K_MAX."""
    parts = cupy_backend._k_parts
    plain, window_b = (0, 0, 1, 1), (0, 5, 5, 1)
    assert parts((6, 1, 1), 2, 2000, plain, plain, plain) == 10       # 2000 = 10 x 200 >= 128
    assert parts((6, 1, 1), 2, 1999, plain, plain, plain) == 1        # prime: no equal parts
    assert parts((1, 1, 1), 4, 350, plain, window_b, plain) == 2      # 350 // 128
    assert parts((1, 1, 1), 4, 5000, plain, window_b, plain) == cupy_backend.SPLIT_K_MAX
    assert parts((6, 1, 7), 2, 2000, plain, plain, plain) == 1        # several groups
    assert parts((16, 6, 1), 2, 2000, plain, plain, plain) == 1       # 96 tiles: enough
    assert parts((6, 1, 1), 4, 2000, plain, (0, 1, 5, 1), plain) == 1  # window not along K
    assert parts((6, 1, 1), 2, 2000, plain, plain, (0, 1, 1, 1)) == 1  # C moves with the window


def _split_k_case(ops, m, dtype, device):
    # one group, 5 x 48 / 5 x 40 outputs: a single tile; K = 48 and 40 (full) or a window of 49
    return _six_gemms(ops, m, dtype, device, batch=5, out=48, inp=40)


def _record_grids(monkeypatch, run):
    grids = []

    def record(module, fn, grid, block, args):
        grids.append((fn, tuple(grid)))
        run(module, fn, grid, block, args)

    monkeypatch.setattr(cupy_backend, "_launch", record)
    monkeypatch.setattr(cupy_backend, "SPLIT_K_MIN", 8)
    monkeypatch.setattr(cupy_backend, "ONE_GROUP_GEMM", "kernel")   # not gathered: our kernels
    return grids


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2),
                                       (torch.bfloat16, 3e-2)])
def test_one_group_gemms_gather_their_window(device, gemm_kernel, dtype, tol, launched):
    """ONE_GROUP_GEMM "gather" (the default): a one-group forward or dX GEMM copies the group's
    window of the weight by the mask's device-side positions and runs torch's GEMM, no kernel of
    ours, and equals the torch backend: fixed and Bernoulli counts, a padded (aligned) width, no
    unit kept, and a mask refilled in place as a CUDA graph does, whose host-side offsets are
    stale."""
    assert cupy_backend.ONE_GROUP_GEMM == "gather"
    torch.manual_seed(6)
    perm = torch.randperm(70)
    masks = [sample_step_mask(1, 70, 0.3), sample_step_mask(1, 70, 0.5, count="bernoulli"),
             sample_step_mask(1, 70, 0.3, align=8),
             StepMask(perm, torch.tensor([5]), torch.tensor([0]), torch.tensor([1.0]), 70, 49)]
    for m in masks:
        m = m.to(device)
        launched.clear()
        got = _split_k_case(cupy_backend, m, dtype, device)
        assert [n for n in launched if "acc" not in n and not n.startswith("window_dw")] == []
        for a, r in zip(got, _split_k_case(torch_backend, m, torch.float32, device)):
            assert_close_scaled(a.float(), r.float(), tol)
    static = sample_step_mask(1, 70, 0.3).packed_to(device)
    fresh = sample_step_mask(1, 70, 0.3)
    while fresh.windows == static.windows:
        fresh = sample_step_mask(1, 70, 0.3)
    static.buffer.copy_(fresh.packed())                  # the refill: offsets on the device only
    refilled = static.unpacked(static.buffer)
    assert refilled.windows != fresh.windows             # the host-side offsets are stale
    got = _split_k_case(cupy_backend, refilled, dtype, device)
    for a, r in zip(got, _split_k_case(torch_backend, fresh.to(device), torch.float32, device)):
        assert_close_scaled(a.float(), r.float(), tol)


@pytest.mark.parametrize("kernel", ["simt", "tiled", "wide", "tensor"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
def test_one_group_gemms_split_k(device, kernel, dtype, tol, monkeypatch):
    """A one-group GEMM with few output tiles (the input-feed decoder's per-step calls) runs its K
    in parts, each a group of one launch, summed after, and still equals the torch backend: a
    window K (consumer forward, producer dX; fixed and Bernoulli counts, the last part shorter or
    empty) and a full K (consumer dX, producer forward; equal parts)."""
    monkeypatch.setattr(cupy_backend, "GEMM_KERNEL", kernel)
    grids = _record_grids(monkeypatch, cupy_backend._launch)
    for count in ("fixed", "bernoulli"):
        m = sample_step_mask(1, 70, 0.3, count=count).to(device)
        grids.clear()
        got = _split_k_case(cupy_backend, m, dtype, device)
        want = _split_k_case(torch_backend, m, torch.float32, device)
        for a, r in zip(got, want):
            assert_close_scaled(a.float(), r.float(), tol)
        gemms = [g for fn, g in grids if not fn.startswith("window_dw") and "_acc_" not in fn]
        assert len(gemms) == 4 and all(g[2] > 1 for g in gemms), grids
    monkeypatch.setattr(cupy_backend, "SPLIT_K_MIN", 10_000)     # K too short to split: one part
    grids.clear()
    _split_k_case(cupy_backend, m, dtype, device)
    assert all(g[2] == 1 for _, g in grids), grids


def test_emulated_cublas_refuses_half_windows_off_16_bytes():
    """The emulator enforces what cuBLAS's tensor-core kernels need of fp16 / bf16 matrices
    (16-byte aligned starts and columns; an H100 stopped with "misaligned address" on windows at
    odd units), so a path handing them such windows fails here, not on a GPU."""
    a = torch.randn(4, 16, dtype=torch.float16)
    b = torch.randn(16, 8, dtype=torch.float16)
    c = torch.zeros(4, 8, dtype=torch.float16)
    ptr = lambda t, off=0: torch.tensor([t.data_ptr() + off * t.element_size()])  # noqa: E731
    args = dict(transa=cupy_backend.CUBLAS_OP_N, transb=cupy_backend.CUBLAS_OP_N, m=8, n=4, k=8,
                lda=8, ldb=16, ldc=8)
    kernel_emulator.cublas_batched((ptr(b), ptr(a), ptr(c)), (b, a, c), **args)  # aligned: runs
    torch.testing.assert_close(c.float(), (a[:, :8].float() @ b[:8].float()), rtol=1e-2,
                               atol=1e-2)
    with pytest.raises(AssertionError, match="16 bytes"):
        kernel_emulator.cublas_batched((ptr(b, 3), ptr(a), ptr(c)), (b, a, c), **args)
    with pytest.raises(AssertionError):
        kernel_emulator.cublas_batched((ptr(b), ptr(a), ptr(c)), (b, a, c), **{**args, "lda": 9})


@pytest.mark.parametrize("dtype,tf32", [(torch.float16, False), (torch.bfloat16, False),
                                        (torch.float32, True)])
def test_cublas_takes_half_and_tf32_on_aligned_windows(device, dw_kernel, dtype, tf32, launched,
                                                       monkeypatch):
    """GEMM_KERNEL cublas runs fp16, bf16 and TF32 forward and dX through cuBLAS when every matrix
    is on 16 bytes (``align=8`` windows, widths of whole 16-byte vectors), equal to the torch
    backend; on windows at any unit it leaves them to the tensor-core kernels."""
    monkeypatch.setattr(cupy_backend, "GEMM_KERNEL", "cublas")
    monkeypatch.setattr(cupy_backend, "tf32_allowed", lambda: tf32)
    suffix = "tf32" if tf32 else cupy_backend.SUFFIXES[dtype]
    torch.manual_seed(3)
    for align, want in ((8, ["cublas"] * 4), (1, ["gemm_tc_" + suffix] * 4)):
        m = sample_step_mask(5, 48, 0.3, align=align)
        if align == 1:   # offsets on 16 bytes by chance: still not cuBLAS (a graph's refill
            # keeps the mask's alignment, not these offsets)
            m = StepMask(m.perm, m.offsets * 0 + 8, m.counts, m.scale, m.size, m.kmax)
        m = m.to(device)
        launched.clear()
        got = _six_gemms(cupy_backend, m, dtype, device, batch=8, out=40, inp=24)
        fwd_dx = [n for n in launched if "acc" not in n and not n.startswith("window_dw")]
        assert fwd_dx == want, launched
        for a, r in zip(got, _six_gemms(torch_backend, m, torch.float32, device, batch=8, out=40,
                                        inp=24)):
            assert_close_scaled(a.float(), r.float(), 3e-2)


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory):
    """kernels/gemm_fast.cu compiled for the CPU (tests/cuda_host.cpp)."""
    lib = kernel_emulator.build_host_kernels(tmp_path_factory.mktemp("cuda_host"))
    if lib is None:
        pytest.skip("no C++20 compiler with _Float16 and ucontext (g++ 12+ or clang++ 15+)")
    return lib


# (mask size, batch, out, inp) of the own-code test: every GEMM of the six crosses a block tile's
# edge (2 x 2 output tiles, the second ragged) and several k tiles, windows at odd offsets
SHAPES = {"tiled": (70, 66, 70, 19), "tensor": (70, 66, 70, 19), "wide": (134, 130, 137, 131)}


@pytest.mark.parametrize("kernel,dtype,tf32", [
    ("tiled", torch.float32, False), ("tiled", torch.float16, False),
    ("tiled", torch.bfloat16, False), ("wide", torch.float32, False),
    ("wide", torch.float16, False), ("wide", torch.bfloat16, False),
    ("tensor", torch.float32, True), ("tensor", torch.float16, False),
    ("tensor", torch.bfloat16, False)])
def test_fast_kernels_own_code_on_cpu(host_kernels, kernel, dtype, tf32, dw_kernel, monkeypatch):
    """The code of kernels/gemm_fast.cu itself (tiles, double buffering, fragment layouts,
    edges: 2 x 2 output tiles, several k tiles, counts varying by group, all-kept / none-kept /
    one-kept groups), run on the CPU with one fiber per CUDA thread and mma.sync carried out as
    the PTX ISA defines it, against the torch backend: what can be checked of the CUDA code
    without a GPU. (Each launch is also checked against its contract by the emulator.)"""
    run, names = kernel_emulator.host_launcher(host_kernels), []

    def record(module, fn, *args):
        names.append(fn)
        run(module, fn, *args)

    monkeypatch.setattr(cupy_backend, "_launch", record)
    monkeypatch.setattr(cupy_backend, "_cublas_batched", kernel_emulator.cublas_batched)
    monkeypatch.setattr(cupy_backend, "GEMM_KERNEL", kernel)
    monkeypatch.setattr(cupy_backend, "tf32_allowed", lambda: tf32)
    size, b, out, inp = SHAPES[kernel]
    tile = cupy_backend._family(dtype, torch.device("cpu"), kernel).tile
    assert tile < min(size, b, out) < 2 * tile     # the shapes cross one block edge, raggedly
    for m in list(_masks(size, 3))[1::2]:    # counts varying by group; all / none / one kept
        got = _six_gemms(cupy_backend, m, dtype, "cpu", batch=b, out=out, inp=inp)
        # the torch backend on the same (rounded) inputs: at these sizes bf16's rounding of the
        # inputs alone moves results by more than 3e-2 of a float32 reference
        want = _six_gemms(torch_backend, m, dtype, "cpu", batch=b, out=out, inp=inp)
        for a, r in zip(got, want):
            assert_close_scaled(a.float(), r.float(), 1e-4 if dtype == torch.float32 and not tf32
                                else 3e-2)
    family = {"tensor": "_tc_", "tiled": "_tiled_", "wide": "_wide_"}[kernel]
    per_mask = 4 if dw_kernel == "cublas" else 6    # DW_KERNEL cublas: dW by torch.mm
    assert len(names) == 2 * per_mask and all(family in n for n in names), names


@pytest.mark.parametrize("kernel,dtype", [("tiled", torch.float32), ("wide", torch.float32),
                                          ("tensor", torch.float16)])
def test_split_k_own_code_on_cpu(host_kernels, kernel, dtype, monkeypatch):
    """The split-K launches (K parts as groups, window parts with clipped counts) through the
    kernels' own code on the CPU, against the torch backend."""
    monkeypatch.setattr(cupy_backend, "GEMM_KERNEL", kernel)
    grids = _record_grids(monkeypatch, kernel_emulator.host_launcher(host_kernels))
    m = sample_step_mask(1, 70, 0.3, count="bernoulli")
    got = _split_k_case(cupy_backend, m, dtype, "cpu")
    want = _split_k_case(torch_backend, m, dtype, "cpu")
    for a, r in zip(got, want):
        assert_close_scaled(a.float(), r.float(), 1e-4 if dtype == torch.float32 else 3e-2)
    assert sum(g[2] > 1 for _, g in grids) == 4, grids


def test_kernel_defaults_and_environment():
    """The fastest capturable kernels measured on a GPU are the default; SDROP_GEMM_KERNEL / SDROP_DW_KERNEL choose
    others for a whole run, and a wrong name is one clear error."""
    import subprocess
    import sys

    code = ("from onmt_sdrop.ops import cupy_backend as c; "
            "print(c.GEMM_KERNEL, c.DW_KERNEL, c.ONE_GROUP_GEMM)")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SDROP_")}
    run = lambda **e: subprocess.run([sys.executable, "-c", code], env={**env, **e},  # noqa
                                     capture_output=True, text=True, timeout=120)
    assert run().stdout.split() == ["tensor", "cublas", "gather"]
    assert run(SDROP_GEMM_KERNEL="simt", SDROP_DW_KERNEL="atomic",
               SDROP_ONE_GROUP_GEMM="kernel").stdout.split() == ["simt", "atomic", "kernel"]
    bad = run(SDROP_GEMM_KERNEL="fast")
    assert bad.returncode != 0 and "SDROP_GEMM_KERNEL must be one of" in bad.stderr
    bad = run(SDROP_ONE_GROUP_GEMM="fast")
    assert bad.returncode != 0 and "SDROP_ONE_GROUP_GEMM must be one of" in bad.stderr


def test_tf32_follows_torch():
    """TF32 is off unless the user turns it on through torch (either API)."""
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        assert not cupy_backend.tf32_allowed()
        matmul.allow_tf32 = True
        assert cupy_backend.tf32_allowed()
    finally:
        matmul.allow_tf32 = before


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 2e-2)])
def test_lstm_pointwise_half_types(device, dtype, tol):
    """The fused LSTM step in fp16 and bf16 (float state gradients) against the torch backend in
    float32."""
    t, d, b, h = 5, 2, 3, 8
    torch.manual_seed(2)
    args = [torch.randn(t, d, b, 4 * h, device=device), torch.randn(d, 4 * h, h, device=device),
            torch.randn(d, b, h, device=device), torch.randn(d, b, h, device=device)]
    valid = torch.arange(t, device=device)[:, None] < torch.tensor([5, 2, 1], device=device)[None]
    results = []
    for ops, dt in ((torch_backend, torch.float32), (cupy_backend, dtype)):
        leaves = [a.detach().to(dt).requires_grad_(True) for a in args]
        o, hn, cn = ops.lstm_sequence(*leaves, valid)
        assert o.dtype == dt
        (o.float().sum() + (hn.float() * 2).sum() + cn.float().sum()).backward()
        results.append([o, hn, cn] + [lf.grad for lf in leaves])
    for a, r in zip(results[1], results[0]):
        assert_close_scaled(a.float(), r.float(), tol)


def test_gpu_bench_micro_times_every_kernel_choice(monkeypatch):
    """bench/gpu_bench.py's micro benchmark with the CUDA backend (emulated launches, toy sizes):
    a row per GEMM and kernel choice, saying which kernels ran."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import gpu_bench

    monkeypatch.setattr(cupy_backend, "_launch", kernel_emulator.launch)
    monkeypatch.setattr(cupy_backend, "_cublas_batched", kernel_emulator.cublas_batched)
    before = cupy_backend.GEMM_KERNEL, cupy_backend.DW_KERNEL
    rows = gpu_bench.micro(cupy_backend, "cpu", size="default", precision="fp32", hidden=24,
                           batch=4, steps=3, vocab=30, reps=1)
    assert (cupy_backend.GEMM_KERNEL, cupy_backend.DW_KERNEL) == before   # restored
    got = {(r["gemm"], r["kernel"]): r["runs"] for r in rows if r["part"] != "prep"}
    want = {(f"{side}_{part}", g) for side in ("consumer", "producer") for part in ("fwd", "dx")
            for g in cupy_backend.GEMM_KERNELS}
    want |= {(f"{side}_dw", f"{g}+{d}") for side in ("consumer", "producer")
             for g in cupy_backend.GEMM_KERNELS for d in cupy_backend.DW_KERNELS}
    torch_rows = {(f"{side}_{part}", "torch") for side in ("consumer", "producer")
                  for part in ("fwd", "dx", "dw")}   # the torch backend's per-step GEMMs
    assert set(got) == want | torch_rows
    assert got[("consumer_fwd", "cublas")] == "cublas"
    assert got[("consumer_fwd", "tiled")] == "gemm_tiled_f32"
    assert got[("producer_dw", "tensor+tiles")] == "window_dw_tiled_f32"   # fp32: no TF32
    assert got[("consumer_fwd", "torch")] == "torch"
    assert all(r["compact_ms"] > 0 for r in rows)
    # --micro-kernels: only the named GEMM kernels (and the torch backend)
    rows = gpu_bench.micro(cupy_backend, "cpu", size="default", precision="fp32", hidden=24,
                           batch=4, steps=3, vocab=30, reps=1, kernels=["tensor"])
    assert {r["kernel"].split("+")[0] for r in rows if r["part"] != "prep"} == {"tensor", "torch"}
    # fp16 on masks aligned to 8 (--micro-align): cuBLAS takes the forward and dX GEMMs
    rows = gpu_bench.micro(cupy_backend, "cpu", size="default", precision="fp16", hidden=24,
                           batch=8, steps=3, vocab=32, reps=1, kernels=["cublas"], align=8)
    got = {(r["gemm"], r["kernel"]): r["runs"] for r in rows if r["part"] != "prep"}
    assert all(got[(f"{side}_{part}", "cublas")] == "cublas" for side in ("consumer", "producer")
               for part in ("fwd", "dx")), got
    assert {r["align"] for r in rows if r["part"] != "prep"} == {8}


@pytest.mark.parametrize("kernel,dw,tf32,tol", [("tiled", "tiles", False, 1e-4),
                                                ("wide", "tiles", False, 1e-4),
                                                ("tensor", "atomic", True, 2e-2)])
def test_full_model_with_kernels_own_code_on_cpu(host_kernels, kernel, dw, tf32, tol,
                                                   monkeypatch):
    """A whole sdrop model (encoder, input-fed decoder, generator; weight gradients folded over
    all steps) with kernels/gemm_fast.cu's own code run on the CPU equals the torch backend."""
    args = ["-layers", "2", "-hidden_size", "64", "-word_vec_size", "32", "-encoder_type",
            "sdrop_brnn", "-decoder_type", "sdrop_rnn", "-dropout", "0.3"]
    ref, _ = build(*args, "-sdrop_backend", "torch", dtype=torch.float32)
    cuda, _ = build(*args, "-sdrop_backend", "torch", dtype=torch.float32)
    kernel_emulator.use_cuda_backend([cuda], monkeypatch.setattr,
                                     launch_with=kernel_emulator.host_launcher(host_kernels))
    monkeypatch.setattr(cupy_backend, "GEMM_KERNEL", kernel)
    monkeypatch.setattr(cupy_backend, "DW_KERNEL", dw)
    monkeypatch.setattr(cupy_backend, "tf32_allowed", lambda: tf32)
    copy_weights(cuda, ref)
    res = []
    for m in (ref, cuda):
        m.train()
        torch.manual_seed(5)
        loss, _ = loss_of(m, *batch())
        loss.backward()
        res.append((loss, grads(m)))
    torch.testing.assert_close(res[1][0], res[0][0], rtol=tol, atol=tol)
    for k in res[0][1]:
        torch.testing.assert_close(res[1][1][k], res[0][1][k], rtol=10 * tol, atol=tol, msg=k)
