"""The OpenNMT-py patches: each applied once, each doing what README says."""
from __future__ import annotations

import inspect
import io
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import onmt
from conftest import run
from onmt_sdrop import hook, patches


def test_torch_load_allowlisted_checkpoints_for_onmt(tmp_path):
    """OpenNMT-py's loads keep weights_only=True and allow argparse.Namespace (the options)."""
    path = tmp_path / "ckpt.pt"
    torch.save({"opt": Namespace(a=1), "model": {}}, path)
    from onmt.models.model_saver import load_checkpoint

    assert load_checkpoint(str(path))["opt"].a == 1          # OpenNMT-py's own loader works
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        torch.load(path)                                      # other callers keep torch's default


def test_patches_are_idempotent():
    import onmt.bin.translate
    import onmt.model_builder
    import onmt.train_single
    from onmt.utils.parse import ArgumentParser, DataOptsCheckerMixin

    from onmt_sdrop import plugin

    def state():
        return (torch.load, DataOptsCheckerMixin.__dict__["_validate_data"],
                DataOptsCheckerMixin.__dict__["_validate_file"],
                *(ArgumentParser.__dict__[n] for n in (
                    "validate_model_opts", "validate_train_opts", "validate_translate_opts",
                    "validate_prepare_opts", "ckpt_model_opts")),
                onmt.opts.model_opts, onmt.opts.translate_opts, onmt.model_builder.build_base_model,
                onmt.model_builder.load_test_model, onmt.train_single._get_model_opts,
                onmt.bin.translate.main, onmt.bin.translate.translate)

    before = state()
    patches.apply()
    plugin.register()
    hook.install()
    patches.wrap_entry_point(onmt.bin.translate)
    assert state() == before


def test_wrap_once_functions_classmethods_staticmethods():
    class Base:
        @classmethod
        def cm(cls, x):
            return (cls.__name__, x)

        @staticmethod
        def sm(x):
            return x + 1

    class Child(Base):
        pass

    def plus_ten(inner):
        return lambda *a: (inner(*a), 10)

    def twice(inner):
        return lambda *a: (inner(*a), "twice")

    assert patches.wrap_once(Child, "cm", plus_ten)       # inherited classmethod: set on Child
    assert not patches.wrap_once(Child, "cm", plus_ten)   # once
    assert Child.cm(1) == (("Child", 1), 10) and Base.cm(1) == ("Base", 1)
    assert isinstance(Child.__dict__["cm"], classmethod)
    assert patches.wrap_once(Child, "cm", twice)          # another wrapper stacks
    assert Child.cm(2) == ((("Child", 2), 10), "twice")
    assert patches.replaced(Child, "cm") == {f"{__name__}.{f.__qualname__}" for f in (plus_ten,
                                                                                       twice)}
    patches.wrap_once(Base, "sm", plus_ten)
    assert isinstance(Base.__dict__["sm"], staticmethod) and Base.sm(1) == (2, 10)
    module = type(sys)("m")
    module.f = lambda: 1
    patches.wrap_once(module, "f", plus_ten)
    patches.wrap_once(module, "f", plus_ten)
    assert module.f() == (1, 10)


def test_every_replacement_is_listed_in_the_patches_docstring():
    import onmt.bin.translate
    import onmt.model_builder
    import onmt.train_single
    from onmt.utils.parse import ArgumentParser, DataOptsCheckerMixin

    doc = patches.__doc__
    import onmt.models.model
    import onmt.trainer

    owners = [(torch, "torch"), (onmt.opts, "onmt.opts"), (onmt.model_builder,
              "onmt.model_builder"), (onmt.train_single, "onmt.train_single"),
              (onmt.bin.translate, "onmt.bin"), (ArgumentParser, "ArgumentParser"),
              (DataOptsCheckerMixin, "DataOptsCheckerMixin"),
              (onmt.models.model.NMTModel, "NMTModel"), (onmt.trainer.Trainer, "Trainer"),
              (onmt.inputters.dynamic_iterator, "onmt.inputters.dynamic_iterator")]
    for owner, label in owners:
        for name in list(vars(owner)):
            if patches.replaced(owner, name):
                assert f"{name}``" in doc or f".{name}" in doc, (label, name)


def test_validation_iterator_loads_without_workers():
    """With -num_workers > 0 the validation iterator is built with none (OpenNMT-py 3.5.1 would
    spawn fresh workers at every validation); training's keeps them; the caller's options are
    not changed; the task is found however it is passed."""
    import argparse

    import onmt.train_single
    from onmt.constants import CorpusTask

    from onmt_sdrop.plugin import _wrap_dataset_iter

    seen = []

    def build(opt, transforms_cls, vocabs, copy=False, task=CorpusTask.TRAIN, stride=1,
              offset=0, src=None, tgt=None, align=None, device_id=-1):
        seen.append((task, opt.num_workers))

    wrapped = _wrap_dataset_iter(build)
    opt = argparse.Namespace(num_workers=2)
    wrapped(opt, None, None, task=CorpusTask.VALID, copy=False, device_id=0)
    wrapped(opt, None, None, task=CorpusTask.TRAIN)
    wrapped(opt, None, None, False, CorpusTask.VALID)
    wrapped(opt, None, None)
    assert seen == [(CorpusTask.VALID, 0), (CorpusTask.TRAIN, 2), (CorpusTask.VALID, 0),
                    (CorpusTask.TRAIN, 2)]
    assert opt.num_workers == 2
    assert patches.replaced(onmt.train_single, "build_dynamic_dataset_iter")


def test_a_gpu_batch_is_made_on_the_cpu_and_moved_once_per_tensor(monkeypatch):
    """OpenNMT-py's tensorify for a device batch: built on the CPU by the stock function, then
    each tensor moved once (pinned, non-blocking on a GPU; here the meta device stands in), the
    lists untouched; a CPU batch is the stock one; the stock iterator calls the wrapper."""
    import onmt.inputters.dynamic_iterator as dynamic_iterator
    from onmt.constants import DefaultTokens

    from onmt_sdrop.plugin import _wrap_tensorify

    assert patches.replaced(dynamic_iterator, "tensorify")
    vocabs = {"src": {DefaultTokens.PAD: 1}, "tgt": {DefaultTokens.PAD: 1}}
    minibatch = [({"src": {"src_ids": [4, 5, 6]}, "tgt": {"tgt_ids": [7, 8]}, "cid": "c",
                   "cid_line_number": i}, i) for i in range(3)]
    minibatch[1][0]["src"]["src_ids"] = [4]
    stock = inspect.unwrap(dynamic_iterator.tensorify)
    devices, moved = [], []
    real_to = torch.Tensor.to

    def spy(inner):
        def tensorify(vocabs, minibatch, device, left_pad=False):
            devices.append(str(device))
            return inner(vocabs, minibatch, device, left_pad)
        return tensorify

    def to(self, *args, **kwargs):
        moved.append(tuple(self.shape))
        return real_to(self, *args, **kwargs)

    wrapped = _wrap_tensorify(spy(stock))
    want = stock(vocabs, minibatch, torch.device("cpu"))
    monkeypatch.setattr(torch.Tensor, "to", to)
    got = wrapped(vocabs, minibatch, torch.device("meta"))
    monkeypatch.undo()
    assert devices == ["cpu"]
    assert sorted(moved) == sorted(tuple(v.shape) for v in want.values()
                                   if isinstance(v, torch.Tensor))
    assert got.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            assert got[k].device.type == "meta" and got[k].shape == v.shape, k
        else:
            assert got[k] == v, k
    cpu = wrapped(vocabs, minibatch, torch.device("cpu"))
    assert all(torch.equal(cpu[k], v) if isinstance(v, torch.Tensor) else cpu[k] == v
               for k, v in want.items())


def test_stock_registries_know_the_plugin():
    assert {"sdrop_rnn", "sdrop_brnn"} <= set(onmt.encoders.str2enc)
    assert "sdrop_rnn" in onmt.decoders.str2dec


def test_pth_hook_loads_plugin_in_a_fresh_interpreter():
    """The start-up hook makes a plain `import onmt` register the plugin."""
    proc = run([sys.executable, "-c", "import onmt; print('sdrop_brnn' in onmt.encoders.str2enc)"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_error_wrapper_turns_sdrop_error_into_one_line(capsys):
    from onmt_sdrop.errors import SdropError

    def bad():
        raise SdropError("something is off")

    with pytest.raises(SystemExit) as exc:
        patches.run_cli(bad, "prog")
    assert exc.value.code == 2
    assert capsys.readouterr().err == "prog: error: something is off\n"


# OpenNMT-py's own tests that need files its wheel does not ship (the repo's data/ folder,
# onmt/tests/test_model.pt) or optional packages we do not install (tensorboard).
ONMT_TESTS_NEED_REPO_FILES = ["test_data_prepare.py", "test_events.py",
                              "test_translation_server.py"]


@pytest.mark.slow
def test_opennmt_own_unit_tests_pass_with_the_plugin(tmp_path):
    tests = Path(onmt.__file__).parent / "tests"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
           str(tests), "-k", "not TestSubwordTransform"]
    cmd += [f"--ignore={tests / name}" for name in ONMT_TESTS_NEED_REPO_FILES]
    proc = run(cmd, cwd=tmp_path)
    tail = proc.stdout[-1500:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail
