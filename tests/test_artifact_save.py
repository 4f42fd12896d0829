"""Saving over a model directory: files imgclean did not write survive (carried over, or the save
refuses naming them), a crash at any step keeps the old model and those files, and model files
get the user's umask."""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgclean.store import artifact, model_carry
from imgclean.store.artifact import (
    CONFIG_FILE, HEAD_FILE, OWN_FILES, WEIGHTS_FILE, ModelError, load_model, save_model,
)
from imgclean.cli import app

ROOT = Path(__file__).resolve().parents[1]


def add_foreign_files(model: Path) -> dict[str, str]:
    """A user's notes and the plots/ folder `evaluate --plots` writes; returns rel path -> sha256."""
    (model / "NOTES.md").write_text("trained on the March photos; do not delete\n")
    (model / "plots").mkdir()
    (model / "plots" / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    (model / "plots" / "deeper").mkdir()
    (model / "plots" / "deeper" / "data.csv").write_text("fpr,tpr\n0,0\n1,1\n")
    os.symlink("NOTES.md", model / "README.link")
    return foreign_state(model)


def foreign_state(model: Path) -> dict[str, str]:
    out = {}
    for p in sorted(model.rglob("*")):
        rel = str(p.relative_to(model))
        if rel in OWN_FILES:
            continue
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        elif not p.is_file():
            out[rel] = "special"  # never opened: a FIFO would block
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def siblings(model: Path) -> list[str]:
    return sorted(p.name for p in model.parent.iterdir() if p.name.startswith(f".{model.name}."))


def test_fit_head_keeps_notes_and_plots_byte_identical(model_copy, reject_folder, train_dir, one_torch_thread):
    before = add_foreign_files(model_copy)
    old = load_model(model_copy).fingerprint
    result = CliRunner().invoke(app, ["fit-head", "--reject-dir", str(reject_folder), "-m", str(model_copy),
                                      "--train-dir", str(train_dir), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    bundle = load_model(model_copy)
    assert bundle.head is not None and bundle.fingerprint != old  # the model was replaced...
    assert foreign_state(model_copy) == before  # ...and every foreign file came along
    assert siblings(model_copy) == []  # no backup or temporary folder left behind


def test_save_over_a_model_carries_foreign_files_and_drops_only_its_own(model_copy):
    before = add_foreign_files(model_copy)
    (model_copy / HEAD_FILE).write_bytes(b"a stale head file: imgclean's own name, not carried")
    notes_inode = (model_copy / "NOTES.md").stat().st_ino
    bundle = load_model(model_copy)
    save_model(bundle, model_copy, force=True)
    assert foreign_state(model_copy) == before
    assert (model_copy / "NOTES.md").stat().st_ino == notes_inode  # the very file, not a copy
    assert not (model_copy / HEAD_FILE).exists()
    assert load_model(model_copy).fingerprint == bundle.fingerprint
    assert siblings(model_copy) == []


def test_a_file_that_cannot_be_linked_is_copied(model_copy, monkeypatch):
    before = add_foreign_files(model_copy)
    real_link = os.link

    def no_links(src, dst, *a, **k):
        if os.path.isfile(src) and not os.path.islink(src):
            raise OSError(errno.EPERM, "Operation not permitted")
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(model_carry.os, "link", no_links)
    save_model(load_model(model_copy), model_copy, force=True)
    assert foreign_state(model_copy) == before and siblings(model_copy) == []


def test_what_cannot_be_carried_is_named_and_nothing_changes(model_copy, monkeypatch):
    os.mkfifo(model_copy / "pipe")
    before = add_foreign_files(model_copy)
    fingerprint = load_model(model_copy).fingerprint
    real_link = os.link

    def no_fifo_links(src, dst, *a, **k):
        if os.fspath(src).endswith("pipe"):
            raise OSError(errno.EPERM, "Operation not permitted")
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(model_carry.os, "link", no_fifo_links)
    with pytest.raises(ModelError, match=r"cannot carry over.*pipe"):
        save_model(load_model(model_copy), model_copy, force=True)
    assert foreign_state(model_copy) == before and stat.S_ISFIFO(os.lstat(model_copy / "pipe").st_mode)
    assert load_model(model_copy).fingerprint == fingerprint and siblings(model_copy) == []


@pytest.mark.parametrize("fail_at", ["carry", "first_rename", "second_rename", "fsync_parent"])
def test_a_failure_mid_save_keeps_the_old_model_and_the_foreign_files(model_copy, monkeypatch, fail_at):
    before = add_foreign_files(model_copy)
    old = load_model(model_copy)
    bundle = load_model(model_copy)
    bundle.config["metrics"] = {"marker": "new"}
    real_rename, real_fsync_dir = os.rename, artifact.fsync_dir
    calls = []

    def rename(a, b):
        calls.append(a)
        if (fail_at, len(calls)) in (("first_rename", 1), ("second_rename", 2)):
            raise OSError(errno.EIO, "injected")
        return real_rename(a, b)

    def fsync_dir(path):
        if fail_at == "fsync_parent" and Path(path) == model_copy.parent:
            raise OSError(errno.EIO, "injected")
        return real_fsync_dir(path)

    def carry(*a):
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(artifact.os, "rename", rename)
    monkeypatch.setattr(artifact, "fsync_dir", fsync_dir)
    if fail_at == "carry":
        monkeypatch.setattr(artifact, "carry_foreign", carry)
    with pytest.raises(OSError, match="injected"):
        save_model(bundle, model_copy, force=True)
    monkeypatch.undo()
    assert foreign_state(model_copy) == before
    survivor = load_model(model_copy)
    if fail_at == "fsync_parent":  # both renames were done: the new model is in place, complete
        assert survivor.config["metrics"] == {"marker": "new"}
    else:
        assert survivor.fingerprint == old.fingerprint and "marker" not in survivor.config["metrics"]


SAVE_AND_DIE = r"""
import os, signal, sys
from pathlib import Path
from imgclean.store import artifact
target = Path(sys.argv[1])
bundle = artifact.load_model(target)
bundle.config["metrics"] = {"marker": "new"}
real_rename = os.rename
calls = []
def rename(a, b):
    calls.append(a)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(a, b)
artifact.os.rename = rename
artifact.save_model(bundle, target, force=True)
"""


def test_kill_9_between_the_renames_keeps_the_old_model_and_the_foreign_files(model_copy):
    before = add_foreign_files(model_copy)
    fingerprint = load_model(model_copy).fingerprint
    proc = subprocess.run([sys.executable, "-c", SAVE_AND_DIE, os.fspath(model_copy)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not model_copy.exists()  # only the backup name holds the model now
    survivor = load_model(model_copy)  # puts the backup back first
    assert survivor.fingerprint == fingerprint and foreign_state(model_copy) == before


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_model_files_follow_the_umask(model_with_head, tmp_path, umask, file_mode, dir_mode):
    bundle = load_model(model_with_head)
    previous = os.umask(umask)
    try:
        target = save_model(bundle, tmp_path / "m")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()}
    # config, weights and every detector's file (but the learned rule's: only `imgclean learn` adds it)
    assert modes == {name: file_mode for name in OWN_FILES if name != "detector-reviewed.npz"}
    assert stat.S_IMODE(target.stat().st_mode) == dir_mode
