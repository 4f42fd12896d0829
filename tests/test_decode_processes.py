"""pipeline.decode in worker processes: the same answers as threads, shared memory that never
outlives the decoder, a shared memory budget, and dead workers that lose no file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_png
from imgclean import data
from imgclean.pipeline import decode as dec
from imgclean.pipeline import decode_workers as workers_mod
from imgclean.pipeline.decode import DecodeSettings, Decoder, decode_many

pytestmark = pytest.mark.skipif(not workers_mod.available() or sys.platform != "linux", reason="POSIX shared memory, Linux")

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = DecodeSettings(16, 1)


def blocks(pid: int | None = None) -> list[str]:
    prefix = f"{workers_mod.SHM_PREFIX}{pid if pid is not None else os.getpid()}-"
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not reaped) counts as gone only once reaped: check its state
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout=10.0) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


@pytest.fixture
def mixed(tmp_path, monkeypatch):
    """Good files (first pixel = index), broken, truncated, too large (limit lowered), unsupported."""
    monkeypatch.setattr(data, "MAX_PIXELS", 40 * 40)  # inherited by forked workers
    paths = []
    for i in range(30):
        p = tmp_path / f"{i:02d}.png"
        if i == 3:
            p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
        elif i == 5:
            full = tmp_path / "full.png"
            write_png(full, np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
            p.write_bytes(full.read_bytes()[:-40])  # truncated
        elif i == 7:
            p.write_bytes(b"%PDF-1.4 not an image")
        elif i == 11:
            write_png(p, np.zeros((64, 64), np.uint8))  # 4096 pixels: over the lowered limit
        elif i == 13:
            p.write_bytes(b"")
        else:
            write_png(p, np.full((20, 24), i * 5, dtype=np.uint8))
        paths.append(p)
    return paths


def same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.status, x.message) == (y.status, y.message)
        assert (x.array is None) == (y.array is None)
        if x.array is not None:
            assert x.array.dtype == y.array.dtype == np.uint8 and np.array_equal(x.array, y.array)


def test_processes_give_what_threads_give_in_order(mixed):
    threads = decode_many(mixed, SETTINGS, 2, mode="threads")
    assert [d.status for d in threads][3:14] == [
        data.UNREADABLE, data.OK, data.UNREADABLE, data.OK, data.UNSUPPORTED, data.OK, data.OK, data.OK,
        data.TOO_LARGE, data.OK, data.UNREADABLE,
    ]
    with Decoder(SETTINGS, 2, mode="processes") as decoder:
        same(threads, decoder.decode(mixed))
        entries = [data.FileEntry(p, p.stat().st_size, 0) for p in mixed]
        same(threads, [d for _, ds in decoder.batches(entries, 7) for d in ds])  # several chunks per batch
        assert decoder.mode == "processes" and decoder.process_pool is not None
        pids = decoder.process_pool.pids()
        assert len(pids) == 2
    assert wait_gone(pids) == [] and blocks() == []
    assert [int(d.array[0, 0, 0]) for d in threads if d.ok][:3] == [0, 5, 10]


def test_a_worker_killed_mid_batch_loses_no_file(mixed, monkeypatch):
    real = data.decode_image

    def slow(path, *args, **kwargs):
        time.sleep(0.03)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "decode_image", slow)
    expected = decode_many(mixed, SETTINGS, 2, mode="threads")
    with Decoder(SETTINGS, 2, mode="processes") as decoder:
        pending = decoder.submit(mixed)  # 2 chunks of 15 files, ~0.45 s each
        pool = decoder.process_pool
        first = pool.pids()
        time.sleep(0.15)
        os.kill(first[0], signal.SIGKILL)
        same(expected, pending.result())
        assert pool.restarts >= 1
        second = pool.pids()
        assert set(second).isdisjoint(first)
        same(expected, decoder.decode(mixed))  # the new workers keep working
    assert wait_gone(first + second) == [] and blocks() == []


def test_a_file_that_kills_its_worker_is_unreadable_and_the_rest_decode(mixed, monkeypatch):
    real = data.decode_image

    def deadly(path, *args, **kwargs):
        if os.fspath(path).endswith("09.png"):
            os.kill(os.getpid(), signal.SIGKILL)  # a crash inside the image library, say
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "decode_image", deadly)
    monkeypatch.setattr(workers_mod.log, "warning", lambda *a, **k: None)
    with Decoder(SETTINGS, 2, mode="processes") as decoder:
        decoded = decoder.decode(mixed)
        pids = decoder.process_pool.pids()
    assert decoded[9].status == data.UNREADABLE and decoded[9].message == workers_mod.DIED
    monkeypatch.setattr(data, "decode_image", real)
    expected = decode_many(mixed, SETTINGS, 2, mode="threads")
    same(expected[:9] + expected[10:], decoded[:9] + decoded[10:])
    assert wait_gone(pids) == [] and blocks() == []


def test_cancel_and_leaving_early_stop_the_workers_and_free_the_blocks(mixed, monkeypatch):
    real = data.decode_image

    def slow(path, *args, **kwargs):
        time.sleep(0.02)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "decode_image", slow)
    with Decoder(SETTINGS, 2, mode="processes") as decoder:
        pending = [decoder.submit(mixed) for _ in range(4)]
        for p in pending:
            p.cancel()
        pids = decoder.process_pool.pids()
    assert wait_gone(pids) == [] and blocks() == []
    with Decoder(SETTINGS, 2, mode="processes") as decoder:
        for items, decoded in decoder.batches(mixed * 4, 10, ahead=3):
            break
        pids = decoder.process_pool.pids()
    assert items == mixed[:10] and wait_gone(pids) == [] and blocks() == []


def test_an_exception_stops_the_workers_at_once_and_frees_the_blocks(mixed, monkeypatch):
    real = data.decode_image

    def slow(path, *args, **kwargs):
        time.sleep(0.05)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "decode_image", slow)
    with pytest.raises(KeyboardInterrupt):
        with Decoder(SETTINGS, 2, mode="processes") as decoder:
            decoder.submit(mixed)
            decoder.submit(mixed).result()  # some blocks exist, more are being made
            pids = decoder.process_pool.pids()
            decoder.submit(mixed)
            raise KeyboardInterrupt
    assert wait_gone(pids) == [] and blocks() == []


SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from imgclean import data
from imgclean.pipeline.decode import DecodeSettings, Decoder
real = data.decode_image
def slow(path, *a, **k):
    time.sleep(0.05)
    return real(path, *a, **k)
data.decode_image = slow
if {graceful!r}:
    def stop(signum, frame):
        raise SystemExit(7)
    signal.signal(signal.SIGTERM, stop)
files = sorted(Path({folder!r}).glob("*.png")) * 20
with Decoder(DecodeSettings(16, 1), 2, mode="processes") as d:
    first = d.submit(files[:40])
    first.result()
    print(" ".join(map(str, d.process_pool.pids())), flush=True)
    for items, decoded in d.batches(files, 40, ahead=4):
        pass
"""


@pytest.mark.parametrize("graceful", [False, True], ids=["sigterm-kills", "sigterm-handled"])
def test_sigterm_leaves_no_worker_and_no_block(mixed, tmp_path, graceful):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(root=str(ROOT), folder=str(mixed[0].parent), graceful=graceful))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, proc.stderr.read()
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == (7 if graceful else -signal.SIGTERM)
    assert wait_gone(pids) == []  # the workers watch their parent
    end = time.monotonic() + 5
    while blocks(proc.pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert blocks(proc.pid) == []


def test_the_workers_share_one_budget_of_one_process_total(mixed, monkeypatch):
    monkeypatch.setattr(data, "DECODE_BUDGET", data.DecodeBudget(5000))
    with Decoder(SETTINGS, 2, mode="processes") as decoder:
        decoded = decoder.decode(mixed)
        budget = decoder.process_pool.budget
        assert budget.total == 5000 and 0 < budget.peak <= 5000 and budget.used == 0
    assert sum(d.ok for d in decoded) == 25


def test_shared_budget_waits_for_room_like_the_thread_budget():
    import multiprocessing as mp
    import threading

    budget = workers_mod.SharedBudget(100, mp.get_context("fork"))
    entered = threading.Event()
    with budget.reserve(80):

        def other():
            with budget.reserve(50):
                entered.set()

        t = threading.Thread(target=other)
        t.start()
        assert not entered.wait(0.2)  # 80 + 50 > 100: waits
    t.join(5)
    assert entered.is_set() and budget.used == 0 and budget.peak == 80
    with budget.reserve(10**9):  # larger than the total: runs alone, counted as the total
        assert budget.used == 100


def test_auto_mode_rule(tmp_path, monkeypatch):
    monkeypatch.delenv(dec.MODE_ENV, raising=False)
    small = [data.FileEntry(tmp_path / f"{i}.png", 800, 0) for i in range(dec.MIN_PROCESS_FILES)]
    large = [data.FileEntry(tmp_path / f"{i}.jpg", 3 * 2**20, 0) for i in range(dec.MIN_PROCESS_FILES)]
    d = Decoder(SETTINGS, 2)
    assert d._choose(small[:10]) == "threads" and d.mode is None  # too few files so far to decide
    assert d._choose(small[10:]) == "processes" and d.mode == "processes"
    d = Decoder(SETTINGS, 2)
    assert d._choose(large) == "threads" and d.mode == "threads"
    assert Decoder(SETTINGS, 1).mode == "threads"  # one worker: a thread
    monkeypatch.setenv(dec.MODE_ENV, "processes")
    assert Decoder(SETTINGS, 2).mode == "processes" and Decoder(SETTINGS, 2, mode="threads").mode == "threads"
    monkeypatch.setenv(dec.MODE_ENV, "fibers")
    with pytest.raises(ValueError, match="decode mode"):
        Decoder(SETTINGS, 2)


def test_auto_mode_decodes_a_folder_of_small_files_in_processes(tmp_path, monkeypatch):
    monkeypatch.delenv(dec.MODE_ENV, raising=False)
    paths = []
    for i in range(dec.MIN_PROCESS_FILES + 10):
        paths.append(write_png(tmp_path / f"{i:03d}.png", np.full((8, 8), i % 250, np.uint8)))
    with Decoder(SETTINGS, 2) as decoder:
        got = [d for _, ds in decoder.batches(paths, 64) for d in ds]
        assert decoder.mode == "processes"
    assert [int(d.array[0, 0, 0]) for d in got] == [i % 250 for i in range(len(paths))]
    assert blocks() == []
