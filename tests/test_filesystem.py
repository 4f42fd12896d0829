"""Every Filesystem case of RELIABILITY.md, through the real CLI.

In-process (typer's CliRunner) where the case is deterministic; a real `python -m imgclean`
subprocess where it needs a process of its own (FIFOs that could hang, signals, two concurrent
runs, no TTY). Files that must be rejected are mostly undecodable bytes, so what moves does not
depend on the tiny model's judgement.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import class_image, ood_image, tree_snapshot, write_png
from imgclean.quarantine import moves
from imgclean.cli import EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_TERMINATED, EXIT_USAGE, app
from imgclean.quarantine.moves import MANIFEST_NAME, TMP_PREFIX, read_manifest
from imgclean import fileops

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop("FORCE_COLOR", None)


def invoke(*args):
    result = runner.invoke(app, [a if isinstance(a, (str, bytes)) else os.fspath(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def cli(*args, timeout=120, **kw) -> subprocess.CompletedProcess:
    """A real `python -m imgclean` run without a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "imgclean", *map(os.fspath, args)], env=ENV, capture_output=True,
        stdin=subprocess.DEVNULL, timeout=timeout, **kw,
    )


def junk(path: Path, n: int = 64, seed: int | None = None) -> Path:
    """Unique undecodable bytes: always 'unreadable', so always rejected."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed if seed is not None else abs(hash(os.fsencode(path))) % 2**32)
    path.write_bytes(b"NOTANIMAGE" + rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def contents(*roots) -> list[str]:
    """sha256 of every user file below the roots (journal, lock, hidden files left out)."""
    out = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = Path(dirpath) / n
                if n.startswith(".") or n in (MANIFEST_NAME, "imgclean-features.bin") or p.is_symlink() or not p.is_file():
                    continue
                out.append(sha(p))
    return sorted(out)


def unfinished(quarantine: Path) -> list[dict]:
    return moves.unfinished(read_manifest(quarantine))


def report_rows(path: Path) -> dict[str, dict]:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    rows = [json.loads(line) for line in lines[:-1]]
    return {r["path"]: r for r in rows}


def scan_json(folder, model_dir, *extra, code=0):
    result = invoke("scan", folder, "-m", model_dir, "--json", *extra)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


# ----------------------------------------------------------------------------- non-regular files
def test_fifo_and_directory_named_jpg_are_never_opened(model_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "pipe.jpg")  # Image.open on it would block forever
    write_png(folder / "dir.jpg" / "inside.png", class_image("checker", np.random.default_rng(0)))
    junk(folder / "bad.png")
    report = tmp_path / "r.jsonl"
    proc = cli("scan", folder, "-m", model_dir, "--move-to", tmp_path / "q", "--json", "--report", report, timeout=90)
    assert proc.returncode == 0, proc.stderr
    rows = report_rows(report)
    assert rows["pipe.jpg"]["status"] == "skipped" and "regular" in rows["pipe.jpg"]["message"]
    assert "dir.jpg" not in rows and rows["dir.jpg/inside.png"]["status"] in ("ok", "ood")
    assert stat.S_ISFIFO(os.lstat(folder / "pipe.jpg").st_mode)  # skipped files are not moved
    assert json.loads(proc.stdout)["skipped"] == 1


def test_fifo_in_a_training_class_is_never_opened(train_dir, tmp_path):
    data = tmp_path / "train"
    for cls in ("checker", "stripes_h"):
        shutil.copytree(train_dir / cls, data / cls)
    os.mkfifo(data / "checker" / "pipe.png")
    proc = cli("fit", data, "-o", tmp_path / "m", "--epochs", "1", "--min-steps", "0", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["images_per_class"] == [24, 24] and summary["skipped"] == 0


def test_symlinks_are_never_followed_and_nothing_outside_moves(model_dir, tmp_path):
    outside = tmp_path / "outside"
    junk(outside / "secret.png")
    junk(outside / "sub" / "other.png")
    folder = tmp_path / "in"
    junk(folder / "real.png")
    (folder / "file_link.png").symlink_to(outside / "secret.png")
    (folder / "dir_link").symlink_to(outside)
    (folder / "dir_link.jpg").symlink_to(outside / "sub")
    (folder / "loop").symlink_to(folder)  # a loop back to the root
    (folder / "self.jpg").symlink_to(folder / "self.jpg")  # a link to itself
    (folder / "dangling.png").symlink_to(tmp_path / "nothing.png")
    before_outside = tree_snapshot(outside)
    quarantine = tmp_path / "q"
    report = tmp_path / "r.jsonl"
    summary = scan_json(folder, model_dir, "--move-to", quarantine, "--report", report)
    rows = report_rows(report)
    assert rows["real.png"]["action"] == "moved"
    for name in ("file_link.png", "dir_link.jpg", "self.jpg", "dangling.png"):
        assert rows[name]["status"] == "skipped" and "symbolic link" in rows[name]["message"], name
        assert (folder / name).is_symlink()
    assert not any(p.startswith(("dir_link/", "loop/")) for p in rows)
    assert summary["moved"] == 1 and summary["skipped"] == 4
    assert tree_snapshot(outside) == before_outside
    assert sorted(p.name for p in quarantine.rglob("*.png")) == ["real.png"]


def test_a_symlinked_quarantine_into_the_root_is_refused(model_dir, tmp_path):
    folder = tmp_path / "in"
    junk(folder / "a.png")
    alias = tmp_path / "alias"
    alias.symlink_to(folder)
    before = tree_snapshot(folder)
    for target in (alias, folder / "sub" / "..", tmp_path):
        result = invoke("scan", folder, "-m", model_dir, "--move-to", target)
        assert result.exit_code == EXIT_USAGE, (target, result.output)
    assert tree_snapshot(folder) == before


def test_quarantine_inside_the_root_is_excluded(model_dir, tmp_path):
    folder = tmp_path / "in"
    for i in range(3):
        junk(folder / f"bad{i}.png")
    first = scan_json(folder, model_dir, "--move-to", folder / ".." / "in" / "rejected")
    assert first["moved"] == 3
    second = scan_json(folder, model_dir, "--move-to", folder / "rejected")
    assert second["scanned"] == 0 and second["moved"] == 0
    assert len(list((folder / "rejected").glob("*.png"))) == 3


def test_hard_links_are_scored_once(model_dir, tmp_path):
    folder = tmp_path / "in"
    junk(folder / "a.png")
    os.link(folder / "a.png", folder / "b.png")
    write_png(folder / "c.png", class_image("checker", np.random.default_rng(1)))
    os.link(folder / "c.png", folder / "d.png")
    report = tmp_path / "r.jsonl"
    summary = scan_json(folder, model_dir, "--move-to", tmp_path / "q", "--report", report)
    rows = report_rows(report)
    assert rows["a.png"]["status"] == "unreadable" and rows["a.png"]["action"] == "moved"
    assert rows["b.png"]["status"] == "skipped" and "hard link" in rows["b.png"]["message"]
    assert rows["c.png"]["status"] in ("ok", "ood") and rows["d.png"]["status"] == "skipped"
    assert summary["unreadable"] == 1 and summary["skipped"] == 2
    # a.png's data still has a name in the folder (b.png) and one in the quarantine
    assert os.path.samefile(folder / "b.png", tmp_path / "q" / "a.png")


def test_hidden_files_and_folders_are_ignored_by_scan(model_dir, tmp_path):
    folder = tmp_path / "in"
    hidden = [folder / ".hidden.png", folder / ".cache" / "x.png", folder / "sub" / ".y.jpg", folder / ".git" / "z.png"]
    for p in hidden:
        junk(p)
    junk(folder / "sub" / "visible.png")
    report = tmp_path / "r.jsonl"
    summary = scan_json(folder, model_dir, "--move-to", tmp_path / "q", "--report", report)
    assert list(report_rows(report)) == ["sub/visible.png"] and summary["scanned"] == 1
    assert all(p.exists() for p in hidden)


def test_hidden_files_and_folders_are_never_classes_in_fit(train_dir, tmp_path):
    data = tmp_path / "train"
    for cls in ("checker", "stripes_v"):
        shutil.copytree(train_dir / cls, data / cls, ignore=shutil.ignore_patterns("*_01[0-9].png", "*_02*.png"))
    junk(data / ".thumbnails" / "a.png")
    write_png(data / ".Trash-0" / "files" / "b.png", ood_image(np.random.default_rng(0)))
    junk(data / "checker" / ".DS_Store.png")
    junk(data / "checker" / ".hidden_dir" / "c.png")
    result = invoke("fit", data, "-o", tmp_path / "m", "--epochs", "1", "--min-steps", "0", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["classes"] == ["checker", "stripes_v"]
    assert summary["images_per_class"] == [10, 10] and summary["skipped"] == 0


# ----------------------------------------------------------------------------- odd names
ODD_NAMES = [
    b"with space.png", b"quote'single.png", b'quote"double.png', b"tab\there.png", b"new\nline.png",
    b"back\\slash.png", "emoji_\U0001f431.png".encode(), b"latin1_caf\xe9_\xff.png", b"-dash.png",
    b"carriage\rreturn.png", "zero\u200bwidth.png".encode(),
]


def test_odd_names_are_moved_and_restored_and_records_stay_one_per_line(model_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    bfolder = os.fsencode(folder)
    for i, name in enumerate(ODD_NAMES):
        junk(Path(os.fsdecode(os.path.join(bfolder, name))), seed=i)
    write_png(Path(os.fsdecode(os.path.join(bfolder, b"keep me \xe9.png"))), class_image("checker", np.random.default_rng(2)))
    before = contents(folder)
    quarantine = tmp_path / "q"
    report = tmp_path / "r.jsonl"
    summary = scan_json(folder, model_dir, "--move-to", quarantine, "--report", report)
    assert summary["unreadable"] == summary["move_errors"] + len(ODD_NAMES) and summary["move_errors"] == 0
    moved = set(os.listdir(os.fsencode(quarantine)))
    assert set(ODD_NAMES) <= moved
    rows = report_rows(report)  # one JSON object per line, whatever the names hold
    assert {os.fsencode(p) for p in rows} == set(ODD_NAMES) | {b"keep me \xe9.png"}
    manifest = (quarantine / MANIFEST_NAME).read_bytes()
    lines = manifest.split(b"\n")[:-1]
    records = [json.loads(line) for line in lines]
    assert sum(r["state"] == "started" for r in records) == summary["moved"]
    assert {os.path.basename(os.fsencode(r["source"])) for r in records if r["state"] == "started"} >= set(ODD_NAMES)
    assert sorted(contents(folder, quarantine)) == before
    # and back again
    result = invoke("restore", quarantine, "--json")
    assert result.exit_code == 0, result.output
    assert set(ODD_NAMES) <= set(os.listdir(bfolder)) and contents(folder) == before


# ----------------------------------------------------------------------------- races with the scan
@pytest.mark.parametrize("race", ["deleted", "edited", "replaced", "fifo"])
def test_file_changed_between_scoring_and_moving_is_left_alone(model_dir, tmp_path, monkeypatch, race):
    folder = tmp_path / "in"
    target = junk(folder / "victim.png", seed=1)
    junk(folder / "other.png", seed=2)
    original_move = moves.Quarantine.move

    def move(self, req):
        if req.source.name == "victim.png":
            if race == "deleted":
                target.unlink()
            elif race == "edited":
                with open(target, "ab") as fh:
                    fh.write(b"new data")
            elif race == "replaced":
                target.unlink()
                target.write_bytes(b"a new file under the old name")
            else:
                target.unlink()
                os.mkfifo(target)
        return original_move(self, req)

    monkeypatch.setattr(moves.Quarantine, "move", move)
    report = tmp_path / "r.jsonl"
    summary = scan_json(folder, model_dir, "--move-to", tmp_path / "q", "--report", report)
    rows = report_rows(report)
    assert rows["victim.png"]["status"] == "changed"
    assert rows["victim.png"]["action"] == ("missing" if race == "deleted" else "changed")
    assert summary["changed"] == 1 and summary["moved"] == 1 and summary["move_errors"] == 0
    assert not (tmp_path / "q" / "victim.png").exists()
    if race == "deleted":
        assert not target.exists()
    elif race == "fifo":
        assert stat.S_ISFIFO(os.lstat(target).st_mode)
    else:
        assert target.read_bytes().endswith(b"new data") or target.read_bytes().startswith(b"a new file")
    assert unfinished(tmp_path / "q") == []


def test_file_edited_after_hashing_mid_move_is_left_in_place(model_dir, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    target = junk(folder / "victim.png", seed=3)

    def hook(step):
        if step == "link" and target.exists():
            with open(target, "ab") as fh:
                fh.write(b"!")

    monkeypatch.setattr(fileops, "fault_hook", hook)
    summary = scan_json(folder, model_dir, "--move-to", tmp_path / "q")
    assert summary["changed"] == 1 and summary["moved"] == 0
    assert target.read_bytes().endswith(b"!")
    assert not (tmp_path / "q" / "victim.png").exists()
    assert unfinished(tmp_path / "q") == []


def test_name_taken_in_quarantine_keeps_both(model_dir, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    quarantine = tmp_path / "q"
    first = junk(folder / "sub" / "x.png", seed=1).read_bytes()
    assert scan_json(folder, model_dir, "--move-to", quarantine)["moved"] == 1
    second = junk(folder / "sub" / "x.png", seed=2).read_bytes()
    # a third file takes the name at the last moment, after the destination was chosen
    intruder = b"someone else's file"

    def hook(step):
        if step == "link" and not (quarantine / "sub" / "x (1).png").exists():
            (quarantine / "sub" / "x (1).png").write_bytes(intruder)

    monkeypatch.setattr(fileops, "fault_hook", hook)
    assert scan_json(folder, model_dir, "--move-to", quarantine)["moved"] == 1
    assert (quarantine / "sub" / "x.png").read_bytes() == first
    assert (quarantine / "sub" / "x (1).png").read_bytes() == intruder
    assert (quarantine / "sub" / "x (2).png").read_bytes() == second
    assert not (folder / "sub" / "x.png").exists()


# ----------------------------------------------------------------------------- other filesystems
def other_device_dir() -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("/dev/shm is not available for writing")
    return shm


def test_quarantine_on_another_filesystem(model_dir, tmp_path):
    shm = other_device_dir()
    if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the temporary folder here")
    quarantine = shm / f"imgclean-test-{uuid.uuid4().hex}"
    folder = tmp_path / "in"
    for i in range(4):
        junk(folder / "d" / f"bad{i}.png", n=3000, seed=i)
    write_png(folder / "ok.png", class_image("checker", np.random.default_rng(0)))
    (folder / "d" / "bad0.png").chmod(0o640)
    before = contents(folder)
    try:
        summary = scan_json(folder, model_dir, "--move-to", quarantine)
        assert summary["moved"] == summary["rejected"] >= 4 and summary["move_errors"] == 0
        assert sorted(contents(folder, quarantine)) == before
        assert not list(quarantine.rglob(TMP_PREFIX + "*"))
        assert stat.S_IMODE(os.stat(quarantine / "d" / "bad0.png").st_mode) == 0o640
        assert unfinished(quarantine) == []
        assert invoke("restore", quarantine).exit_code == 0  # and back across again
        assert contents(folder) == before
    finally:
        shutil.rmtree(quarantine, ignore_errors=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (needs root and mount rights)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_mid_copy_loses_nothing(model_dir, tmp_path, small_tmpfs):
    folder = tmp_path / "in"
    big = junk(folder / "big.png", n=200_000, seed=1)
    small = junk(folder / "small.png", n=1000, seed=2)
    big_sha = sha(big)
    before = contents(folder)
    quarantine = small_tmpfs / "q"
    result = invoke("scan", folder, "-m", model_dir, "--move-to", quarantine, "--json")
    assert result.exit_code == 1, result.output
    assert "could not be moved" in result.output
    summary = json.loads(result.stdout)
    assert summary["moved"] == 1 and summary["move_errors"] == 1
    assert sha(big) == big_sha  # source intact
    assert not (quarantine / "big.png").exists()  # no partial file under a final name
    assert not list(quarantine.glob(TMP_PREFIX + "*"))
    assert (quarantine / "small.png").exists() and not small.exists()
    assert sorted(contents(folder, quarantine)) == before
    assert unfinished(quarantine) == []


def test_read_only_destination_is_refused_before_anything_moves(model_dir, tmp_path):
    folder = tmp_path / "in"
    for i in range(3):
        junk(folder / f"bad{i}.png")
    before = tree_snapshot(folder)
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if os.geteuid() == 0:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True)
        mounted = proc.returncode == 0
        if not mounted:
            pytest.skip("running as root (permissions do not bind) and cannot mount a read-only tmpfs")
    else:
        ro.chmod(0o555)
    try:
        for target in (ro, ro / "q"):
            result = invoke("scan", folder, "-m", model_dir, "--move-to", target, "--json")
            assert result.exit_code == 1, result.output
            assert "not writable" in result.output or "cannot create" in result.output
            assert result.stdout == ""
            assert tree_snapshot(folder) == before
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(ro)], capture_output=True)
        else:
            ro.chmod(0o755)


# ----------------------------------------------------------------------------- processes
# A real CLI process whose moves are slowed down (20 ms before each link), so a signal or a
# second run reliably arrives while it is moving.
SLOW_CLI = r"""
import os, sys, time
import imgclean.quarantine.moves as m
hold = os.environ.get("IMGCLEAN_TEST_HOLD")  # while this file exists, moves wait (up to 2 min)
def hook(step):
    if step == "link":
        time.sleep(0.02)
        deadline = time.monotonic() + 120
        while hold and os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.01)
import imgclean.fileops
imgclean.fileops.fault_hook = hook
from imgclean.cli import app
app(sys.argv[1:], prog_name="imgclean")
"""


def slow_scan(folder, model_dir, quarantine, *extra, hold: Path | None = None) -> subprocess.Popen:
    env = {**ENV, "IMGCLEAN_TEST_HOLD": os.fspath(hold)} if hold else ENV
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, "scan", os.fspath(folder), "-m", os.fspath(model_dir),
         "--move-to", os.fspath(quarantine), "--json", "--batch-size", "8", *map(os.fspath, extra)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )


def wait_for_moves(quarantine: Path, proc: subprocess.Popen, count: int = 1, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            started = (quarantine / MANIFEST_NAME).read_bytes().count(b'"state": "started"')
        except FileNotFoundError:
            started = 0
        if started >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"scan ended before moving: {proc.communicate()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail("scan did not start moving in time")


def many_rejects(folder: Path, n: int = 60) -> list[str]:
    for i in range(n):
        junk(folder / f"f{i:03d}.png", seed=i)
    return contents(folder)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_TERMINATED)])
def test_signal_mid_run_stops_cleanly(model_dir, tmp_path, signum, code):
    folder, quarantine = tmp_path / "in", tmp_path / "q"
    before = many_rejects(folder)
    report = tmp_path / "r.jsonl"
    proc = slow_scan(folder, model_dir, quarantine, "--report", report)
    wait_for_moves(quarantine, proc, count=3)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert b"Traceback" not in err
    summary = json.loads(out)
    assert summary["interrupted"] is True and 3 <= summary["moved"] < 60
    records = read_manifest(quarantine)
    assert unfinished(quarantine) == []  # the file in flight was finished, the journal flushed
    assert sum(r["state"] == "done" for r in records) == summary["moved"]
    assert len(report_rows(report)) == summary["scanned"]
    assert sorted(contents(folder, quarantine)) == before  # every file exactly once
    assert not list(quarantine.glob(TMP_PREFIX + "*"))
    # the next run finishes the job
    rest = scan_json(folder, model_dir, "--move-to", quarantine)
    assert rest["moved"] == 60 - summary["moved"] and sorted(contents(quarantine)) == before


def test_second_concurrent_scan_exits_at_once(model_dir, tmp_path):
    folder, quarantine = tmp_path / "in", tmp_path / "q"
    before = many_rejects(folder)
    other = tmp_path / "other"
    junk(other / "x.png")
    hold = tmp_path / "hold"
    hold.touch()  # the first scan holds its first move until this file goes
    proc = slow_scan(folder, model_dir, quarantine, hold=hold)
    try:
        wait_for_moves(quarantine, proc)
        for args in ((folder, "--move-to", tmp_path / "q2"), (other, "--move-to", quarantine)):
            t = time.monotonic()
            result = invoke("scan", args[0], "-m", model_dir, *args[1:], "--json")
            assert result.exit_code == EXIT_LOCKED, result.output
            assert f"pid {proc.pid}" in result.output and time.monotonic() - t < 10
        # reports and dry runs do not take the lock: they may run alongside
        assert invoke("scan", other, "-m", model_dir, "--move-to", quarantine, "--dry-run", "--json").exit_code == 0
    finally:
        hold.unlink()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["moved"] == 60
    assert not (tmp_path / "q2").exists() and (other / "x.png").exists()
    assert sorted(contents(folder, quarantine)) == before


def test_rerun_without_a_tty_moves_nothing_and_prints_plain_output(model_dir, tmp_path):
    folder, quarantine = tmp_path / "in", tmp_path / "q"
    for i in range(5):
        junk(folder / f"bad{i}.png", seed=i)
    write_png(folder / "ok.png", class_image("checker", np.random.default_rng(0)))
    env_extra = {"TERM": "xterm-256color", "COLUMNS": "200"}
    runs = []
    for extra in (("--json",), ("--json",), ()):
        proc = subprocess.run(
            [sys.executable, "-m", "imgclean", "scan", str(folder), "-m", str(model_dir), "--move-to", str(quarantine), *extra],
            env={**ENV, **env_extra}, capture_output=True, stdin=subprocess.DEVNULL, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert b"\x1b" not in proc.stdout and b"\x1b" not in proc.stderr
        runs.append(proc)
        if len(runs) == 1:
            snapshot_after = (tree_snapshot(folder), tree_snapshot(quarantine))
    first, second = json.loads(runs[0].stdout), json.loads(runs[1].stdout)
    assert first["moved"] == first["rejected"] >= 5
    assert second["moved"] == 0 and second["scanned"] == 6 - first["moved"]
    assert snapshot_after == (tree_snapshot(folder), tree_snapshot(quarantine))  # reruns changed nothing
    assert len(list(quarantine.glob("*.png"))) == first["moved"]
    assert b"scan of" in runs[2].stdout  # the plain table


def test_unreadable_permissions_are_reported_not_fatal(model_dir):
    """chmod 000: root reads it anyway, so the scan runs as `nobody` when the tests run as root."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="imgclean-perm-"))
    try:
        work.chmod(0o777)
        model = work / "model"
        shutil.copytree(model_dir, model)
        folder = work / "in"
        write_png(folder / "ok.png", class_image("checker", np.random.default_rng(0)))
        write_png(folder / "secret.png", class_image("checker", np.random.default_rng(1)))
        (folder / "secret.png").chmod(0)
        for p in (model, *model.iterdir(), folder, folder / "ok.png"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        report = work / "r.jsonl"
        as_other = {}
        if os.geteuid() == 0:
            def drop():
                os.setgid(65534)
                os.setuid(65534)
            as_other = {"preexec_fn": drop}
            try:
                probe = subprocess.run([sys.executable, "-c", "import imgclean.cli"], env=ENV, capture_output=True,
                                       timeout=120, **as_other)
            except PermissionError as exc:
                pytest.skip(f"root reads chmod-000 files, and this Python cannot run as another user here ({exc})")
            if probe.returncode != 0:
                pytest.skip(f"root reads chmod-000 files, and imgclean cannot run as another user here: {probe.stderr[-200:]!r}")
        proc = subprocess.run(
            [sys.executable, "-m", "imgclean", "scan", str(folder), "-m", str(model), "--json", "--report", str(report)],
            env={**ENV, "HOME": str(work)}, capture_output=True, stdin=subprocess.DEVNULL, timeout=120, **as_other,
        )
        assert proc.returncode == 0, proc.stderr
        rows = report_rows(report)
        assert rows["secret.png"]["status"] == "unreadable" and "Permission" in rows["secret.png"]["message"]
        assert rows["ok.png"]["status"] in ("ok", "ood")
        assert json.loads(proc.stdout)["unreadable"] == 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_permission_denied_is_unreadable(tmp_path, monkeypatch):
    """The same case at the decoder, independent of the uid the tests run as."""
    from imgclean import data

    path = tmp_path / "secret.png"
    write_png(path, class_image("checker", np.random.default_rng(0)))

    def denied(p, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(p))

    monkeypatch.setattr(data, "open", denied, raising=False)
    with pytest.raises(data.DecodeError) as exc:
        data.decode_image(path, 16, 1)
    assert exc.value.status == data.UNREADABLE and "Permission denied" in str(exc.value)


def test_disk_full_while_journaling_is_reported_not_a_traceback(model_dir, tmp_path, monkeypatch):
    """ENOSPC on the journal's final record (the quarantine filled up just then): the move has
    happened, the record cannot be written, and closing the quarantine must not crash."""
    folder, quarantine = tmp_path / "in", tmp_path / "q"
    before = many_rejects(folder, 4)
    journal_writes = []

    def hook(step):
        if step == "journal":
            journal_writes.append(step)
            if len(journal_writes) >= 2:  # the first "started" goes through, nothing after it
                raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileops, "fault_hook", hook)
    result = invoke("scan", folder, "-m", model_dir, "--move-to", quarantine, "--json")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    assert sorted(contents(folder, quarantine)) == before
    monkeypatch.setattr(fileops, "fault_hook", None)
    # the next run recovers the unfinished record and moves the rest
    summary = scan_json(folder, model_dir, "--move-to", quarantine)
    assert unfinished(quarantine) == [] and sorted(contents(quarantine)) == before
    assert summary["moved"] == 3


@pytest.mark.parametrize("files", [200, 3])  # fails while scanning / only at the final flush
def test_report_on_a_full_disk_is_a_clear_error(model_dir, tmp_path, small_tmpfs, files):
    folder = tmp_path / "in"
    for i in range(files):
        junk(folder / f"file_with_a_long_name_{i:04d}.png", n=10, seed=i)
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as fh:
        try:
            fh.write(b"x" * 70_000)
        except OSError:
            pass
    result = invoke("scan", folder, "-m", model_dir, "--report", small_tmpfs / "r.jsonl", "--json")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1 and "r.jsonl" in result.output, result.output
