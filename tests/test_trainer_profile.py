"""No host syncs in the plugin's training step, and bench/trainer_profile.py end to end.

A host sync makes the CPU wait for the GPU to drain, which a launch-bound step cannot afford.
The sdrop encoder, decoder and generator run forward and backward (with a cross-entropy loss, as
OpenNMT-py's trainer computes it) under a dispatch mode that records every aten op which reads a
device value back to the host: ``.item()``/``int()``/``float()`` (``_local_scalar_dense``),
``bool(tensor)``, ``nonzero``/``masked_select``/``unique`` (their output size), device-to-host
copies (``.tolist()`` and ``.cpu()`` of a device tensor are one) and blocking host-to-device
copies from pageable memory. The device is ``meta`` (no values: the "device" side is told from
the host side by the device, exactly as on a GPU) for the torch backend, compact and dense; the
CUDA backend's Python half runs on this CPU through tests/kernel_emulator.py, where everything is
a host tensor, so there the masks' own host drawing and the emulated launches are left out and
every other value read counts. Masks drawn on the host and copied in (one pinned, non-blocking
copy per mask on a GPU) are allowed: host-to-device is not a sync, when it is asynchronous from
pinned memory. So the host-to-device copies are recorded too (``torch.tensor(data, device=...)``
included, which no dispatch mode sees), and must all be the masks'.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import ROOT, SDROP_PAIR, batch, build

SCALAR_READS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "masked_select",
                "_unique", "_unique2", "unique_dim", "unique_consecutive", "equal", "allclose",
                "repeat_interleave"}


def _where() -> str:
    import traceback
    for frame in reversed(traceback.extract_stack()[:-3]):
        for root in ("/onmt_sdrop/", "/onmt/"):
            if root in frame.filename:
                return (f"{root.strip('/')}/{frame.filename.split(root, 1)[1]}:{frame.lineno} "
                        f"({frame.name})")
    return "elsewhere"


class HostSyncs(TorchDispatchMode):
    """Records the ops that make the host wait for a device. ``host_too``: on a CPU-only run
    count value reads of host tensors too (everything is a host tensor there). Recording goes on
    after a hit (on ``meta`` a value read cannot run: a placeholder stands in), so one run lists
    every sync with the line that made it."""

    def __init__(self, host_too=False):
        super().__init__()
        self.host_too = host_too
        self.paused = 0
        self.found = []
        self.h2d = []       # host-to-device copies, allowed where masks are copied in

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        hit = None
        if not self.paused:
            devices = {t.device.type for t in tree_leaves((args, kwargs))
                       if isinstance(t, torch.Tensor)}
            if name in SCALAR_READS and (self.host_too or devices - {"cpu"}):
                hit = name
            elif name in ("_to_copy", "copy_"):
                src = args[1] if name == "copy_" else args[0]
                dst = kwargs.get("device") if name == "_to_copy" else args[0].device
                dst = src.device if dst is None else torch.device(dst)
                non_blocking = kwargs.get("non_blocking", False) or \
                    (name == "copy_" and len(args) > 2 and args[2])
                if src.device.type != "cpu" and dst.type == "cpu":
                    hit = f"copy {src.device.type}->cpu"
                elif src.device.type == "cpu" and dst.type != "cpu":
                    self.h2d.append(f"copy cpu->{dst.type} at {_where()}")
                elif src.device.type == "cpu" and dst.type == "cuda" and not (
                        non_blocking and src.is_pinned()):
                    hit = "blocking or pageable copy cpu->cuda"
        if hit is not None:
            self.found.append(f"{hit} at {_where()}")
        try:
            return func(*args, **kwargs)
        except (RuntimeError, NotImplementedError):
            if hit is None:
                raise
            return _placeholder(func, name, args)


def _placeholder(func, name, args):
    """What a recorded op returns where it cannot run (meta holds no values)."""
    x = args[0]
    if name == "_local_scalar_dense":
        return 1 if not x.is_floating_point() else 1.0
    if name in ("is_nonzero", "equal", "allclose"):
        return True
    if name == "nonzero":
        return torch.zeros(0, x.dim(), dtype=torch.long, device=x.device)
    if name.startswith("copy") or name == "_to_copy":
        return torch.ones(x.shape, dtype=x.dtype)
    return torch.zeros(0, dtype=x.dtype, device=x.device)


def record_tensor_factories(rec, monkeypatch):
    """``torch.tensor(data, device=d)`` copies host data to ``d`` inside tensor construction,
    where no dispatch mode sees it: record those calls too."""
    for name in ("tensor", "as_tensor"):
        def make(fn, name=name):
            def factory(data, *args, **kwargs):
                device = kwargs.get("device")
                if device is not None and torch.device(device).type != "cpu" and not \
                        isinstance(data, torch.Tensor):
                    rec.h2d.append(f"torch.{name}(host data, device={device}) at {_where()}")
                return fn(data, *args, **kwargs)
            return factory
        monkeypatch.setattr(torch, name, make(getattr(torch, name)))


def training_step(model, src, tgt, src_len):
    """Encoder, decoder, generator and the trainer's loss (NLL of the gold words, padding
    ignored, summed), then backward."""
    out, attns = model(src, tgt, src_len)
    logits = model.generator(out.reshape(-1, out.shape[-1]))   # the decoder output itself
    gold = tgt[:, 1:, 0].reshape(-1)
    loss = F.cross_entropy(logits.float(), gold, ignore_index=1, reduction="sum")
    (loss / src.shape[0]).backward()


def _model(*extra):
    model, _ = build(*SDROP_PAIR, "-layers", "2", "-hidden_size", "16", "-word_vec_size", "8",
                     "-dropout", "0.3", *extra, dtype=torch.float32)
    return model.train()


def test_the_recorder_finds_syncs():
    """A positive control: stock OpenNMT-py's brnn encoder reads the lengths back
    (pack_padded_sequence wants them on the host), and .item() of a device value is a sync."""
    meta = torch.device("meta")
    stock, _ = build("-encoder_type", "brnn", "-decoder_type", "rnn", "-hidden_size", "16",
                     "-word_vec_size", "8", dtype=torch.float32)
    src, tgt, src_len = (t.to(meta) for t in batch())
    rec = HostSyncs()
    with rec:
        try:
            stock.to(meta).encoder(src, src_len)
        except RuntimeError:
            pass   # packed sequences on meta go no further than the lengths read back
        torch.ones(3, device=meta).sum().item()
        torch.ones(3).sum().item()                      # a host value: not a sync
    assert any("->cpu" in f and "rnn_encoder.py" in f for f in rec.found), rec.found
    assert sum("_local_scalar_dense" in f for f in rec.found) == 1, rec.found


@pytest.mark.parametrize("extra", [[], ["-sdrop_backend", "dense"], ["-input_feed", "0"],
                                   ["-sdrop_step_masks", "3"], ["-sdrop_pattern", "fixed"]])
def test_sdrop_training_step_makes_no_host_sync(extra, monkeypatch):
    model = _model("-sdrop_backend", "torch", *extra) if "-sdrop_backend" not in extra \
        else _model(*extra)
    meta = torch.device("meta")
    model.to(meta)
    src, tgt, src_len = (t.to(meta) for t in batch())
    rec = HostSyncs()
    record_tensor_factories(rec, monkeypatch)
    with rec:
        training_step(model, src, tgt, src_len)
    assert rec.found == []
    # the only host-to-device copies are the masks' (one pinned asynchronous copy each on a GPU)
    assert rec.h2d and all("onmt_sdrop/masks.py" in h for h in rec.h2d), rec.h2d
    assert all(p.grad is not None for n, p in model.named_parameters() if "embeddings" not in n)


def test_torch_backend_copies_masks_in_only_through_step_mask_to(monkeypatch):
    """Every host-to-device copy of a step is a mask's ``StepMask.to`` (one pinned asynchronous
    copy on a GPU). Shared windows (``-sdrop_step_masks``) make the torch backend group steps."""
    model = _model("-sdrop_backend", "torch", "-sdrop_step_masks", "3").to(torch.device("meta"))
    src, tgt, src_len = (t.to(torch.device("meta")) for t in batch())
    rec = HostSyncs()
    record_tensor_factories(rec, monkeypatch)
    with rec:
        training_step(model, src, tgt, src_len)
    # StepMask.to (one pinned asynchronous copy per mask) and host_index (the group index of
    # steps that share a window: pinned and asynchronous too, tests/test_masks.py)
    assert rec.h2d and all("onmt_sdrop/masks.py" in h and ("(to)" in h or "(host_index)" in h)
                           for h in rec.h2d), sorted(set(rec.h2d))


def test_cuda_backend_python_half_makes_no_host_sync(monkeypatch):
    """``-sdrop_backend cupy`` through the kernel emulator on this CPU: every tensor is a host
    tensor here, so every value read counts, except the masks' own host drawing (by design, on
    the host RNG) and the emulated kernels (on a GPU they are kernels)."""
    import kernel_emulator
    from onmt_sdrop import nn as sdrop_nn
    from onmt_sdrop.masks import sample_step_mask
    from onmt_sdrop.nn import dropout as dropout_mod

    rec = HostSyncs(host_too=True)

    def paused(fn):
        def run(*args, **kwargs):
            rec.paused += 1
            try:
                return fn(*args, **kwargs)
            finally:
                rec.paused -= 1
        return run

    model = _model("-sdrop_backend", "torch")
    kernel_emulator.use_cuda_backend([model], monkeypatch.setattr,
                                     launch_with=paused(kernel_emulator.launch))

    @paused
    def draw(steps, size, p, count, fixed, distinct, align, device):
        return sample_step_mask(steps, size, p, count=count, fixed=fixed,
                                distinct=distinct, align=align).to(device)

    tolist = torch.Tensor.tolist

    def recorded_tolist(self):   # no aten op on a CPU tensor: recorded here
        if not rec.paused and rec in _active_modes():
            rec.found.append(f"tolist at {_where()}")
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", recorded_tolist)
    data = batch()
    previous = sdrop_nn.set_mask_source(draw)
    try:
        with rec:
            training_step(model, *data)
    finally:
        sdrop_nn.set_mask_source(previous)
    assert dropout_mod._mask_source is previous
    assert rec.found == []
    assert all(p.grad is not None for n, p in model.named_parameters() if "embeddings" not in n)


def _active_modes():
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    return _get_current_dispatch_mode_stack()


# ---------------------------------------------------------------------------------------------
# bench/trainer_profile.py

def test_trainer_profile_dry_run_through_gpu_check(tmp_path):
    """recipes/gpu_check.sh --trainer-profile --dry-run: the GPU stage's own command on the CPU
    (bench/trainer_profile.py --dry-run: tiny model, stock and sdrop, the bare loop)."""
    import os

    proc = subprocess.run(["bash", str(ROOT / "recipes" / "gpu_check.sh"), "--trainer-profile",
                           "--dry-run"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1",
                               "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = tmp_path / "trainer-dry-run.json"
    result = json.loads(out.read_text())
    assert "not a measurement" in result["device"] and result["torch"] == torch.__version__
    assert [r["variant"] for r in result["variants"]] == ["stock", "sdrop"]
    for row in result["variants"]:
        assert "error" not in row, row
        assert row["tok_s"] > 0 and row["ms_per_step"] > 0 and row["bare_tok_s"] > 0
        phases = row["phases_ms"]
        assert set(phases) == {"data", "forward", "loss", "stats", "backward", "optimizer",
                               "rest"}
        assert abs(sum(phases.values()) - row["profiled_ms_per_step"]) < 0.1
        assert phases["forward"] > 0 and phases["backward"] > 0
        # stock OpenNMT-py's own value reads, on every step (loss.py: loss and statistics)
        where = {s["where"].split(":")[0] for s in row["syncs"]}
        assert {"onmt/utils/loss.py", "onmt/trainer.py"} <= where
        assert row["profiler_per_step"]["aten_ops"] > 0
        assert row["validation_s"] > 0           # one validation after the last step
    # what the sdrop step reads back on the host is the host mask drawing only
    sdrop_reads = {s["where"].split(":")[0] for s in result["variants"][1]["syncs"]
                   if s["phase"] == "forward"}
    assert sdrop_reads <= {"onmt_sdrop/masks.py"}
    stock, sdrop = (r["syncs_per_step_by_phase"] for r in result["variants"])
    assert "forward" in stock                  # the stock encoder reads the lengths back
    assert "forward" not in sdrop and "backward" not in sdrop
    assert {"loss", "stats", "rest"} <= set(sdrop)   # OpenNMT-py's own, in both
    assert "loss.sum().item()" in result["stock_trainer_syncs"]
    assert "trainer profile done (status 0)" in proc.stdout and "\nsdrop " in proc.stdout
    assert (tmp_path / "trainer-profile.log").exists()


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--variants", "stock,foo"], "--variants: unknown 'foo'"),
    (["--data", "/nonexistent/folder"], "no such folder"),
    (["--num-workers", "x"], "--num-workers wants comma-separated integers"),
    (["--profile", "nope"], "--profile: unknown 'nope'"),
    (["--langs", "de"], "--langs wants two different languages"),
])
def test_trainer_profile_bad_input_is_one_line(args, message, capsys, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import trainer_profile

    assert trainer_profile.main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trainer_profile.py: error: ") and message in err
    assert "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_trainer_profile_gpu_without_cuda(capsys, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import trainer_profile

    assert trainer_profile.main(["--gpu", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_trainer_profile_census_and_kernels_windows_keep_gemms_on_this_thread():
    """The sync census (a dispatch mode) and the profiler see only the training thread, so in
    their windows the torch backend runs no GEMM side by side; the timed windows keep it."""
    sys.path.insert(0, str(ROOT / "bench"))
    import trainer_profile
    from onmt_sdrop.ops import torch_backend

    normal = torch_backend.SIDE_BY_SIDE_MACS
    rec = trainer_profile.Recorder([("throughput", 1), ("census", 1), ("kernels", 1)], cuda=False)
    seen = []
    for old, new in (("warmup", "throughput"), ("throughput", "census"), ("census", "kernels"),
                     ("kernels", "tail")):
        rec._switch(old, new)
        seen.append((new, torch_backend.SIDE_BY_SIDE_MACS))
    assert seen == [("throughput", normal), ("census", float("inf")),
                    ("kernels", float("inf")), ("tail", normal)]
    assert rec.errors == [] and rec.kernel_stats is not None
