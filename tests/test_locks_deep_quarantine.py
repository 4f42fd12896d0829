"""The quarantine side of deep trees: moving out of a 1,100-level tree and restoring into it
(folders made and pruned without recursion), a destination beyond PATH_MAX (a per-file error),
and no link inside the quarantine followed while its folders are made."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgclean.cli import app
from imgclean.quarantine.moves import MoveRequest, Quarantine
from imgclean.quarantine.folders import walk
from test_filesystem import junk, sha
from test_walk_tree import remove_tree as remove_deep  # rm -r without recursion

DEPTH = 1100

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [os.fspath(a) for a in args])
    assert "Traceback" not in result.output and not isinstance(result.exception, RecursionError), result.output
    return result


def contents(*roots: Path) -> list[str]:
    """sha256 of every user file below the roots, without recursion (os.walk recurses in 3.11)."""
    return sorted(sha(os.path.join(top, n)) for root in roots for top, _, names in walk(root)
                  for n in names if not n.startswith(".") and n not in ("imgclean-manifest.jsonl", "imgclean-features.bin"))


def make_deep(folder: Path, depth: int = DEPTH) -> Path:
    """folder/d/d/.../d (depth levels) holding x.png, made one descriptor at a time."""
    folder.mkdir(parents=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    return junk(folder.joinpath(*["d"] * depth, "x.png"), seed=1)


@pytest.fixture
def work(tmp_path: Path):
    """tmp_path, emptied without recursion afterwards (pytest's own clean-up recurses)."""
    yield tmp_path
    for entry in list(tmp_path.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            remove_deep(entry)


def test_scan_move_and_restore_of_a_1100_level_tree(model_dir: Path, work: Path) -> None:
    folder, quarantine = work / "in", work / "q"
    deep = make_deep(folder)
    junk(folder / "top.png", seed=2)
    before = contents(folder)
    result = invoke("scan", folder, "-m", model_dir, "--move-to", quarantine, "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["moved"] == 2
    moved = quarantine.joinpath(*["d"] * DEPTH, "x.png")
    assert moved.is_file() and not deep.exists()
    remove_deep(folder / "d")  # restore has to make all 1,100 folders again
    result = invoke("restore", quarantine, "--json")
    assert result.exit_code == 0, result.output
    assert deep.is_file() and contents(folder) == before
    assert not (quarantine / "d").exists()  # the emptied folders were pruned, all 1,100


def test_a_destination_beyond_path_max_is_a_per_file_error(model_dir: Path, work: Path) -> None:
    """The scanned path fits; the same path below a long quarantine path does not."""
    tmp_path = work
    folder = tmp_path / "in"
    name = "n" * 200
    parts = [f"{i:02d}{name}" for i in range(18)]  # about 3,700 bytes below the scanned folder
    far = junk(folder.joinpath(*parts, "far.png"), seed=3)
    near = junk(folder / "near.png", seed=4)
    quarantine = tmp_path.joinpath(*["q" * 200] * 2)  # 400 more bytes: beyond PATH_MAX there
    result = invoke("scan", folder, "-m", model_dir, "--move-to", quarantine, "--json", "-q")
    assert result.exit_code == 1, result.output  # a file that could not be moved
    summary = json.loads(result.stdout)
    assert summary["moved"] == 1 and summary["move_errors"] == 1
    assert far.is_file() and not near.exists()
    assert not (quarantine / parts[0]).exists()  # no folder made for a file that cannot go there


def test_folders_are_made_without_following_a_link_in_the_quarantine(tmp_path: Path) -> None:
    folder, quarantine, elsewhere = tmp_path / "in", tmp_path / "q", tmp_path / "elsewhere"
    src = junk(folder / "sub" / "deeper" / "f.png", seed=5)
    elsewhere.mkdir()
    quarantine.mkdir()
    (quarantine / "sub").symlink_to(elsewhere)  # planted by whoever can write the quarantine
    st = src.stat()
    with Quarantine(quarantine) as q:
        result = q.move(MoveRequest(src, folder, "ood", st.st_size, st.st_mtime_ns, dev=st.st_dev, ino=st.st_ino))
    assert result.status == "error" and src.is_file()
    assert list(elsewhere.iterdir()) == []  # nothing made through the link
