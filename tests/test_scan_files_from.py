"""`scan FILE` and `scan FOLDER --files-from LIST` (issue 25): one file scanned alone with its folder
as the scanned one, or only the files a list names (lines, or NUL-separated with -0 as
`find -print0` writes them), each a record; anything else a list names is a skipped record
saying why; the moves, restore, lock and cache are the folder scan's. Tiny generated folders and
the session's tiny model (conftest.py)."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tree_snapshot
from imgclean import api
from imgclean.cli import app
from imgclean.cli.common import EXIT_LOCKED, EXIT_OK, EXIT_SKIPPED, EXIT_USAGE
from imgclean.pipeline.scan.file_list import Listed, read_names
from test_perf import no_racy_window  # noqa: F401  (a fixture: files just written are cacheable)

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args, stdin: bytes | None = None):
    return runner.invoke(app, [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args], input=stdin)


def scan_json(*args, stdin: bytes | None = None, code: int = EXIT_OK) -> dict:
    result = invoke("scan", *args, "--json", stdin=stdin)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def report_rows(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()]
    return {row["path"]: row for row in rows}


# ----------------------------------------------------------------------------- scan FILE


def test_a_single_file_is_scanned_alone(model_dir, incoming, tmp_path):
    root, _ = incoming
    report = tmp_path / "r.jsonl"
    ok = scan_json(root / "normal_00.png", "-m", model_dir, "--report", report)
    assert (ok["scanned"], ok["ok"], ok["root"]) == (1, 1, os.path.realpath(root))
    assert list(report_rows(report)) == ["normal_00.png"]
    ood = scan_json(root / "odd_00.png", "-m", model_dir, "--no-cache")
    assert (ood["scanned"], ood["ood"]) == (1, 1)


def test_a_single_file_moves_alone_and_restore_puts_it_back(model_dir, incoming, tmp_path):
    root, _ = incoming
    q = tmp_path / "q"
    before = tree_snapshot(root)
    summary = scan_json(root / "odd_01.png", "-m", model_dir, "--move-to", q)
    assert (summary["scanned"], summary["moved"]) == (1, 1)
    after = tree_snapshot(root)
    assert set(before) - set(after) == {"odd_01.png"} and all(after[k] == before[k] for k in after)
    assert (q / "odd_01.png").exists()
    assert (root / ".imgclean.lock").exists()  # the folder's lock, as a folder scan takes it
    restored = invoke("restore", q)
    assert restored.exit_code == EXIT_OK, restored.output
    assert tree_snapshot(root) == before


def test_a_single_file_in_a_locked_folder_is_refused(model_dir, incoming, tmp_path):
    from imgclean.quarantine.locking import ScanLock

    root, _ = incoming
    with ScanLock(root):
        result = invoke("scan", root / "odd_00.png", "-m", model_dir, "--move-to", tmp_path / "q")
    assert result.exit_code == EXIT_LOCKED, result.output
    assert (root / "odd_00.png").exists()


def test_a_single_link_or_fifo_is_skipped_never_followed(model_dir, incoming, tmp_path):
    root, _ = incoming
    os.symlink(root / "odd_00.png", root / "link.png")
    os.mkfifo(root / "pipe.png")  # opened, it would hang the scan
    for name in ("link.png", "pipe.png"):
        report = tmp_path / f"{name}.jsonl"
        summary = scan_json(root / name, "-m", model_dir, "--move-to", tmp_path / "q", "--report", report)
        assert (summary["scanned"], summary["skipped"], summary["moved"]) == (1, 1, 0)
        row = report_rows(report)[name]
        assert row["status"] == "skipped"
        assert ("symbolic link" if name == "link.png" else "not a regular file") in row["message"]
    assert (root / "odd_00.png").exists() and os.path.islink(root / "link.png")


def test_a_missing_path_is_a_usage_error_naming_it(model_dir, tmp_path):
    result = invoke("scan", tmp_path / "nope.png", "-m", model_dir)
    assert result.exit_code == EXIT_USAGE
    assert "nope.png does not exist" in result.stderr and "not a folder" not in result.stderr


# ----------------------------------------------------------------------------- --files-from


def hostile_folder(root: Path) -> list[bytes]:
    """Copies of an OOD image under hostile names (bytes, relative to root's parent)."""
    names = [b"new\nline.png", b"two  spaces .png", b"-leading-dash.png", b"not-utf8-\xff\xfe.png"]
    src = os.fsencode(root / "odd_02.png")
    for name in names:
        shutil.copyfile(src, os.path.join(os.fsencode(root), name))
    return [os.path.join(os.fsencode(root.name), n) for n in names]


def test_files_from_nul_separated_hostile_names_move_and_restore(model_dir, incoming, tmp_path, monkeypatch):
    root, _ = incoming
    names = hostile_folder(root)
    monkeypatch.chdir(root.parent)  # relative names, as `find incoming -print0` prints them
    listing = tmp_path / "list"
    listing.write_bytes(b"\0".join(names + [b"incoming/normal_01.png"]) + b"\0")
    before = tree_snapshot(root)
    q, report = tmp_path / "q", tmp_path / "r.jsonl"
    summary = scan_json("incoming", "-m", model_dir, "--files-from", listing, "-0", "--move-to", q, "--report", report)
    expected = {os.fsdecode(n[len(b"incoming/"):]) for n in names} | {"normal_01.png"}
    assert set(report_rows(report)) == expected  # the listed files, and only them
    assert (summary["scanned"], summary["ood"], summary["moved"], summary["ok"]) == (5, 4, 4, 1)
    for name in names:
        assert os.path.exists(os.path.join(os.fsencode(q), name[len(b"incoming/"):]))
        assert not os.path.lexists(os.path.join(os.fsencode(root.parent), name))
    assert invoke("restore", q).exit_code == EXIT_OK
    assert tree_snapshot(root) == before


def test_files_from_stdin_lines(model_dir, incoming, tmp_path):
    root, _ = incoming
    stdin = b"\n".join(os.fsencode(root / n) for n in ("normal_00.png", "odd_00.png", "broken.png")) + b"\n"
    report = tmp_path / "r.csv"
    summary = scan_json(root, "-m", model_dir, "--files-from", "-", "--report", report, stdin=stdin)
    assert (summary["scanned"], summary["ok"], summary["ood"], summary["unreadable"]) == (3, 1, 1, 1)


def test_files_from_dry_run_plans_only_listed_rejects(model_dir, incoming, tmp_path):
    root, _ = incoming
    before = tree_snapshot(root)
    stdin = os.fsencode(root / "odd_03.png") + b"\n" + os.fsencode(root / "normal_02.png") + b"\n"
    summary = scan_json(root, "-m", model_dir, "--files-from", "-", "--move-to", tmp_path / "q", "--dry-run",
                        stdin=stdin)
    assert [p["source"] for p in summary["plan"]] == ["odd_03.png"]
    assert tree_snapshot(root) == before and not (tmp_path / "q").exists()


def refused_tree(root: Path, tmp_path: Path) -> dict[bytes, str]:
    """Listed names that are no image file of `root` -> a phrase of their skip reason."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copyfile(root / "odd_00.png", outside / "x.png")
    (root / "sub").mkdir()
    shutil.copyfile(root / "odd_00.png", root / "sub" / "in-sub.png")
    os.symlink(root / "odd_00.png", root / "link.png")
    os.symlink(outside, root / "linked-dir")
    os.mkfifo(root / "pipe.png")
    shutil.copyfile(root / "odd_00.png", root / ".hidden.png")
    (root / "old-q").mkdir()
    (root / "old-q" / "imgclean-manifest.jsonl").write_text("")
    shutil.copyfile(root / "odd_00.png", root / "old-q" / "kept.png")
    (root / "notes.txt").write_text("not an image")
    os.link(root / "odd_00.png", root / "hard.png")
    r = os.fsencode(root)
    return {
        os.fsencode(outside / "x.png"): "outside the scanned folder",
        r + b"/../elsewhere/x.png": "outside the scanned folder",
        r + b"/linked-dir/x.png": "outside the scanned folder",  # the folder part resolved: it leads out
        r + b"/gone.png": "does not exist",
        r + b"/link.png": "symbolic link (not followed)",
        r + b"/sub": "a folder, not a file",
        r + b"/pipe.png": "not a regular file",
        r + b"/.hidden.png": "hidden",
        r + b"/old-q/kept.png": "an imgclean quarantine",
        r + b"/notes.txt": "not an image file name",
        r + b"/hard.png": "hard link to a file already scanned",
        r: "the scanned folder itself",
        b"x" * 5000: "longer than any path",
    }


def test_files_from_refused_names_are_skipped_records(model_dir, incoming, tmp_path):
    root, _ = incoming
    refused = refused_tree(root, tmp_path)
    good = [os.fsencode(root / "odd_00.png"), os.fsencode(root / "sub" / "in-sub.png")]
    listing = tmp_path / "list"
    listing.write_bytes(b"\0".join(good + list(refused) + good) + b"\0")  # the good ones twice: scanned once
    report = tmp_path / "r.jsonl"
    q = tmp_path / "q"
    summary = scan_json(root, "-m", model_dir, "--files-from", listing, "--null", "--report", report, "--move-to", q,
                        "--no-cache")
    rows = report_rows(report)
    assert (summary["scanned"], summary["skipped"], summary["moved"]) == (len(refused) + 2, len(refused), 2)
    assert rows["odd_00.png"]["action"] == "moved" and rows["sub/in-sub.png"]["action"] == "moved"
    skipped = [row for row in rows.values() if row["status"] == "skipped"]
    for name, phrase in refused.items():
        assert sum(phrase in row["message"] for row in skipped) >= 1, (name, phrase, skipped)
    assert all(row["action"] in ("", None) for row in skipped)
    assert (tmp_path / "elsewhere" / "x.png").exists() and (root / "old-q" / "kept.png").exists()
    # a report with such rows is still one `imgclean apply` accepts whole (paths relative, normalised)
    applied = invoke("apply", report, "--move-to", tmp_path / "q2", "--json")
    assert applied.exit_code == EXIT_OK, applied.output
    assert json.loads(applied.stdout)["invalid"] == 0
    again = invoke("scan", root, "-m", model_dir, "--files-from", listing, "-0", "--no-cache", "--fail-on-skip")
    assert again.exit_code == EXIT_SKIPPED, again.output


def test_a_listed_file_in_this_runs_quarantine_is_skipped(model_dir, incoming, tmp_path):
    root, _ = incoming
    q = root / "rejected"
    q.mkdir()
    shutil.copyfile(root / "odd_00.png", q / "earlier.png")
    report = tmp_path / "r.jsonl"
    stdin = os.fsencode(q / "earlier.png") + b"\n"
    summary = scan_json(root, "-m", model_dir, "--files-from", "-", "--move-to", q, "--report", report, stdin=stdin)
    assert (summary["skipped"], summary["moved"]) == (1, 0)
    assert "this run's quarantine" in report_rows(report)["rejected/earlier.png"]["message"]


def test_an_empty_list_scans_nothing_and_says_so(model_dir, incoming):
    root, _ = incoming
    result = invoke("scan", root, "-m", model_dir, "--files-from", "-", "-0", "--json", stdin=b"")
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout)["scanned"] == 0
    assert "named none" in result.stderr


@pytest.mark.parametrize("case", ["missing list", "list is a folder", "null alone", "list with a file",
                                  "list is the report"])
def test_file_list_usage_errors(case, model_dir, incoming, tmp_path):
    root, _ = incoming
    args = {
        "missing list": (root, "--files-from", tmp_path / "none.txt"),
        "list is a folder": (root, "--files-from", tmp_path),
        "null alone": (root, "-0"),
        "list with a file": (root / "odd_00.png", "--files-from", "-"),
        # --overwrite-report: the list is never the report, even when overwriting reports is allowed
        "list is the report": (root, "--files-from", tmp_path / "r.csv", "--report", tmp_path / "r.csv",
                               "--overwrite-report"),
    }[case]
    (tmp_path / "r.csv").write_text("path,status\n")
    result = invoke("scan", *args, "-m", model_dir)
    assert result.exit_code == EXIT_USAGE, result.output
    assert (tmp_path / "r.csv").read_text() == "path,status\n"
    expected = {"missing list": "No such file", "list is a folder": "Is a directory", "null alone": "--files-from",
                "list with a file": "not a folder", "list is the report": "also the --report file"}[case]
    assert expected in result.stderr


# ----------------------------------------------------------------------------- the cache


def cache_runs() -> int:
    import sqlite3

    found = list(Path(os.environ["XDG_CACHE_HOME"]).rglob("*.sqlite*")) + list(Path(os.environ["XDG_CACHE_HOME"]).rglob("*.db"))
    total = 0
    for path in found:
        if path.suffix in (".sqlite", ".db", ".sqlite3"):
            with sqlite3.connect(path) as db:
                total += db.execute("SELECT count(*) FROM runs").fetchone()[0]
    return total


def test_a_listed_scan_caches_files_but_no_run_snapshot(model_dir, incoming, tmp_path, no_racy_window):  # noqa: F811
    root, _ = incoming
    stdin = b"\n".join(os.fsencode(root / n) for n in ("normal_00.png", "odd_00.png")) + b"\n"
    listed = scan_json(root, "-m", model_dir, "--files-from", "-", stdin=stdin)
    assert (listed["decoded"], listed["cached"]) == (2, 0)
    assert cache_runs() == 0  # a list of two files is not the folder's listing
    full = scan_json(root, "-m", model_dir, "--report", tmp_path / "full.jsonl")
    assert (full["cached"], full["decoded"], full["scanned"]) == (2, 9, 11)
    fresh = scan_json(root, "-m", model_dir, "--no-cache", "--report", tmp_path / "fresh.jsonl")
    strip = {"score"}
    assert {p: {k: v for k, v in r.items() if k not in strip} for p, r in report_rows(tmp_path / "full.jsonl").items()} == \
        {p: {k: v for k, v in r.items() if k not in strip} for p, r in report_rows(tmp_path / "fresh.jsonl").items()}
    assert cache_runs() >= 1  # the full scan snapshots the folder
    assert scan_json(root, "-m", model_dir)["decoded"] == 0
    again = scan_json(root, "-m", model_dir, "--files-from", "-", stdin=stdin)
    assert (again["cached"], again["decoded"]) == (2, 0)  # answered from the full scan's snapshots


# ----------------------------------------------------------------------------- the API, the reader, a real pipe


def test_api_scan_files_and_a_single_file(model_dir, incoming, tmp_path):
    root, _ = incoming
    listed = api.scan(root, model_dir, files=[root / "odd_00.png", os.fsencode(root / "normal_00.png"),
                                              str(tmp_path / "out.png")], device="cpu")
    assert [(r.path, r.status) for r in listed.records][:2] == [("odd_00.png", "ood"), ("normal_00.png", "ok")]
    assert listed.records[2].status == "skipped" and "outside" in listed.records[2].message
    one = api.scan(root / "odd_01.png", model_dir, move_to=tmp_path / "q", device="cpu")
    assert [(r.path, r.action) for r in one.records] == [("odd_01.png", "moved")]
    with pytest.raises(api.ApiError, match="not a folder"):
        api.scan(root / "odd_00.png", model_dir, files=[root / "odd_00.png"], device="cpu")
    with pytest.raises(api.ApiError, match="a list of paths"):
        api.scan(root, model_dir, files=str(root / "odd_00.png"), device="cpu")


class Endless(io.RawIOBase):
    """`size` bytes of 'a' with no separator, then b'\\nok.png\\n', made as read."""

    def __init__(self, size: int):
        self.left = size
        self.tail = b"\nok.png\n"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left > 0:
            n = min(len(buffer), self.left)
            buffer[:n] = b"a" * n
            self.left -= n
            return n
        n = min(len(buffer), len(self.tail))
        buffer[:n], self.tail = self.tail[:n], self.tail[n:]
        return n


def test_reading_a_list_is_bounded_by_path_max():
    tracemalloc.start()
    try:
        names = list(read_names(io.BufferedReader(Endless(64 * 2**20)), limit=4096))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert names[0].name is None and "longer than any path" in names[0].error
    assert names[1:] == [Listed(2, b"ok.png")]
    assert peak < 2 * 2**20  # 64 MB of one line, held at most a chunk and a limit at a time


def test_reading_a_list_splits_exactly():
    assert list(read_names(io.BytesIO(b"a\n\nb c\nlast"))) == [Listed(1, b"a"), Listed(3, b"b c"), Listed(4, b"last")]
    assert [x.name for x in read_names(io.BytesIO(b"x\ny\0-z\0"), null=True)] == [b"x\ny", b"-z"]
    exact = list(read_names(io.BytesIO(b"x" * 10 + b"\n" + b"y" * 9 + b"\n"), limit=10))
    assert exact[0].name is None and exact[1].name == b"y" * 9


def test_find_print0_into_a_real_process(model_dir, incoming, tmp_path):
    root, _ = incoming
    hostile_folder(root)
    (root / "notes.txt").write_text("left out by find's -name")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    command = (f"find incoming -name '*.png' -print0 | {sys.executable} -m imgclean scan incoming -m "
               f"'{model_dir}' --files-from - -0 --json --report '{tmp_path / 'r.jsonl'}'")
    proc = subprocess.run(command, shell=True, cwd=root.parent, env=env, capture_output=True, timeout=300)
    assert proc.returncode == EXIT_OK, proc.stderr.decode(errors="replace")
    summary = json.loads(proc.stdout)
    pngs = [n for n in os.listdir(os.fsencode(root)) if n.endswith(b".png")]
    assert summary["scanned"] == len(pngs) == 15 and summary["skipped"] == 0
    assert set(report_rows(tmp_path / "r.jsonl")) == {os.fsdecode(n) for n in pngs}


def test_a_settings_file_cannot_name_a_file_list(model_dir, incoming, tmp_path):
    """A list is per run: a settings file naming one is refused, and init-config writes neither key
    (a YAML key `null` would read back as None)."""
    root, _ = incoming
    settings = tmp_path / "imgclean.yaml"
    settings.write_text(f"scan:\n  files-from: {tmp_path / 'list'}\n")
    result = invoke("scan", root, "-m", model_dir, "--config", settings)
    assert result.exit_code == EXIT_USAGE and "files-from" in result.stderr, result.output
    written = tmp_path / "init.yaml"
    assert invoke("init-config", written).exit_code == EXIT_OK
    text = written.read_text()
    assert "files-from" not in text and "\n  null:" not in text


def test_a_list_that_fails_mid_read_is_one_error_line(model_dir, incoming, monkeypatch):
    import errno

    from imgclean.pipeline.scan import file_list

    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(file_list.FileListError, match="Input/output error"):
        list(read_names(Failing()))
    root, _ = incoming
    real = file_list.read_names
    monkeypatch.setattr(file_list, "read_names", lambda stream, null=False: real(Failing(), null))
    result = invoke("scan", root, "-m", model_dir, "--files-from", "-", stdin=b"x\n")
    assert result.exit_code == 1, result.output
    assert "cannot read the file list: Input/output error" in result.stderr and "Traceback" not in result.output


def test_a_folder_or_file_inside_a_quarantine_is_never_scanned(model_dir, incoming, tmp_path):
    """Moving a quarantined file into another quarantine would put it out of reach of the journal
    that can restore it: a scan of a quarantine's sub-folder, or of one file in it, is refused."""
    root, _ = incoming
    q = tmp_path / "q"
    (root / "sub").mkdir()
    shutil.move(root / "odd_01.png", root / "sub" / "odd_01.png")
    scan_json(root, "-m", model_dir, "--move-to", q, code=EXIT_OK)
    assert (q / "sub" / "odd_01.png").exists()
    held = tree_snapshot(q)
    for target in (q / "sub", q / "sub" / "odd_01.png"):
        result = invoke("scan", target, "-m", model_dir, "--move-to", tmp_path / "q2")
        assert result.exit_code == EXIT_USAGE and "inside the imgclean quarantine" in result.stderr, result.output
        with pytest.raises(ValueError, match="inside the imgclean quarantine"):
            api.scan(target, model_dir, move_to=tmp_path / "q3", device="cpu")
    assert tree_snapshot(q) == held and not (tmp_path / "q2").exists() and not (tmp_path / "q3").exists()
