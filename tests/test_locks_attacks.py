"""A second local user (nobody, through setpriv) attacking the lock state of root's runs: it can
make runs refuse (exit 4, one line), never make overlapping runs both proceed, never make a run
touch anything outside the folders it was given, and never cause a traceback."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgclean.cli import EXIT_LOCKED, app
from locks_attacker import DEEP_JSON, Attacker, cannot_attack, shared_workdir
from test_filesystem import SLOW_CLI, contents, junk, sha, wait_for_moves

pytestmark = [pytest.mark.skipif(bool(cannot_attack()), reason=cannot_attack() or ""),
              pytest.mark.slow]  # a second user's processes racing real scans: ~10 s a test

ROOT = Path(__file__).resolve().parents[1]
LOCK = ".imgclean.lock"
runner = CliRunner()


def run(*args) -> tuple[int, str]:
    """An in-process CLI run (root's); an uncaught exception fails the test."""
    result = runner.invoke(app, [os.fspath(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail(f"uncaught {type(result.exception).__name__}: {result.exception}")
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip() and not line.lstrip().startswith(("{", "}", '"'))]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                             sha(p) if stat.S_ISREG(st.st_mode) else None)
    return out


@pytest.fixture
def shared():
    """/tmp/imgclean-attack-*/ (0755, root's): P, a dataset folder anyone may write (P/C, P/sub,
    files in each), and victim/, root's files the attacker would like a run to touch."""
    work = shared_workdir()
    try:
        p = work / "P"
        for folder in (p, p / "C", p / "sub", p / "sub" / "x"):
            folder.mkdir()
            folder.chmod(0o777)
        for i, folder in enumerate((p, p / "C", p / "C", p / "sub", p / "sub" / "x", p / "sub" / "x")):
            junk(folder / f"f{i}.png", seed=i)
        victim = work / "victim"
        victim.mkdir()
        for name in ("keep.txt", "entry.json", ".tmp-entry"):
            (victim / name).write_text(f"victim {name}\n")
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- planting


@pytest.mark.parametrize("plant", ["held-deep-json", "symlink", "fifo", "folder"])
def test_planted_lock_files_only_make_runs_refuse(model_dir: Path, shared: Path, plant: str) -> None:
    p, victim = shared / "P", shared / "victim"
    before_victim, originals = snapshot(victim), sorted(contents(p))
    lock = p / "sub" / LOCK
    with Attacker() as attacker:
        if plant == "held-deep-json":
            attacker.must("plant", path=lock, content=DEEP_JSON + "\x1b[31m\nkind scan\n", hold=True)
        elif plant == "symlink":
            attacker.must("symlink", path=lock, target=victim / "keep.txt")
        elif plant == "fifo":
            attacker.must("fifo", path=lock)
        else:
            attacker.must("mkdir", path=lock)
        code, output = run("scan", p, "-m", model_dir, "--move-to", shared / "Q1", "--json", "-q")
        assert code == EXIT_LOCKED, output  # at its first move below P/sub
        line = one_error_line(output)
        assert "\x1b" not in line and str(p / "sub") in line
        code, output = run("scan", p / "sub" / "x", "-m", model_dir, "--move-to", shared / "Q2", "--json", "-q")
        assert code == EXIT_LOCKED, output  # at its start: a folder above it
        one_error_line(output)
        code, output = run("scan", p / "C", "-m", model_dir, "--move-to", shared / "Q3", "--json", "-q")
        assert code == 0, output  # a folder beside it is not concerned
    assert sorted(contents(p, shared / "Q1", shared / "Q2", shared / "Q3")) == originals
    assert sorted(contents(p / "sub")) == sorted(contents(shared / "P" / "sub"))  # nothing moved from below
    assert not (shared / "Q2").exists() or not contents(shared / "Q2")
    assert snapshot(victim) == before_victim


@pytest.mark.parametrize("plant", ["symlink", "fifo", "held"])
def test_a_planted_lock_file_at_the_run_s_own_folder_refuses_it(model_dir: Path, shared: Path, plant: str) -> None:
    p, victim = shared / "P", shared / "victim"
    before_victim, originals = snapshot(victim), sorted(contents(p))
    with Attacker() as attacker:
        if plant == "symlink":
            attacker.must("symlink", path=p / LOCK, target=victim / "keep.txt")
        elif plant == "fifo":
            attacker.must("fifo", path=p / LOCK)
        else:
            attacker.must("plant", path=p / LOCK, content=DEEP_JSON, hold=True)
        code, output = run("scan", p, "-m", model_dir, "--move-to", shared / "Q1", "--json", "-q")
    assert code == EXIT_LOCKED, output
    one_error_line(output)
    assert sorted(contents(p)) == originals and snapshot(victim) == before_victim


def test_an_unheld_planted_lock_file_blocks_nothing_and_is_never_parsed(model_dir: Path, shared: Path) -> None:
    """A regular lock file the attacker owns and may rewrite at any time: the run locks it and goes on."""
    p = shared / "P"
    originals = sorted(contents(p))
    with Attacker() as attacker:
        attacker.must("plant", path=p / LOCK, content=DEEP_JSON)
        attacker.must("plant", path=p / "C" / LOCK, content="kind quarantine\n" + DEEP_JSON)
        code, output = run("scan", p, "-m", model_dir, "--move-to", shared / "Q1", "--json", "-q")
    assert code == 0, output
    assert json.loads(output)["moved"] == len(originals)
    assert sorted(contents(shared / "Q1")) == originals


def test_an_attackers_registry_folder_is_never_read(model_dir: Path, shared: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine-wide registry of earlier versions is gone: a folder the attacker made at its
    name, with a held deeply nested entry and files to delete, changes nothing."""
    sticky = shared / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    registry = sticky / "imgclean-locks"
    p = shared / "P"
    originals = sorted(contents(p))
    with Attacker() as attacker:
        attacker.must("mkdir", path=registry, mode=0o1777)
        attacker.must("plant", path=registry / "1-planted.json", content=DEEP_JSON, hold=True)
        attacker.must("plant", path=registry / "2-stale.json", content="{}")
        attacker.must("plant", path=registry / ".tmp-old", content="")
        before = snapshot(registry)
        monkeypatch.setenv("IMGCLEAN_LOCK_REGISTRY", str(registry))
        code, output = run("scan", p, "-m", model_dir, "--move-to", shared / "Q1", "--json", "-q")
        assert code == 0, output
        assert snapshot(registry) == before  # nothing listed away, deleted or added
    assert sorted(contents(shared / "Q1")) == originals


def test_links_planted_in_a_shared_quarantine_lead_nowhere(model_dir: Path, shared: Path) -> None:
    p, victim, q = shared / "P", shared / "victim", shared / "Q"
    q.mkdir()
    q.chmod(0o777)  # a quarantine in a shared place: the attacker may write it
    before_victim = snapshot(victim)
    originals = sorted(contents(p))
    with Attacker() as attacker:
        attacker.must("symlink", path=q / "sub", target=victim)
        code, output = run("scan", p, "-m", model_dir, "--move-to", q, "--json", "-q")
    assert code == 1, output  # the files below P/sub could not be moved; everything else was
    assert json.loads(output.split("\nerror:")[0])["move_errors"] == 3
    assert snapshot(victim) == before_victim
    assert sorted(contents(p, q)) == originals


# ----------------------------------------------------------------------------- overlapping runs


def start(folder: Path, model: Path, quarantine: Path, hold: Path | None, env: dict) -> subprocess.Popen:
    env = {**env, "IMGCLEAN_TEST_HOLD": os.fspath(hold)} if hold else env
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, "scan", os.fspath(folder), "-m", os.fspath(model), "--move-to",
         os.fspath(quarantine), "--json", "-q", "--batch-size", "4"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("first", ["child", "parent"])
def test_attacker_cannot_make_parent_and_child_runs_both_proceed(model_dir: Path, shared: Path, first: str) -> None:
    """Root runs `scan P` and `scan P/C` (the second starts while the first is moving). Between
    them the attacker replaces the first run's lock file with a fresh one no run holds (P and
    P/C are writable by all) and, for the registry of earlier versions, empties the folder
    IMGCLEAN_LOCK_REGISTRY names. At most one run may finish; every file exists exactly once."""
    p, victim = shared / "P", shared / "victim"
    for i in range(8):  # more files below P/C: both runs have work there
        junk(p / "C" / f"more{i}.png", seed=100 + i)
    originals = sorted(contents(p))
    before_victim = snapshot(victim)
    sticky = shared / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    registry = sticky / "imgclean-locks"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMGCLEAN_LOCK_REGISTRY": str(registry)}
    hold = shared / "hold"
    hold.touch()
    jobs = {"parent": (p, shared / "Q1"), "child": (p / "C", shared / "Q2")}
    second = "parent" if first == "child" else "child"
    procs = {}
    with Attacker() as attacker:
        attacker.must("mkdir", path=registry, mode=0o1777)
        try:
            procs[first] = start(jobs[first][0], model_dir, jobs[first][1], hold, env)
            wait_for_moves(jobs[first][1], procs[first])  # its first move waits on `hold`
            attacker.must("replace", path=jobs[first][0] / LOCK)
            attacker.must("clear", path=registry)
            procs[second] = start(jobs[second][0], model_dir, jobs[second][1], None, env)
            procs[second].wait(300)  # it goes through while the first one's move is held
        finally:
            hold.unlink()
            results = {name: proc.communicate(timeout=300) for name, proc in procs.items()}
    codes = {name: proc.returncode for name, proc in procs.items()}
    for name, (out, err) in results.items():
        assert b"Traceback" not in err, err
        if codes[name] == EXIT_LOCKED:
            assert b"removed or replaced" in err or b"in use" in err, err
    assert sorted(codes.values()) == [0, EXIT_LOCKED], (codes, results)
    assert codes[first] == EXIT_LOCKED  # the run whose lock was replaced stops at its next move
    assert sorted(contents(p, shared / "Q1", shared / "Q2")) == originals  # exactly once each
    in_q1, in_q2 = set(contents(shared / "Q1")), set(contents(shared / "Q2"))
    assert not in_q1 & in_q2
    assert snapshot(victim) == before_victim
