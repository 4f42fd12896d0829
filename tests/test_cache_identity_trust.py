"""A scan cache that another user could write is never trusted (store/cache_trust.py): a folder
that is a link, another user's, or writable by group or others is not used (the scan runs
without it, with one warning); a file in a trusted folder that is not this user's alone is set
aside and a new cache started. What imgclean makes, it makes private whatever the umask."""
from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from imgclean.pipeline.scan.scanner import ScanOptions, run_scan
from imgclean.store import cache as cache_module
from imgclean.store.artifact import load_model
from imgclean.store.cache import CACHE_FILE
from test_cache_identity import bmp_tree
from test_perf import NO_RACY, ROOT, no_racy_window  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("no_racy_window")
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")


def scan(root: Path, model_dir: Path, cache: Path):
    records = []
    opts = ScanOptions(batch_size=4, workers=1, use_cache=True, cache_dir=cache)
    summary = run_scan(root, load_model(model_dir, lazy=True), opts, on_record=records.append)
    return summary, {r.path: r.status for r in records}


def cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == cache_module.__name__]


def world_writable(folder: Path) -> Path:
    folder.mkdir()
    folder.chmod(0o777)
    return folder


def group_writable(folder: Path) -> Path:
    folder.mkdir()
    folder.chmod(0o770)
    return folder


def another_users(folder: Path) -> Path:
    folder.mkdir(mode=0o755)
    os.chown(folder, NOBODY, NOBODY)
    return folder


def a_link(folder: Path) -> Path:
    real = folder.with_name("real-cache")
    real.mkdir(mode=0o700)
    folder.symlink_to(real)
    return folder


UNTRUSTED = [
    pytest.param(world_writable, "writable by its group and other users", id="world-writable"),
    pytest.param(group_writable, "writable by its group", id="group-writable"),
    pytest.param(another_users, f"belongs to uid {NOBODY}", id="another user's", marks=as_root),
    pytest.param(a_link, "is a symbolic link", id="a symbolic link"),
]


@pytest.mark.parametrize("make, why", UNTRUSTED)
def test_an_untrusted_cache_folder_is_not_used(model_dir, tmp_path, caplog, make, why):
    root = bmp_tree(tmp_path / "t")
    folder = make(tmp_path / "cache")
    target = Path(os.path.realpath(folder))
    before = sorted(os.listdir(target))
    with caplog.at_level("WARNING"):
        first, truth = scan(root, model_dir, folder)
        second, again = scan(root, model_dir, folder)
    assert again == truth and first.decoded == second.decoded == 10 and second.cached == 0  # scanned without it
    assert sorted(os.listdir(target)) == before  # nothing written there
    warnings = cache_warnings(caplog)
    assert len(warnings) == 2 and why in warnings[0] and "scanning without it" in warnings[0]  # one a scan


def test_a_private_folder_is_used(model_dir, tmp_path):
    root = bmp_tree(tmp_path / "t")
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o755)  # others may read (not write): trusted
    scan(root, model_dir, folder)
    warm, _ = scan(root, model_dir, folder)
    assert warm.decoded == 0


def plant(db_path: Path, root: Path, model_dir: Path, rows: dict) -> None:
    """A cache file of the current schema whose rows call every file `unreadable`."""
    key = cache_module.model_key(load_model(model_dir, lazy=True).config, extra="mahalanobis")
    with cache_module.ScanCache(db_path.parent, key) as c:  # the real schema
        assert c.enabled
    db = sqlite3.connect(db_path)
    for name in rows:
        st = os.lstat(root / name)
        db.execute("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, 'unreadable', NULL, NULL, NULL, 'planted')",
                   (key, os.fsencode(root / name), st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, st.st_ctime_ns))
    db.commit()
    db.close()


def other_owner(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY)


def group_write(path: Path) -> None:
    path.chmod(0o660)


def hard_linked(path: Path) -> None:
    os.link(path, path.with_name("elsewhere"))


@pytest.mark.parametrize("spoil", [pytest.param(other_owner, marks=as_root), group_write, hard_linked],
                         ids=["another user's", "group-writable", "hard-linked"])
def test_an_untrusted_cache_file_is_set_aside_unread(model_dir, tmp_path, caplog, spoil):
    root = bmp_tree(tmp_path / "t")
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    _, truth = scan(root, model_dir, tmp_path / "truth-cache")
    plant(folder / CACHE_FILE, root, model_dir, truth)
    spoil(folder / CACHE_FILE)
    with caplog.at_level("WARNING"):
        summary, seen = scan(root, model_dir, folder)
    assert seen == truth and summary.decoded == 10  # the planted verdicts were never read
    assert (folder / (CACHE_FILE + ".untrusted")).exists() and len(cache_warnings(caplog)) == 1
    st = os.stat(folder / CACHE_FILE)
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
    warm, _ = scan(root, model_dir, folder)
    assert warm.decoded == 0  # the new cache works


def test_a_link_planted_beside_the_cache_file_sets_it_aside(model_dir, tmp_path):
    root = bmp_tree(tmp_path / "t")
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, folder / (CACHE_FILE + "-wal"))
    scan(root, model_dir, folder)
    assert victim.read_text() == "keep me" and (folder / (CACHE_FILE + "-wal.untrusted")).is_symlink()
    warm, _ = scan(root, model_dir, folder)
    assert warm.decoded == 0


def test_what_the_cache_makes_is_private_whatever_the_umask(model_dir, tmp_path):
    root = bmp_tree(tmp_path / "t")
    folder = tmp_path / "new" / "deeper" / "cache"
    old = os.umask(0o002)
    try:
        scan(root, model_dir, folder)
    finally:
        os.umask(old)
    for made in (tmp_path / "new", tmp_path / "new" / "deeper", folder):
        assert stat.S_IMODE(os.stat(made).st_mode) == 0o700, made
    files = [p for p in folder.iterdir() if p.name.startswith(CACHE_FILE)]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    warm, _ = scan(root, model_dir, folder)
    assert warm.decoded == 0


def test_the_cli_scans_without_an_untrusted_cache_with_one_warning(model_dir, tmp_path):
    root = bmp_tree(tmp_path / "t")
    folder = world_writable(tmp_path / "cache")
    code = (f"{NO_RACY}\nimport sys\nsys.argv = ['imgclean', 'scan', {os.fspath(root)!r}, '-m', {os.fspath(model_dir)!r},"
            f" '--json', '--cache-dir', {os.fspath(folder)!r}]\nfrom imgclean.cli import main\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode in (0, 1), proc.stderr  # 1: rejects found, as without a cache
    assert json.loads(proc.stdout)["scanned"] == 10
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("WARNING: scan cache not used") and "writable by" in lines[0], proc.stderr
    assert os.listdir(folder) == []
