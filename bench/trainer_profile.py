#!/usr/bin/env python
"""Where a real ``onmt_train`` step's time goes: data loading, forward, loss, backward, optimizer.

Runs OpenNMT-py 3.5.1's own trainer in this process, through ``onmt.bin.train.main`` with the
package's start-up hook (as ``onmt_train`` runs once ``onmt-sdrop install-hook`` is done), for each
variant (stock ``brnn``/``rnn``, sdrop with the default backend, sdrop ``-sdrop_backend dense``;
on a GPU also sdrop with ``-sdrop_cuda_graphs 1``), with a recipe profile's options
(``onmt_sdrop/recipe/catalogue.py``, default ``gpu-short``: 2x500, batch 64, Adam) on real text
(default: the bundled IWSLT'14 sample, words split on spaces, the 10K most frequent per side).
It wraps the trainer's pieces in-process and splits each training step's wall time into

  data       waiting for the next batch (the train iterator's ``__next__``)
  forward    ``NMTModel.forward`` (encoder + decoder)
  loss       OpenNMT-py's ``LossCompute`` (generator, loss) without its statistics
  stats      ``LossCompute._stats`` (the ``.item()`` reads of loss, correct and words)
  backward   ``Optimizer.backward``
  optimizer  ``Optimizer.step`` (gradient clipping, Adam/SGD, the learning-rate schedule)
  rest       everything else of the step: ``zero_grad``, ``src_len.sum().item()``, statistics,
             the report every ``-report_every`` steps, ``_accum_batches``

Windows per variant, in one training run: warm-up steps; ``--steps`` timed steps without any added
synchronisation (the trainer's tok/s); on a GPU ``--profile-steps`` more steps with
``torch.cuda.synchronize()`` at every phase boundary, so each phase owns the GPU work it launched
(on a CPU the phases are timed in the first window: nothing runs asynchronously there); one step
under a dispatch mode that records every aten op that reads a value back to the host (the syncs:
``.item()``, ``nonzero``, ``masked_select``, device-to-host and blocking host-to-device copies),
with the OpenNMT-py / onmt_sdrop line that made it; on a GPU (or ``--kernels N``) N steps under
``torch.profiler`` (kernel launches, synchronisations and copies per step). Next to it, the bare
training loop of bench/cpu_bench.py (``measure``: the same model and batch size, synthetic batches
of mean length 24, SGD) for the same variants.

    python bench/trainer_profile.py [--steps 20] [--gpu] [--out DIR|FILE.json] [--dry-run]

Writes ``trainer-<cpu|gpu>-<date>.json`` (or ``dry-run-...``) into ``--out`` (default
bench/results/) after each variant, so a timeout keeps what finished.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import gc
import json
import lzma
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

import onmt_sdrop.hook
from onmt_sdrop.ops import torch_backend

# at import, not in main(): DataLoader workers (-num_workers > 0, context "spawn") import this
# file as their main module and need the plugin too
onmt_sdrop.hook.install()

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("data", "forward", "loss", "stats", "backward", "optimizer", "rest")
VARIANTS = {
    "stock": ("baseline", []),
    "sdrop": ("sdrop", ["-sdrop_cuda_graphs", "0"]),   # eager (graphs are on by default)
    "sdrop_dense": ("sdrop", ["-sdrop_backend", "dense", "-sdrop_cuda_graphs", "0"]),
    "sdrop_graphs": ("sdrop", ["-sdrop_cuda_graphs", "1"]),
}
# aten ops that read a device value back to the host (the host waits for the device)
SYNC_OPS = {"_local_scalar_dense": ".item()/int()/float()/bool() of a tensor",
            "item": ".item()", "is_nonzero": "bool(tensor)", "nonzero": "nonzero (output size)",
            "masked_select": "masked_select (output size)", "_unique": "unique",
            "_unique2": "unique", "unique_dim": "unique", "unique_consecutive": "unique",
            "equal": "torch.equal", "allclose": "allclose",
            "repeat_interleave": "repeat_interleave (output size)"}
STOCK_SYNC_NOTE = (
    "Stock OpenNMT-py 3.5.1 reads values back on every training step, whatever the model "
    "(onmt/trainer.py and onmt/utils/loss.py; not patched by onmt_sdrop): src_len.sum().item() "
    "twice in Trainer._gradient_accumulation (source words for the report), loss.sum().item() in "
    "LossCompute.forward, and in LossCompute._stats pred.eq(target).masked_select(non_padding)"
    ".sum().item() (a masked_select, whose output size is read back, then an .item()) and "
    "non_padding.sum().item(); with -normalization tokens also num_tokens.item() per batch in "
    "_accum_batches. Batches reach the GPU with blocking copies: with -num_workers 0 "
    "tensorify (onmt/inputters/text_utils.py) makes every sentence's source and target ids a "
    "tensor on the device, torch.tensor(ids, device=cuda), one pageable host-to-device copy per "
    "sentence and side (about twice the batch size per step), plus srclen; with > 0 the workers "
    "build the batch on the host and OnDeviceDatasetIter copies each of its tensors with "
    ".to(device), pinned but not non_blocking (a few per step). The stock brnn encoder reads "
    "src_len back "
    "(pack_padded_sequence's lengths.tolist()). The sdrop encoder/decoder/generator add none "
    "(tests/test_trainer_profile.py).")


# value reads of host tensors, by design: not syncs on a GPU either (the census names them so)
HOST_READS = {
    "onmt_sdrop/masks.py": "host: the masks are drawn on the host RNG and copied in",
    "onmt/utils/optimizers.py": "host: torch.optim's step counters are host tensors (not "
                                "capturable/fused)",
}


class Usage(Exception):
    """Bad input: one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# data: a word-level corpus and vocabularies in a work folder


def _read(path: Path) -> list[str]:
    if path.exists():
        return path.read_text(encoding="utf-8").splitlines()
    xz = path.with_name(path.name + ".xz")
    if xz.exists():
        return lzma.open(xz, "rt", encoding="utf-8").read().splitlines()
    raise Usage(f"{path} (or .xz) not found")


def _langs(data: Path, langs: str | None) -> tuple[str, str]:
    if langs:
        pair = tuple(s.strip() for s in langs.split(","))
        if len(pair) != 2 or not all(pair) or pair[0] == pair[1]:
            raise Usage(f"--langs wants two different languages as SRC,TGT, got {langs!r}")
        return pair
    found = sorted({p.name.split(".")[1] for p in data.glob("train.*")
                    if len(p.name.split(".")) >= 2 and p.name.split(".")[1]})
    if len(found) != 2:
        raise Usage(f"{data}: want train.SRC and train.TGT (plain or .xz), found "
                    f"{', '.join('train.' + f for f in found) or 'none'} (--langs SRC,TGT)")
    return found[0], found[1]


def prepare_data(data: Path, langs, lines: int | None, vocab: int, work: Path,
                 valid_lines: int | None = None) -> dict:
    """Training files (first ``lines`` pairs), the validation files when the folder has them,
    and word vocabularies of the ``vocab`` most frequent words per side in ``work``; returns
    paths and sizes."""
    if not data.is_dir():
        raise Usage(f"--data {data}: no such folder")
    src, tgt = _langs(data, langs)
    out = {"data": str(data), "langs": [src, tgt]}
    sides = {}
    for side, lang in (("src", src), ("tgt", tgt)):
        text = _read(data / f"train.{lang}")[:lines]
        sides[side] = text
    if len(sides["src"]) != len(sides["tgt"]):
        raise Usage(f"{data}: train.{src} and train.{tgt} have different line counts")
    keep = [i for i, (s, t) in enumerate(zip(sides["src"], sides["tgt"])) if s.split() and t.split()]
    if not keep:
        raise Usage(f"{data}: no non-empty training pairs")
    work.mkdir(parents=True, exist_ok=True)
    for side in ("src", "tgt"):
        text = [sides[side][i] for i in keep]
        (work / f"train.{side}").write_text("\n".join(text) + "\n", encoding="utf-8")
        counts = collections.Counter(w for line in text for w in line.split())
        top = counts.most_common(vocab)
        (work / f"vocab.{side}").write_text("".join(f"{w}\t{c}\n" for w, c in top),
                                            encoding="utf-8")
        out[f"{side}_vocab"] = len(top) + 4     # OpenNMT-py adds <unk> <blank> <s> </s>
        out[f"{side}_tokens_per_line"] = round(sum(len(x.split()) for x in text) / len(text), 1)
    out["pairs"] = len(keep)
    config = (f"src_vocab: {work}/vocab.src\ntgt_vocab: {work}/vocab.tgt\n"
              f"src_vocab_size: {vocab + 4}\ntgt_vocab_size: {vocab + 4}\n"
              f"data:\n  corpus_1:\n    path_src: {work}/train.src\n"
              f"    path_tgt: {work}/train.tgt\n")
    try:   # one validation at the end of each run: its cost with -num_workers 0 and > 0
        valid = [_read(data / f"valid.{lang}")[:valid_lines] for lang in (src, tgt)]
    except Usage:
        valid = None
    if valid and len(valid[0]) == len(valid[1]):
        for side, text in zip(("src", "tgt"), valid):
            (work / f"valid.{side}").write_text("\n".join(text) + "\n", encoding="utf-8")
        config += (f"  valid:\n    path_src: {work}/valid.src\n"
                   f"    path_tgt: {work}/valid.tgt\n")
        out["valid_pairs"] = len(valid[0])
    (work / "data.yaml").write_text(config)
    return out


# ---------------------------------------------------------------------------------------------
# the recorder: step boundaries, exclusive phase times, the sync census, the kernel profile


class Recorder:
    """Driven by wrappers around the trainer's pieces. ``plan``: [(window, steps)] in order."""

    def __init__(self, plan, cuda: bool):
        self.plan, self.cuda = plan, cuda
        self.step, self.mode = -1, "warmup"
        self.stack: list = []           # [name, start, timed]
        self.acc: dict = collections.defaultdict(float)
        self.records: list = []
        self.t_entry = None
        self.words = 0
        self.census = collections.Counter()
        self._census_mode = None
        self._prof = None
        self._on_this_thread = None
        self.kernel_stats = None
        self.graph_keys: set = set()
        self.valid_s: list = []
        self.errors: list = []

    def _mode_of(self, step: int) -> str:
        for name, n in self.plan:
            if step < n:
                return name
            step -= n
        return "tail"

    def _sync(self):
        if self.cuda:
            import torch
            torch.cuda.synchronize()

    def timed(self) -> bool:
        return self.mode == "profile" or (self.mode == "throughput" and not self.cuda)

    # phases ---------------------------------------------------------------------------------
    def enter(self, name: str) -> None:
        timed = self.timed()
        if timed:
            self._sync()
        now = time.perf_counter()
        if self.stack and self.stack[-1][2]:
            parent = self.stack[-1]
            self.acc[parent[0]] += now - parent[1]
        self.stack.append([name, now, timed])

    def exit(self) -> None:
        name, start, timed = self.stack.pop()
        if timed:
            self._sync()
        now = time.perf_counter()
        if timed:
            self.acc[name] += now - start
        if self.stack:
            self.stack[-1][1] = now

    def wrap(self, name: str, fn):
        def wrapped(*args, **kwargs):
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()
        return wrapped

    def phase(self) -> str:
        return self.stack[-1][0] if self.stack else "rest"

    # steps ----------------------------------------------------------------------------------
    def begin_step(self) -> None:
        """At every ``_gradient_accumulation`` entry: closes the step before it."""
        new = self._mode_of(self.step + 1)
        if self.cuda and (new != self.mode or new == "profile"):
            self._sync()
        now = time.perf_counter()
        if self.step >= 0:
            self._close(now)
        self._switch(self.mode, new)
        self.step += 1
        self.mode = new
        self.acc = collections.defaultdict(float)
        self.t_entry = time.perf_counter()

    def _close(self, now: float) -> None:
        wall = now - self.t_entry
        rec = {"window": self.mode, "wall": wall, "words": self.words}
        if self.timed():
            rec["phases"] = {p: self.acc.get(p, 0.0) for p in PHASES if p != "rest"}
            rec["phases"]["rest"] = wall - sum(rec["phases"].values())
        self.records.append(rec)

    def end_step(self, n_words: int) -> None:
        self.words = n_words

    def _switch(self, old: str, new: str) -> None:
        """Leave window ``old``, enter ``new``; a census or profiler that fails is recorded,
        never the end of the training run (the timed windows come first)."""
        if old == new:
            return
        try:
            self._switch_windows(old, new)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"{old} -> {new}: {type(exc).__name__}: {exc}")
            self._census_mode = self._prof = None
            self._leave_this_thread()

    def _leave_this_thread(self) -> None:
        if self._on_this_thread is not None:
            self._on_this_thread.__exit__(None, None, None)
            self._on_this_thread = None

    def _switch_windows(self, old: str, new: str) -> None:
        # the census and the profiler see only this thread: no side-by-side GEMMs (CPU) in them
        if old in ("census", "kernels"):
            self._leave_this_thread()
        if new in ("census", "kernels"):
            self._on_this_thread = torch_backend.on_this_thread()
            self._on_this_thread.__enter__()
        if old == "census" and self._census_mode is not None:
            self._census_mode.__exit__(None, None, None)
            self._census_mode = None
        if old == "kernels" and self._prof is not None:
            self._prof.__exit__(None, None, None)
            self.kernel_stats = kernel_summary(self._prof, self.cuda)
            self._prof = None
        if new == "census":
            self._census_mode = census_mode(self)
            self._census_mode.__enter__()
        if new == "kernels":
            import torch.profiler as tp
            acts = [tp.ProfilerActivity.CPU] + ([tp.ProfilerActivity.CUDA] if self.cuda else [])
            self._prof = tp.profile(activities=acts)
            self._prof.__enter__()

    def finish(self) -> None:
        self._switch(self.mode, "tail")
        self.mode = "tail"


def _where() -> str:
    """The innermost OpenNMT-py / onmt_sdrop line on the Python stack."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        f = frame.filename.replace("\\", "/")
        for root in ("/onmt_sdrop/", "/onmt/"):
            if root in f and "trainer_profile" not in f:
                return f"{root.strip('/')}/{f.split(root, 1)[1]}:{frame.lineno} ({frame.name})"
    return "elsewhere"


def census_mode(rec: Recorder):
    """A dispatch mode counting, per phase and source line, the aten ops that make the host wait
    for the device: value reads (SYNC_OPS), device-to-host copies, blocking host-to-device copies.
    On a CPU every tensor is a host tensor: the value reads it counts are those that are syncs
    when the same tensors live on a GPU (the mask drawing of onmt_sdrop/masks.py reads host
    tensors only, on purpose, and is listed as such)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Census(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func.overloadpacket.__name__
            what = None
            if name in SYNC_OPS:
                dev = {t.device.type for t in tree_leaves(args) if isinstance(t, torch.Tensor)}
                what = f"{name} on {'/'.join(sorted(dev)) or '?'}"
            elif name in ("_to_copy", "copy_"):
                src = args[1] if name == "copy_" else args[0]
                dst = kwargs.get("device") if name == "_to_copy" else args[0].device
                dst = torch.device(dst) if dst is not None else src.device
                if src.device.type != dst.type:
                    blocking = not (kwargs.get("non_blocking") or
                                    (name == "copy_" and len(args) > 2 and args[2]))
                    if dst.type == "cpu":
                        what = f"copy {src.device.type}->cpu"
                    elif src.device.type == "cpu" and blocking:
                        what = f"blocking copy cpu->{dst.type}" + \
                               ("" if src.is_pinned() else " (pageable)")
            if what is not None:
                rec.census[(rec.phase(), what, _where())] += 1
            return func(*args, **kwargs)

    return Census()


def kernel_summary(prof, cuda: bool) -> dict:
    """Counts per profiled window from torch.profiler's table (divided by steps later)."""
    launches = {"cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                "cudaGraphLaunch"}
    syncs = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"}
    copies = {"cudaMemcpyAsync", "cudaMemcpy", "cudaMemcpy2DAsync"}
    out = collections.Counter()
    device_us = 0.0
    for ev in prof.key_averages():
        key = ev.key
        if key in launches:
            out["kernel_launches"] += ev.count
        elif key in syncs:
            out["synchronizations"] += ev.count
        elif key in copies:
            out["memcpy_calls"] += ev.count
        elif key.startswith("Memcpy DtoH"):
            out["memcpy_dtoh"] += ev.count
        elif key.startswith("Memcpy HtoD"):
            out["memcpy_htod"] += ev.count
        if key.startswith("aten::"):
            out["aten_ops"] += ev.count
            if key == "aten::_local_scalar_dense":
                out["aten_scalar_reads"] += ev.count
        if str(getattr(ev, "device_type", "")).endswith("CUDA"):   # the kernels themselves
            out["gpu_kernels"] += ev.count
            device_us += getattr(ev, "self_device_time_total", None) or \
                getattr(ev, "self_cuda_time_total", 0) or 0
    if cuda:
        out["gpu_kernel_ms"] = round(device_us / 1000, 3)
    return dict(out)


# ---------------------------------------------------------------------------------------------
# one training run of one variant


def run_variant(name: str, opts: list, rec: Recorder) -> None:
    """Train with ``onmt_train`` options ``opts`` in this process, probes installed."""
    import onmt.bin.train
    import onmt.train_single
    import onmt.trainer

    real_build = onmt.train_single.build_trainer

    def build_trainer(*args, **kwargs):
        trainer = real_build(*args, **kwargs)
        trainer.model_saver = None     # no checkpoints: not part of a step
        ga = trainer._gradient_accumulation

        def gradient_accumulation(true_batches, normalization, total_stats, report_stats):
            rec.begin_step()
            out = ga(true_batches, normalization, total_stats, report_stats)
            rec.end_step(total_stats.n_words)
            graphs = trainer.model.__dict__.get("_sdrop_graphs")
            if graphs is not None:
                rec.graph_keys.update(graphs.cache.keys())
            return out

        trainer._gradient_accumulation = gradient_accumulation
        trainer.model.forward = rec.wrap("forward", trainer.model.forward)
        trainer.train_loss.forward = rec.wrap("loss", trainer.train_loss.forward)
        trainer.train_loss._stats = rec.wrap("stats", trainer.train_loss._stats)
        trainer.optim.backward = rec.wrap("backward", trainer.optim.backward)
        trainer.optim.step = rec.wrap("optimizer", trainer.optim.step)
        validate = trainer.validate

        def timed_validate(*args, **kwargs):
            rec._sync()
            t0 = time.perf_counter()
            try:
                return validate(*args, **kwargs)
            finally:
                rec._sync()
                rec.valid_s.append(time.perf_counter() - t0)

        trainer.validate = timed_validate
        train = trainer.train

        def timed_train(train_iter, *args, **kwargs):
            def batches():
                it = iter(train_iter)
                while True:
                    rec.enter("data")
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                    finally:
                        rec.exit()
                    yield item
            return train(batches(), *args, **kwargs)

        trainer.train = timed_train
        return trainer

    onmt.train_single.build_trainer = build_trainer
    argv = sys.argv
    sys.argv = ["onmt_train", *opts]
    try:
        onmt.bin.train.main()
    finally:
        sys.argv = argv
        onmt.train_single.build_trainer = real_build
        rec.finish()


def summarise(rec: Recorder, plan: dict) -> dict:
    """tok/s and ms per step of the timed window, phase means, syncs per step."""
    def window(name):
        return [r for r in rec.records if r["window"] == name]

    out = {}
    thr = window("throughput")
    if thr:
        # tokens: the trainer's own count (target words, no padding), cumulative per step
        first = rec.records.index(thr[0])
        prev = rec.records[first - 1]["words"] if first else 0
        tokens = thr[-1]["words"] - prev
        wall = sum(r["wall"] for r in thr)
        out["steps"] = len(thr)
        out["tok_s"] = round(tokens / wall, 1)
        out["ms_per_step"] = round(1000 * wall / len(thr), 2)
        out["tgt_tokens_per_step"] = round(tokens / len(thr), 1)
    timed = window("profile") or [r for r in thr if "phases" in r]
    if timed:
        n = len(timed)
        ms = {p: round(1000 * sum(r["phases"][p] for r in timed) / n, 2) for p in PHASES}
        total = sum(ms.values())
        out["phases_ms"] = ms
        out["phases_share"] = {p: round(v / total, 3) for p, v in ms.items()} if total else {}
        out["phases_window"] = "profile (synchronised at phase boundaries)" if rec.cuda \
            else "throughput (a CPU runs synchronously)"
        out["profiled_ms_per_step"] = round(total, 2)
    cen = plan.get("census", 0)
    if cen and not any("census" in e for e in rec.errors):
        rows = [{"phase": ph, "what": what, "where": where, "per_step": round(c / cen, 2),
                 **{"note": note for f, note in HOST_READS.items() if where.startswith(f)}}
                for (ph, what, where), c in sorted(rec.census.items())]
        for r in rows:
            # on a GPU a value read of a host tensor is no sync; on a CPU everything is a host
            # tensor, and the reads that are not host reads by design stand for device reads
            r["sync"] = "note" not in r and not (rec.cuda and r["what"].endswith(" on cpu"))
        out["syncs"] = rows
        out["syncs_per_step_by_phase"] = {
            ph: round(sum(r["per_step"] for r in rows if r["phase"] == ph and r["sync"]), 2)
            for ph in PHASES if any(r["phase"] == ph and r["sync"] for r in rows)}
        out["host_reads_per_step"] = round(sum(r["per_step"] for r in rows if not r["sync"]), 2)
    if rec.kernel_stats is not None and plan.get("kernels"):
        k = plan["kernels"]
        out["profiler_per_step"] = {key: round(v / k, 2) for key, v in rec.kernel_stats.items()}
    if rec.graph_keys:
        out["graph_buckets_seen"] = len(rec.graph_keys)
    if rec.valid_s:
        out["validation_s"] = round(rec.valid_s[0], 2)
    return out


# ---------------------------------------------------------------------------------------------


def device_name(gpu: bool) -> str:
    import torch
    if gpu:
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def parse(argv):
    ap = argparse.ArgumentParser(
        prog="trainer_profile.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (tok/s)")
    ap.add_argument("--warmup", type=int, default=None, help="default 10 on a GPU, 3 on a CPU")
    ap.add_argument("--profile-steps", type=int, default=None,
                    help="steps synchronised at phase boundaries (default 20 on a GPU, 0 on a CPU, "
                         "where the timed steps are phase-timed already)")
    ap.add_argument("--census-steps", type=int, default=1, help="steps of the sync census")
    ap.add_argument("--kernels", type=int, default=None,
                    help="steps under torch.profiler (default 3 on a GPU, 0 on a CPU)")
    ap.add_argument("--variants", default=None,
                    help=f"comma-separated, of {', '.join(VARIANTS)} (default: all but "
                         "sdrop_graphs; on a GPU all)")
    ap.add_argument("--num-workers", default=None,
                    help="comma-separated -num_workers values, each variant runs with each "
                         "(default: the profile's)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the variants this many times, in turn (a shared machine's noise)")
    ap.add_argument("--profile", default="gpu-short", help="recipe profile (catalogue.py)")
    ap.add_argument("--batch", type=int, default=None, help="-batch_size (default: the profile's)")
    ap.add_argument("--data", default=str(ROOT / "data" / "iwslt14-sample"),
                    help="folder with train.SRC and train.TGT, plain or .xz")
    ap.add_argument("--langs", default=None, help="SRC,TGT (default: the two found)")
    ap.add_argument("--lines", type=int, default=None, help="first N training pairs")
    ap.add_argument("--vocab", type=int, default=10000, help="words per side")
    ap.add_argument("--extra", default="", help="more onmt_train options for every variant")
    ap.add_argument("--bare-steps", type=int, default=None,
                    help="steps of bench/cpu_bench.py's bare loop per variant (0: skip; "
                         "default 30 on a GPU, 5 on a CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--gpu", action="store_true", help="train on GPU 0")
    ap.add_argument("--note", default="", help="a note for the JSON (the machine, its load)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"),
                    help="folder (trainer-<cpu|gpu>-<date>.json) or a .json path")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny model, 200 lines, 2 steps: a check of the script, not a measurement")
    return ap.parse_args(argv)


def check(args) -> None:
    for opt in ("steps", "repeat"):
        if getattr(args, opt) < 1:
            raise Usage(f"--{opt} must be >= 1, got {getattr(args, opt)}")
    for opt in ("warmup", "profile_steps", "census_steps", "kernels", "bare_steps", "lines",
                "batch", "threads"):
        v = getattr(args, opt)
        if v is not None and v < (1 if opt in ("lines", "batch", "threads") else 0):
            raise Usage(f"--{opt.replace('_', '-')} must be >= "
                        f"{1 if opt in ('lines', 'batch', 'threads') else 0}, got {v}")
    if args.vocab < 1:
        raise Usage(f"--vocab must be >= 1, got {args.vocab}")
    if args.variants is not None:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        bad = [v for v in names if v not in VARIANTS]
        if bad or not names:
            raise Usage(f"--variants: unknown {', '.join(map(repr, bad)) or '(none)'}; "
                        f"a comma-separated subset of {', '.join(VARIANTS)}")
    if args.num_workers is not None:
        try:
            nws = [int(x) for x in args.num_workers.split(",")]
        except ValueError:
            raise Usage(f"--num-workers wants comma-separated integers, got "
                        f"{args.num_workers!r}") from None
        if not nws or min(nws) < 0:
            raise Usage(f"--num-workers wants integers >= 0, got {args.num_workers!r}")
    out = Path(args.out)
    if out.suffix != ".json" and out.exists() and not out.is_dir():
        raise Usage(f"--out {out}: not a folder or a .json path")


def main(argv=None) -> int:
    args = parse(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check(args)
        from onmt_sdrop.recipe.catalogue import MODELS, PROFILES
        if args.profile not in PROFILES:
            raise Usage(f"--profile: unknown {args.profile!r}; one of {', '.join(PROFILES)}")
        import torch
        if args.gpu and not torch.cuda.is_available():
            raise Usage("--gpu: torch sees no CUDA device")
        return _main(args, MODELS, PROFILES[args.profile])
    except Usage as exc:
        print(f"trainer_profile.py: error: {exc}", file=sys.stderr)
        return 2


def _with(args: list, opt: str, value: str) -> list:
    args = list(args)
    if opt in args:
        args[args.index(opt) + 1] = value
    else:
        args += [opt, value]
    return args


def _main(args, MODELS, profile) -> int:
    import torch

    gpu = args.gpu
    if args.threads:
        torch.set_num_threads(args.threads)
    dry = args.dry_run
    warmup = args.warmup if args.warmup is not None else (1 if dry else 10 if gpu else 3)
    steps = 2 if dry else args.steps
    plan = {"warmup": warmup, "throughput": steps,
            "profile": args.profile_steps if args.profile_steps is not None else 20 if gpu
            else 0,
            "census": args.census_steps,
            "kernels": args.kernels if args.kernels is not None else (3 if gpu else 1 if dry
                                                                      else 0)}
    bare_steps = args.bare_steps if args.bare_steps is not None else (2 if dry else 30 if gpu
                                                                      else 5)
    names = ([v.strip() for v in args.variants.split(",") if v.strip()] if args.variants
             else [v for v in VARIANTS if gpu or v != "sdrop_graphs"])
    train_args = list(profile.train_args)
    if dry:
        for opt, value in (("-layers", "1"), ("-hidden_size", "16"), ("-word_vec_size", "16"),
                           ("-batch_size", "8")):
            train_args = _with(train_args, opt, value)
    if args.batch:
        train_args = _with(train_args, "-batch_size", str(args.batch))
    own_nw = train_args[train_args.index("-num_workers") + 1] if "-num_workers" in train_args \
        else "0"
    # the dry run loads in this process: spawning workers would take most of its time
    nws = [int(x) for x in args.num_workers.split(",")] if args.num_workers \
        else [0 if dry else int(own_nw)]
    train_args = [a for i, a in enumerate(train_args)
                  if a != "-num_workers" and (i == 0 or train_args[i - 1] != "-num_workers")]
    extra = args.extra.split()

    date = dt.date.today().isoformat()
    out = Path(args.out)
    kind = "dry-run" if dry else "trainer"
    path = out if out.suffix == ".json" else out / f"{kind}-{'gpu' if gpu else 'cpu'}-{date}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="trainer-profile-"))
    data = prepare_data(Path(args.data), args.langs, 200 if dry else args.lines, args.vocab, work,
                        40 if dry else None)
    result = {
        "what": "OpenNMT-py's own trainer (onmt.bin.train.main, in-process, with the onmt_sdrop "
                "hook), each step's wall time split into phases; bench/cpu_bench.py's bare loop "
                "beside it" + (" -- DRY RUN, not a measurement" if dry else ""),
        "device": device_name(gpu) + (" (dry run: not a measurement)" if dry else ""),
        "torch": torch.__version__,
        "date": date,
        "note": args.note,
        "command": "python bench/trainer_profile.py " + shlex.join(args.argv),
        "config": {"profile": args.profile, "train_args": train_args, "extra": extra,
                   "data": data, "plan_steps": plan, "bare_steps": bare_steps,
                   "repeat": args.repeat,
                   "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "phases": {"data": "waiting for the next batch (train iterator __next__)",
                   "forward": "NMTModel.forward (encoder + decoder)",
                   "loss": "LossCompute.forward without _stats (generator, loss)",
                   "stats": "LossCompute._stats (.item() of loss, correct, words)",
                   "backward": "Optimizer.backward", "optimizer": "Optimizer.step",
                   "rest": "the rest of the step: zero_grad, src_len.sum().item(), Statistics, "
                           "the -report_every report, _accum_batches"},
        "validation_s": "one Trainer.validate over the valid split after the last step "
                        "(with -num_workers > 0 OpenNMT-py 3.5.1 alone starts fresh DataLoader "
                        "workers for every validation; the plugin builds the validation iterator "
                        "without workers: the rows of -num_workers 0 and 2 should now agree)",
        "stock_trainer_syncs": STOCK_SYNC_NOTE,
        "census_note": "syncs: aten ops seen by a dispatch mode in the census step, per phase and "
                       "OpenNMT-py/onmt_sdrop source line; on a CPU every tensor is a host "
                       "tensor, so value reads stand for device reads except the host reads by "
                       "design (note). torch.tensor(data, device=cuda) copies inside tensor "
                       "construction (tensorify with -num_workers 0) and cuDNN's own reads are "
                       "invisible to a dispatch mode: profiler_per_step's synchronizations and "
                       "memcpy counts (GPU) include them",
        "variants": [],
    }

    def write():
        path.write_text(json.dumps(result, indent=2) + "\n")

    order = [("warmup", plan["warmup"]), ("throughput", plan["throughput"]),
             ("profile", plan["profile"]), ("census", plan["census"]),
             ("kernels", plan["kernels"])]
    total = sum(n for _, n in order) + 1      # + 1: the last window's step ends at the next
    runs = [(r, nw, name) for r in range(args.repeat) for nw in nws for name in names]
    for repeat, nw, name in runs:
        model, vextra = VARIANTS[name]
        opts = ["-config", str(work / "data.yaml"), "-save_model", str(work / "model"),
                *train_args, "-num_workers", str(nw), "-train_steps", str(total),
                # one validation, after the last step (outside every window)
                "-valid_steps", str(total), "-save_checkpoint_steps", "1000000",
                *MODELS[model], *vextra, *extra]
        if gpu:
            opts += ["-world_size", "1", "-gpu_ranks", "0"]
        label = (name if len(nws) == 1 else f"{name}/nw{nw}") + \
            (f"#{repeat + 1}" if args.repeat > 1 else "")
        print(f"=== {label}: onmt_train {' '.join(opts)}", flush=True)
        rec = Recorder(order, cuda=gpu)
        t0 = time.perf_counter()
        row = {"variant": name, "num_workers": nw, "repeat": repeat + 1,
               "options": [*MODELS[model], *vextra]}
        try:
            run_variant(name, opts, rec)
        except SystemExit as exc:
            row["error"] = f"onmt_train exited with status {exc.code}"
        except Exception as exc:  # noqa: BLE001 - recorded; the other variants go on
            traceback.print_exc()
            row["error"] = f"{type(exc).__name__}: {exc}"
        try:   # what the windows that finished measured
            row.update(summarise(rec, plan))
        except Exception as exc:  # noqa: BLE001
            row["summary_error"] = f"{type(exc).__name__}: {exc}"
        if rec.errors:
            row["window_errors"] = rec.errors
        row["run_s"] = round(time.perf_counter() - t0, 1)
        gc.collect()    # the run's trainer, model and DataLoader workers go now, not later
        if gpu:
            row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.empty_cache()
        result["variants"].append(row)
        print(f"    {label}: " + ", ".join(
            f"{k} {row[k]}" for k in ("tok_s", "ms_per_step", "error") if k in row), flush=True)
        write()

    by = collections.defaultdict(list)
    for row in result["variants"]:
        if row.get("tok_s"):
            by[row["variant"] + (f"/nw{row['num_workers']}" if len(nws) > 1 else "")].append(
                row["tok_s"])
    result["tok_s_by_variant"] = {k: {"runs": v, "mean": round(sum(v) / len(v), 1)}
                                  for k, v in by.items()}
    write()
    if bare_steps:
        result["bare_loop"] = bare_loop(args, names, train_args, extra, data, bare_steps, gpu,
                                        MODELS)
        for row in result["variants"]:
            bare = result["bare_loop"].get("tok_s", {}).get(row["variant"])
            if bare and row.get("tok_s"):
                row["bare_tok_s"] = bare
                row["trainer_vs_bare"] = round(row["tok_s"] / bare, 3)
        write()
    print(table(result))
    print(f"wrote {path}")
    return 0


def bare_loop(args, names, train_args, extra, data, steps, gpu, MODELS) -> dict:
    """bench/cpu_bench.py's measure(): the same model size, synthetic batches, SGD."""
    sys.path.insert(0, str(ROOT / "bench"))
    import cpu_bench

    def opt(name, default):
        return train_args[train_args.index(name) + 1] if name in train_args else default

    hidden, layers, batch = int(opt("-hidden_size", 500)), int(opt("-layers", 2)), \
        int(opt("-batch_size", 64))
    dropout = float(opt("-dropout", 0.3))
    variants = {n: [*MODELS[VARIANTS[n][0]], *VARIANTS[n][1]] for n in names}
    try:
        tok_s = cpu_bench.measure(variants, hidden=hidden, layers=layers, batch=batch,
                                  vocab=data["tgt_vocab"], dropout=dropout, steps=steps,
                                  warmup=2, rnd=min(5, steps), device="cuda" if gpu else "cpu",
                                  log=lambda m: print("    bare loop " + m, flush=True))
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"tok_s": tok_s, "config": {
        "hidden": hidden, "layers": layers, "batch_sents": batch, "vocab": data["tgt_vocab"],
        "dropout": dropout, "steps": steps, "mean_len": 24, "optimizer": "SGD",
        "what": "bench/cpu_bench.py measure(): forward, generator + cross-entropy, backward, "
                "SGD step on synthetic batches, no data loading, statistics or report"}}


def table(result) -> str:
    lines = [f"{result['device']}, torch {result['torch']}",
             f"{'variant':<16}{'tok/s':>9}{'ms/step':>9}{'bare tok/s':>11}  " +
             " ".join(f"{p:>9}" for p in PHASES) + "   syncs/step  valid s"]
    for r in result["variants"]:
        label = r["variant"] + (f"/nw{r['num_workers']}" if r["num_workers"] else "") + \
            (f"#{r['repeat']}" if result["config"]["repeat"] > 1 else "")
        if "error" in r or "window_errors" in r:
            lines.append(f"{label:<16} error: {r.get('error') or r['window_errors']}")
        if "tok_s" not in r:
            continue
        ph = r.get("phases_ms", {})
        syncs = sum(r["syncs_per_step_by_phase"].values()) if "syncs" in r else float("nan")
        lines.append(f"{label:<16}{r.get('tok_s', 0):>9.0f}{r.get('ms_per_step', 0):>9.1f}"
                     f"{r.get('bare_tok_s', float('nan')):>11.0f}  " +
                     " ".join(f"{ph.get(p, float('nan')):>9.1f}" for p in PHASES) +
                     f"   {syncs:>10g}  {r.get('validation_s', float('nan')):>7.2f}")
    lines.append("phases: ms per step; syncs/step: device value reads and blocking copies "
                 "(census step; host reads by design left out)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
