"""A scan that could not list a folder inside its tree says so in its summary (`unlisted`, in
--json and the table) and exits 5 (EXIT_SKIPPED) unless --allow-unlisted (issue 25): a cron job
learns that part of the tree went unscanned. The listing failure is a monkeypatched EACCES/EIO
on the folder's open (in-process, reliable as root); tests/test_walk_unlisted.py has the real
chmod 000 run as another user."""
from __future__ import annotations

import errno
import json
import os

import pytest
from typer.testing import CliRunner

from imgclean.cli import app
from imgclean.cli.common import EXIT_OK, EXIT_SKIPPED
from imgclean.pipeline.scan.scanner import ScanOptions, run_scan
from imgclean.store.artifact import load_model
from test_perf import no_racy_window  # noqa: F401  (a fixture: files just written are cacheable)
from test_walk_unlisted import failing_open, tree

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args])


def test_an_unlisted_folder_is_counted_and_exits_5(model_dir, tmp_path, monkeypatch):
    root = tree(tmp_path / "t")
    failing_open(monkeypatch, root / "m-sub", errno.EACCES)
    result = invoke("scan", root, "-m", model_dir, "--json", "--no-cache")
    assert result.exit_code == EXIT_SKIPPED, result.output
    summary = json.loads(result.stdout)
    assert summary["unlisted"] == 1 and summary["skipped"] >= 1
    assert "1 folder(s) in the scan could not be listed" in result.output


def test_allow_unlisted_exits_0_and_still_counts(model_dir, tmp_path, monkeypatch):
    root = tree(tmp_path / "t")
    failing_open(monkeypatch, root / "m-sub", errno.EIO)
    result = invoke("scan", root, "-m", model_dir, "--json", "--no-cache", "--allow-unlisted")
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout)["unlisted"] == 1


def test_a_fully_listed_scan_counts_none_and_exits_0(model_dir, tmp_path):
    root = tree(tmp_path / "t")
    result = invoke("scan", root, "-m", model_dir, "--json", "--no-cache")
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout)["unlisted"] == 0


def test_the_summary_table_shows_the_unlisted_count(model_dir, tmp_path, monkeypatch):
    root = tree(tmp_path / "t")
    failing_open(monkeypatch, root / "m-sub", errno.EACCES)
    result = invoke("scan", root, "-m", model_dir, "--no-cache", "--allow-unlisted")
    assert result.exit_code == EXIT_OK, result.output
    shown = [line for line in result.stdout.splitlines() if "unlisted" in line]
    assert shown, result.stdout
    clean = invoke("scan", tree(tmp_path / "u"), "-m", model_dir, "--no-cache")
    assert clean.exit_code == EXIT_OK and "unlisted" not in clean.stdout  # shown only when non-zero


def test_a_cached_rescan_still_counts_the_unlisted_folder(model_dir, tmp_path, monkeypatch, no_racy_window):
    """The warm rescan answers the rest from the cache (run snapshots) but never the folder it
    could not list: the second cron run exits 5 too, and once the folder lists again its files
    are scanned."""
    root = tree(tmp_path / "t")
    real_open, real_scandir = os.open, os.scandir
    failing_open(monkeypatch, root / "m-sub", errno.EACCES)
    first = invoke("scan", root, "-m", model_dir, "--json")
    second = invoke("scan", root, "-m", model_dir, "--json")
    assert first.exit_code == second.exit_code == EXIT_SKIPPED, second.output
    warm = json.loads(second.stdout)
    assert warm["unlisted"] == 1 and warm["cached"] > 0 and warm["decoded"] == 0
    monkeypatch.setattr(os, "open", real_open)
    monkeypatch.setattr(os, "scandir", real_scandir)
    healed = invoke("scan", root, "-m", model_dir, "--json")
    assert healed.exit_code == EXIT_OK, healed.output
    after = json.loads(healed.stdout)
    assert after["unlisted"] == 0 and after["scanned"] == warm["scanned"] - 1 + 3  # m-sub's three files


def test_run_scan_counts_the_unlisted_root(model_dir, tmp_path, monkeypatch):
    root = tree(tmp_path / "t")
    failing_open(monkeypatch, root, errno.EIO)
    summary = run_scan(root, load_model(model_dir, lazy=True), ScanOptions(batch_size=4, workers=1))
    assert summary.unlisted == 1 and summary.to_dict()["unlisted"] == 1 and summary.scanned == 1


@pytest.mark.parametrize("where", ["m-sub", "m-sub/deeper"])
def test_run_scan_counts_each_unlisted_folder_once(model_dir, tmp_path, monkeypatch, where):
    root = tree(tmp_path / "t")
    failing_open(monkeypatch, root / where, errno.EACCES)
    summary = run_scan(root, load_model(model_dir, lazy=True), ScanOptions(batch_size=2, workers=1))
    assert summary.unlisted == 1
