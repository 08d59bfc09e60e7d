"""The OpenNMT-py patches: each applied once, each doing what README says."""
from __future__ import annotations

import io
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import onmt
from conftest import run
from onmt_sdrop import hook, patches


def test_torch_load_full_checkpoints_only_for_onmt(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"opt": Namespace(a=1), "model": {}}, path)
    from onmt.models.model_saver import load_checkpoint

    assert load_checkpoint(str(path))["opt"].a == 1          # OpenNMT-py's own loader works
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        torch.load(path)                                      # other callers keep torch's default


def test_patches_are_idempotent():
    from onmt.utils.parse import DataOptsCheckerMixin

    before = (torch.load, DataOptsCheckerMixin.__dict__["_validate_data"])
    patches.apply()
    hook.install()
    assert (torch.load, DataOptsCheckerMixin.__dict__["_validate_data"]) == before


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
