"""Process control: the children (onmt_train, onmt_translate) and the checkpoints they write.

Children die with the pipeline: on Linux each child asks the kernel for SIGKILL when its parent
dies (``prctl(PR_SET_PDEATHSIG)``), so a ``kill -9`` of the pipeline cannot leave an onmt_train
training on and writing checkpoints nobody logs; on any exit of ours (Ctrl-C, an error) the child
is killed too.
"""
from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import SdropError

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int):
    """A ``preexec_fn``: SIGKILL this child when the process that started it dies."""
    def preexec():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:      # the parent died before prctl took effect
            os._exit(1)
    return preexec


def stream(cmd: list[str], log_path: Path, watch=None) -> bool:
    """Run ``cmd``, echoing its output and appending it to ``log_path``; raise on failure.

    ``watch(line)`` sees each output line; when it returns True the child is stopped there and
    ``stream`` returns True (else False once the child has finished successfully)."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    preexec = _die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, preexec_fn=preexec)
    try:
        with open(log_path, "a", encoding="utf-8", buffering=1) as log:
            for line in proc.stdout:
                log.write(line)
                if "Warning" not in line and "@custom_" not in line:
                    print("  " + line, end="", flush=True)
                if watch is not None and watch(line):
                    proc.terminate()
                    proc.wait()
                    return True
        proc.wait()
    finally:
        if proc.poll() is None:         # we are leaving on an exception: the child goes too
            proc.kill()
            proc.wait()
        proc.stdout.close()
    if proc.returncode:
        raise SdropError(f"command failed with status {proc.returncode} (log: {log_path}): "
                         + " ".join(cmd[:4]) + " ...")
    return False


def onmt(tool: str) -> list[str]:
    """The command line of an OpenNMT-py entry point with the plugin loaded."""
    return [sys.executable, "-m", "onmt_sdrop.cli", tool]


# ---------------------------------------------------------------------------------- checkpoints
def step_of(checkpoint: Path) -> int:
    """``model_step_2500.pt`` -> 2500."""
    return int(Path(checkpoint).stem.rsplit("_", 1)[1])


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    return sorted(Path(run_dir).glob("model_step_*.pt"), key=step_of)


def intact(checkpoint: Path) -> bool:
    """Whether a checkpoint is a whole file: torch saves a zip archive, whose central directory
    is written last, so a file cut short by a kill during saving does not open."""
    try:
        with zipfile.ZipFile(checkpoint) as zf:
            return bool(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def drop_truncated(run_dir: Path, say=print) -> list[Path]:
    """Remove checkpoints cut short (a kill during saving), each with one line; the intact ones."""
    good = []
    for ckpt in checkpoints(run_dir):
        if intact(ckpt):
            good.append(ckpt)
        else:
            ckpt.unlink()
            prev = f"; falling back to {good[-1].name}" if good else ""
            say(f"{run_dir.name}: {ckpt.name} is truncated (killed while saving?), removed{prev}")
    return good


def prune(run_dir: Path, keep: int, best_step: int | None = None) -> list[Path]:
    """Keep at most ``keep`` checkpoints: the best on validation and the newest. OpenNMT-py's
    own ``-keep_checkpoint`` forgets the checkpoints of earlier runs after a resume, so the
    pipeline trims instead."""
    ckpts = checkpoints(run_dir)
    if keep <= 0 or len(ckpts) <= keep:
        return ckpts
    keep_set = {c for c in ckpts if step_of(c) == best_step}
    for c in reversed(ckpts):
        if len(keep_set) >= keep:
            break
        keep_set.add(c)
    for c in ckpts:
        if c not in keep_set:
            c.unlink()
    return [c for c in ckpts if c in keep_set]
