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
    assert {p.name for p in KERNELS} >= {"grouped_gemm.cu", "lstm_pointwise.cu"}


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
    return "cpu"


@pytest.fixture(params=cupy_backend.DW_KERNELS)
def dw_kernel(request, monkeypatch):
    """Every test runs with each weight-gradient kernel (atomicAdd grouped GEMM, window_dw)."""
    monkeypatch.setattr(cupy_backend, "DW_KERNEL", request.param)
    return request.param


def _masks(size, groups):
    torch.manual_seed(size)
    yield sample_step_mask(groups, size, 0.3)
    yield sample_step_mask(groups, size, 0.5, count="bernoulli")
    yield sample_step_mask(groups, size, 0.3, distinct=2)
    perm = torch.randperm(size)
    yield StepMask(perm, torch.tensor([0, 3, size - 1]), torch.tensor([size, 0, 1]),
                   torch.tensor([1.0, 1.0, float(size)]), size, size)   # all kept, none, one


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
@pytest.mark.parametrize("size,out,b", [(37, 53, 5), (500, 2000, 64), (64, 10, 1)])
def test_grouped_gemms_match_torch_backend(device, dw_kernel, dtype, tol, size, out, b):
    """Consumer GEMM, dX and dW: CUDA kernels (fp32 or fp16 inputs, float accumulation) against
    the torch backend in float32, on strided inputs and all-kept / none-kept groups."""
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
def test_producer_and_lstm_match_torch_backend(device, dw_kernel, dtype, tol):
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


def test_autocast_matches_torch_backend(device, dw_kernel):
    """Under AMP the CUDA backend runs its half kernels (float accumulation) and gives what the
    torch backend gives under AMP: half outputs, float32 gradients."""
    want_outs, want_grads = ops_under_autocast(torch_backend, device, amp=True)
    got_outs, got_grads = ops_under_autocast(cupy_backend, device, amp=True)
    for got, want in zip(got_outs + got_grads, want_outs + want_grads):
        assert got.dtype == want.dtype
        assert_close_scaled(got.float(), want.float(), 2e-2)


def test_full_model_cupy_equals_torch_backend(device, dw_kernel, monkeypatch):
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
