"""Real processes: a rerun right after kill -9 proceeds (decode processes never hold the run's
locks and die with it), and SIGHUP ends a run like SIGTERM (exit 129), on a pipe and on a
terminal that went away."""
from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgclean.cli import EXIT_OK
from imgclean.cli.common import EXIT_HANGUP
from imgclean.pipeline import decode_workers
from imgclean.quarantine.locking import ScanLock
from imgclean.quarantine.moves import MANIFEST_NAME, read_manifest
from test_filesystem import ENV, contents, many_rejects, slow_scan, unfinished, wait_for_moves

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="Linux processes, /proc and PR_SET_PDEATHSIG"),
              pytest.mark.slow]  # real processes killed and signalled: 5-25 s a test


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def gone_within(pids: list[int], seconds: float) -> list[int]:
    end = time.monotonic() + seconds
    while [p for p in pids if alive(p)] and time.monotonic() < end:
        time.sleep(0.02)
    return [p for p in pids if alive(p)]


def shm_blocks(pid: int) -> list[str]:
    prefix = f"{decode_workers.SHM_PREFIX}{pid}-"
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


# ----------------------------------------------------------------------------- decode processes


class _Report:
    """What a worker says about itself, carried back as a failed item's message."""

    def __init__(self, message: str):
        self.array, self.status, self.message = None, "unreadable", message


def _pdeathsig(item, settings) -> _Report:
    import ctypes
    import signal as sig

    value = ctypes.c_int(0)
    ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    return _Report(f"{value.value} {sig.getsignal(sig.SIGHUP) == sig.SIG_IGN}")


@pytest.mark.skipif(not decode_workers.available(), reason="POSIX shared memory")
def test_decode_workers_die_with_their_parent_and_ignore_sighup(tmp_path: Path) -> None:
    from imgclean.pipeline.decode import DecodeSettings

    pool = decode_workers.ProcessDecodePool(_pdeathsig, DecodeSettings(16, 1), 2, lambda a, s, m: m)
    try:
        answers = pool.submit([tmp_path / "a", tmp_path / "b"]).result()
    finally:
        pool.close()
    assert answers == [f"{int(signal.SIGTERM)} True"] * 2


def scan_args(folder: Path, model: Path, quarantine: Path) -> list[str]:
    return [sys.executable, "-m", "imgclean", "scan", str(folder), "-m", str(model), "--move-to", str(quarantine),
            "--json", "-q", "--workers", "2", "--batch-size", "8"]


@pytest.mark.slow  # two scans with decode processes: ~10-25 s on two busy cores
def test_rerun_right_after_kill_9_proceeds_and_recovers(model_dir: Path, tmp_path: Path) -> None:
    """A real scan with decode processes, killed with -9 after its first journaled move while its
    workers run, then at once: the folder and the quarantine are free, the rerun exits 0, and
    every input exists exactly once."""
    env = {**ENV, "IMGCLEAN_DECODE": "processes"}
    for attempt in range(1):  # benchmarks/fault_locks.py repeats it
        folder, quarantine = tmp_path / f"in{attempt}", tmp_path / f"q{attempt}"
        originals = many_rejects(folder, 80)
        log = tmp_path / f"killed{attempt}.log"
        with open(log, "wb") as fh:  # not a pipe: waiting for its end would wait for the workers too
            proc = subprocess.Popen(scan_args(folder, model_dir, quarantine), env=env, stdin=subprocess.DEVNULL,
                                    stdout=fh, stderr=fh)
        workers: list[int] = []
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            workers = children(proc.pid)
            try:
                moving = b'"state": "started"' in (quarantine / MANIFEST_NAME).read_bytes()
            except FileNotFoundError:
                moving = False
            if workers and moving:
                break
            time.sleep(0.002)
        proc.kill()
        proc.wait(60)
        # at once (its workers may still be alive): nothing holds the run's locks any more
        with ScanLock(folder), ScanLock(quarantine, kind="quarantine"):
            pass
        err = log.read_bytes()
        assert proc.returncode == -signal.SIGKILL, err
        assert workers, "the scan never ran decode processes"
        rerun = subprocess.run(scan_args(folder, model_dir, quarantine), env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=300)
        assert rerun.returncode == EXIT_OK, rerun.stderr
        assert b"Traceback" not in rerun.stderr + err
        assert sorted(contents(folder, quarantine)) == originals  # exactly once each
        assert sorted(contents(quarantine)) == originals and unfinished(quarantine) == []
        assert gone_within(workers, 60) == []  # the killed run's workers died with it
        assert shm_blocks(proc.pid) == []  # and took their shared-memory blocks with them


# ----------------------------------------------------------------------------- SIGHUP


def test_sighup_mid_run_stops_like_sigterm(model_dir: Path, tmp_path: Path) -> None:
    folder, quarantine = tmp_path / "in", tmp_path / "q"
    before = many_rejects(folder)
    proc = slow_scan(folder, model_dir, quarantine)
    wait_for_moves(quarantine, proc, count=3)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_HANGUP, err
    assert b"Traceback" not in err
    summary = json.loads(out)
    assert summary["interrupted"] is True and 3 <= summary["moved"] < 60
    assert unfinished(quarantine) == []  # the file in flight was finished, the journal flushed
    assert sum(r["state"] == "done" for r in read_manifest(quarantine)) == summary["moved"]
    assert sorted(contents(folder, quarantine)) == before


def test_sighup_from_a_closed_terminal_with_decode_processes(model_dir: Path, tmp_path: Path) -> None:
    """The run's whole process group gets SIGHUP and its terminal is gone (writes fail with EIO):
    the decode processes leave the decision to the run, which finishes the file in flight and
    exits 129, not 120 (a failed last flush) or a traceback."""
    folder, quarantine, report = tmp_path / "in", tmp_path / "q", tmp_path / "r.jsonl"
    before = many_rejects(folder, 200)
    master, slave = pty.openpty()
    env = {**ENV, "IMGCLEAN_DECODE": "processes"}
    code = ("import sys, time\nimport imgclean.quarantine.moves as m\n"
            "m.fileops.fault_hook = lambda step: time.sleep(0.02) if step == 'link' else None\n"
            "from imgclean.cli import app\napp(sys.argv[1:], prog_name='imgclean')\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "scan", str(folder), "-m", str(model_dir), "--move-to", str(quarantine),
         "--report", str(report), "--workers", "2", "--batch-size", "8"],
        env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    os.set_blocking(master, False)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:  # read here, not in a thread: a read in progress would keep the terminal open
                while os.read(master, 65536):
                    pass
            except OSError:
                pass
            try:
                if (quarantine / MANIFEST_NAME).read_bytes().count(b'"state": "started"') >= 3:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.005)
        assert proc.poll() is None and children(proc.pid), "no decode processes while moving"
        os.close(master)  # the terminal goes away (writes to it fail with EIO) ...
        master = -1
        os.killpg(proc.pid, signal.SIGHUP)  # ... and its session gets SIGHUP
        rc = proc.wait(timeout=120)
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == EXIT_HANGUP
    assert unfinished(quarantine) == []
    assert sorted(contents(folder, quarantine)) == before
    moved = sum(r["state"] == "done" for r in read_manifest(quarantine))
    assert 3 <= moved < 200
    rows = [json.loads(line) for line in report.read_bytes().splitlines()]  # closed whole
    assert sum(r["action"] == "moved" for r in rows) == moved
