"""A folder inside the scan that cannot be listed (permission denied, an I/O error, swapped for a
link or another folder while the walk was in its parent) is not silently left out: the walk gives
it as one skipped entry, so it ends as a `skipped` record saying why, counted in the summary and
never moved."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import class_image, make_incoming_folder, ood_image, write_png
from imgclean import walk
from imgclean.pipeline.scan.scanner import ScanOptions, run_scan
from imgclean.store.artifact import load_model
from imgclean.walk import count_images, is_unlisted, unlisted_reason, walk_images

ROOT = Path(__file__).resolve().parents[1]


def tree(root: Path) -> Path:
    make_incoming_folder(root, normal=3, ood=2)
    rng = np.random.default_rng(2)
    write_png(root / "m-sub" / "in.png", class_image("checker", rng))
    write_png(root / "m-sub" / "out.png", ood_image(rng))
    write_png(root / "m-sub" / "deeper" / "x.png", ood_image(rng))
    write_png(root / "z.png", class_image("checker", rng))
    return root


def failing_open(monkeypatch, folder: Path, code: int) -> None:
    """Opening `folder` fails with `code`: os.open (how the walk's listing opens each folder)
    and os.scandir by path (how count_images lists it)."""
    target = os.fspath(folder)

    def failing(real):
        def fake(path, *args, **kwargs):
            if not isinstance(path, int) and os.fspath(path) == target:
                raise OSError(code, os.strerror(code), target)
            return real(path, *args, **kwargs)
        return fake

    monkeypatch.setattr(os, "open", failing(os.open))
    monkeypatch.setattr(os, "scandir", failing(os.scandir))


def scan(root: Path, model_dir: Path, **kw):
    records = []
    summary = run_scan(root, load_model(model_dir, lazy=True), ScanOptions(batch_size=4, workers=1), on_record=records.append, **kw)
    return summary, {r.path: r for r in records}


@pytest.mark.parametrize("code", [errno.EACCES, errno.EIO])
def test_a_folder_that_cannot_be_listed_is_a_skipped_record(model_dir, tmp_path, monkeypatch, code):
    root = tree(tmp_path / "t")
    _, whole = scan(root, model_dir)
    failing_open(monkeypatch, root / "m-sub", code)
    summary, records = scan(root, model_dir)
    got = records["m-sub"]
    assert got.status == "skipped" and got.message == f"folder could not be listed: {os.strerror(code)}"
    assert got.action == "" and got.destination is None
    assert set(records) == {p for p in whole if not p.startswith("m-sub/")} | {"m-sub"}
    assert summary.counts["skipped"] == sum(r.status == "skipped" for r in whole.values()) + 1
    assert count_images(root) == sum(1 for _ in walk_images(root)) == len(records)


def test_a_folder_that_cannot_be_listed_is_never_moved(model_dir, tmp_path, monkeypatch):
    from imgclean.quarantine.moves import Quarantine

    root = tree(tmp_path / "t")
    failing_open(monkeypatch, root / "m-sub", errno.EACCES)
    q = tmp_path / "q"
    with Quarantine(q) as quarantine:
        opts = ScanOptions(batch_size=4, workers=1, exclude=(q,))
        records = []
        summary = run_scan(root, load_model(model_dir, lazy=True), opts, quarantine, on_record=records.append)
    assert summary.moved > 0  # the rejects elsewhere moved
    assert [r.action for r in records if r.path == "m-sub"] == [""]
    assert sorted(p.name for p in (root / "m-sub").iterdir()) == ["deeper", "in.png", "out.png"]


def test_the_scanned_folder_itself_unlisted_is_one_skipped_record(model_dir, tmp_path, monkeypatch):
    root = tree(tmp_path / "t")
    failing_open(monkeypatch, root, errno.EIO)
    summary, records = scan(root, model_dir)
    assert list(records) == ["."] and records["."].status == "skipped" and "could not be listed" in records["."].message
    assert summary.counts["skipped"] == 1


def test_a_folder_gone_since_its_parent_was_listed_is_nothing_to_report(tmp_path, monkeypatch):
    root = tree(tmp_path / "t")
    real = walk._listing

    def vanishing(folder, identity=None):
        if os.path.basename(folder) == "m-sub":
            shutil.rmtree(folder)
        return real(folder, identity)

    monkeypatch.setattr(walk, "_listing", vanishing)
    entries = list(walk_images(root))
    assert not any("m-sub" in e.fspath for e in entries) and not any(e.skip_reason for e in entries)


@pytest.mark.parametrize("swap", ["a link to a folder outside", "another folder"])
def test_a_folder_swapped_during_the_walk_is_not_entered(tmp_path, monkeypatch, swap):
    """Between the listing of its parent and its own: the walk never leaves the tree through a
    link, and never lists a folder it has not seen in its parent."""
    root = tree(tmp_path / "t")
    outside = tmp_path / "outside"
    write_png(outside / "secret.png", ood_image(np.random.default_rng(0)))
    real = walk._listing

    def swapping(folder, identity=None):
        if os.path.basename(folder) == "m-sub" and not os.path.islink(folder):
            os.rename(folder, tmp_path / "away")
            if swap == "another folder":
                shutil.copytree(tmp_path / "away", folder)
            else:
                os.symlink(outside, folder)
        return real(folder, identity)

    monkeypatch.setattr(walk, "_listing", swapping)
    entries = list(walk_images(root))
    assert not any("secret" in e.fspath for e in entries)
    sub = [e for e in entries if e.fspath == os.path.join(root, "m-sub")]
    assert len(sub) == 1 and sub[0].skip_reason.startswith("folder could not be listed: it was replaced")
    assert not any(e.fspath.startswith(os.path.join(root, "m-sub") + os.sep) for e in entries)


def test_unlisted_reason_words_the_record():
    assert unlisted_reason("Permission denied") == "folder could not be listed: Permission denied"
    assert is_unlisted(unlisted_reason("Input/output error"))
    assert not is_unlisted("symbolic link (not followed)") and not is_unlisted("hard link to a file already scanned")


def test_a_folder_another_user_cannot_read_is_reported(model_dir):
    """chmod 000 for real, through the CLI: root lists it anyway, so when the tests run as root
    the scan runs as `nobody` (setpriv, as tests/test_locks_attacks.py does). The folder is a
    skipped record, counted as unlisted, and the scan exits 5 unless --allow-unlisted."""
    from locks_attacker import cannot_attack, setpriv_command

    as_other: list[str] = []
    if os.geteuid() == 0:
        why = cannot_attack()
        if why:
            pytest.skip(f"root lists chmod-000 folders, and imgclean cannot run as another user here: {why}")
        as_other = setpriv_command()
    work = Path(tempfile.mkdtemp(prefix="imgclean-unlisted-", dir="/tmp"))
    try:
        work.chmod(0o755)
        model = work / "model"
        shutil.copytree(model_dir, model)
        folder = tree(work / "in")
        (work / "out").mkdir()
        for p in [model, *model.rglob("*"), *folder.rglob("*"), folder]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        (work / "out").chmod(0o777)
        (folder / "m-sub").chmod(0)
        if not as_other and os.access(folder / "m-sub", os.R_OK):
            pytest.skip("this user lists a chmod-000 folder anyway")

        def scan_as_other(report: Path, *flags: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [*as_other, sys.executable, "-m", "imgclean", "scan", str(folder), "-m", str(model), "--json",
                 "--no-cache", "--report", str(report), *flags],
                env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(work / "out")}, capture_output=True, text=True,
                stdin=subprocess.DEVNULL, timeout=300, cwd="/",
            )

        proc = scan_as_other(work / "out" / "r.jsonl")
        assert proc.returncode == 5, proc.stderr  # part of the tree went unscanned: a cron job learns it
        assert "1 folder(s) in the scan could not be listed" in proc.stderr
        rows = {r["path"]: r for r in map(json.loads, (work / "out" / "r.jsonl").read_text().splitlines())}
        assert rows["m-sub"]["status"] == "skipped" and rows["m-sub"]["message"] == "folder could not be listed: Permission denied"
        summary = json.loads(proc.stdout)
        assert summary["skipped"] == summary["unlisted"] == 1 and "in.png" not in " ".join(rows)
        allowed = scan_as_other(work / "out" / "r2.jsonl", "--allow-unlisted")
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads(allowed.stdout)["unlisted"] == 1
    finally:
        (work / "in" / "m-sub").chmod(0o755)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or not hasattr(os, "fork"), reason="walks as another user: needs root and fork")
def test_a_chmod_000_folder_walked_as_another_user_is_a_skipped_entry():
    """A real EACCES, in-process: a forked child drops to `nobody` (no interpreter to start, so
    this runs wherever the tests run as root) and walks a tree holding a chmod-000 folder."""
    work = Path(tempfile.mkdtemp(prefix="imgclean-unlisted-"))
    try:
        work.chmod(0o755)
        folder = tree(work / "in")
        for p in [folder, *folder.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        (folder / "m-sub").chmod(0)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                found = [[e.fspath, e.skip_reason] for e in walk_images(folder)] + [["count", count_images(folder)]]
                os.write(w, json.dumps(found).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as fh:
            out = fh.read()
        assert os.waitpid(pid, 0)[1] == 0
        found = dict(json.loads(out))
        assert found[os.fspath(folder / "m-sub")] == "folder could not be listed: Permission denied"
        assert not any(p.startswith(os.fspath(folder / "m-sub") + os.sep) for p in found)
        assert found.pop("count") == len(found)
    finally:
        (work / "in" / "m-sub").chmod(0o755)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_the_report_holds_the_unlisted_folder(model_dir, tmp_path, monkeypatch, suffix):
    from imgclean.cli.runs import Printer, feed
    from imgclean.reports.records import RecordWriter, read_report

    root = tree(tmp_path / "t")
    failing_open(monkeypatch, root / "m-sub", errno.EACCES)
    report = tmp_path / f"r.{suffix}"
    printer = Printer(dry_run=False, json_out=True, verbose=False, keep_unreadable=False)
    opts = ScanOptions(batch_size=2, workers=1, use_cache=True, cache_dir=tmp_path / "cache")  # blocks with their rows
    with RecordWriter(report, root) as writer:
        run_scan(root, load_model(model_dir, lazy=True), opts, on_record=feed([writer, printer]))
    rows = {row.record.path: row.record for row in read_report(report)}
    assert rows["m-sub"].status == "skipped" and rows["m-sub"].message == "folder could not be listed: Permission denied"
