"""Scoring in the decode worker processes (pipeline/engines/worker_scoring.py, decode_workers' `finish`):
the same records as scoring in the scanning process, in order, with the statuses of files whose
worker died, errors that reach the scan, and a scanning process that never builds the network."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_incoming_folder, write_png
from imgclean import data
from imgclean.pipeline import decode_workers as workers_mod
from imgclean.pipeline.engines import worker_scoring
from imgclean.pipeline.decode import DecodeSettings, Decoder, decode_many
from imgclean.pipeline.scan.scanner import ScanOptions, run_scan
from imgclean.store.artifact import load_model
from test_decode_processes import ROOT, blocks, wait_gone
from test_perf import age

pytestmark = pytest.mark.skipif(not workers_mod.available() or sys.platform != "linux", reason="POSIX, fork")

SETTINGS = DecodeSettings(16, 1)


def summarise(decoded: list) -> list[tuple]:
    """A finish: each decoded file's status, first pixel and the process that saw it."""
    return [(d.status, int(d.array[0, 0, 0]) if d.ok else None, os.getpid()) for d in decoded]


def failing(decoded: list) -> list:
    raise ValueError("this model cannot load")


def failed(status, message):
    return (status, message, None)


@pytest.fixture
def files(tmp_path):
    paths = []
    for i in range(24):
        p = tmp_path / f"{i:02d}.png"
        if i == 4:
            p.write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            write_png(p, np.full((20, 20), i * 7, dtype=np.uint8))
        paths.append(p)
    return paths


def test_finish_runs_in_the_workers_one_result_a_file_in_order(files):
    expected = [(d.status, int(d.array[0, 0, 0]) if d.ok else None) for d in decode_many(files, SETTINGS, 2, mode="threads")]
    with Decoder(SETTINGS, 2, mode="processes", finish=summarise, failed=failed) as decoder:
        pending = decoder.submit(files)
        assert pending.finished
        got = pending.result()
        pids = decoder.process_pool.pids()
    assert [g[:2] for g in got] == expected and expected[4][0] == data.UNREADABLE
    assert {g[2] for g in got} <= set(pids) and os.getpid() not in {g[2] for g in got}
    assert wait_gone(pids) == [] and blocks() == []
    with Decoder(SETTINGS, 2, mode="threads", finish=summarise) as decoder:  # threads: the caller finishes
        pending = decoder.submit(files)
        assert not pending.finished and pending.result()[0].ok


def test_a_file_that_kills_its_worker_gets_the_failed_result(files, monkeypatch):
    real = data.decode_image

    def deadly(path, *args, **kwargs):
        if os.fspath(path).endswith("09.png"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "decode_image", deadly)
    monkeypatch.setattr("imgclean.pipeline.decode.SIMPLE_PNG", False)  # every file through decode_image
    monkeypatch.setattr(workers_mod.log, "warning", lambda *a, **k: None)
    with Decoder(SETTINGS, 2, mode="processes", finish=summarise, failed=failed) as decoder:
        got = decoder.decode(files)
        pids = decoder.process_pool.pids()
    assert got[9] == (data.UNREADABLE, workers_mod.DIED, None)
    assert [g[1] for g in got[:4]] == [0, 7, 14, 21] and got[10][:2] == (data.OK, 70)
    assert wait_gone(pids) == [] and blocks() == []


def test_an_error_in_finish_reaches_the_caller(files):
    with pytest.raises(ValueError, match="cannot load"):
        with Decoder(SETTINGS, 2, mode="processes", finish=failing, failed=failed) as decoder:
            decoder.decode(files)
    assert blocks() == []


# A scan in a fresh interpreter (one that never imported torch, as the CLI's scanning process):
# its records, whether it built the network, whether it imported torch.
SCRIPT = """
import json, os, sys
sys.path.insert(0, {root!r})
from imgclean.pipeline.scan.scanner import ScanOptions, run_scan
from imgclean.store.artifact import load_model
bundle = load_model({model!r}, lazy=True)
if {damage!r}:  # the network cannot be built when it is first used (the files were read and checked at open)
    from imgclean.store.model_files import ModelError
    def broken():
        raise ModelError("the network cannot be built (injected)")
    bundle._loader = broken
records = []
try:
    summary = run_scan({folder!r}, bundle, ScanOptions(batch_size=5, workers=2, use_cache={cache!r} is not None,
                       cache_dir={cache!r}), on_record=records.append)
except Exception as exc:
    print(json.dumps({{"error": [type(exc).__name__, str(exc)]}}))
    raise SystemExit(0)
print(json.dumps({{"records": [[r.path, r.status, r.predicted, r.nearest, r.score, r.message] for r in records],
                  "decoded": summary.decoded, "model_loaded": bundle.model_loaded, "torch": "torch" in sys.modules}}))
"""


def scan_elsewhere(root, model, tmp_path, in_workers: bool, cache=None, damage=False) -> dict:
    script = tmp_path / "scan.py"
    script.write_text(SCRIPT.format(root=str(ROOT), model=str(model), folder=str(root), cache=None if cache is None else str(cache),
                                    damage=damage))
    env = {**os.environ, "IMGCLEAN_DECODE": "processes", worker_scoring.ENV: "1" if in_workers else "0"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_scan_scored_in_its_workers_gives_the_same_records(model_dir, tmp_path):
    root = tmp_path / "in"
    make_incoming_folder(root, normal=9, ood=6)
    write_png(root / "sub" / "deep.png", np.full((16, 16), 3, np.uint8))
    os.symlink(root / "normal_00.png", root / "link.png")
    age(root)
    here = scan_elsewhere(root, model_dir, tmp_path, in_workers=False)
    there = scan_elsewhere(root, model_dir, tmp_path, in_workers=True)
    assert here["model_loaded"] and here["torch"]
    assert not there["model_loaded"] and not there["torch"]  # the network ran only in the workers
    assert there["decoded"] == here["decoded"] == 17
    assert {r[1] for r in there["records"]} >= {"ok", "ood", "unreadable", "skipped"}
    for a, b in zip(there["records"], here["records"], strict=True):
        assert a[:4] + a[5:] == b[:4] + b[5:]
        assert (a[4] is None) == (b[4] is None) and (a[4] is None or abs(a[4] - b[4]) <= 1e-5 * max(1, abs(b[4])))
    # With the cache: the first scan fills it from the workers' outcomes, the next decodes nothing
    cache = tmp_path / "cache"
    cold = scan_elsewhere(root, model_dir, tmp_path, in_workers=True, cache=cache)
    warm = scan_elsewhere(root, model_dir, tmp_path, in_workers=True, cache=cache)
    assert cold["decoded"] == 17 and warm["decoded"] == 0 and warm["records"] == cold["records"]


def test_a_process_that_imported_torch_scores_itself(model_dir, tmp_path, monkeypatch):
    # (as this test process has: forked children of a process that ran torch's thread pools hang)
    assert "torch" in sys.modules and not worker_scoring.fork_is_safe()
    root = tmp_path / "in"
    make_incoming_folder(root, normal=3, ood=2)
    monkeypatch.setenv("IMGCLEAN_DECODE", "processes")
    bundle = load_model(model_dir, lazy=True)
    summary = run_scan(root, bundle, ScanOptions(batch_size=5, workers=2))
    assert summary.decoded == 6 and bundle.model_loaded


@pytest.mark.slow
def test_a_network_that_cannot_be_built_fails_the_scan_as_in_the_scanning_process(model_dir, tmp_path):
    root = tmp_path / "in"
    make_incoming_folder(root, normal=3, ood=2)
    errors = [scan_elsewhere(root, model_dir, tmp_path, in_workers=w, damage=True).get("error") for w in (False, True)]
    assert errors[0] == errors[1] == ["ModelError", "the network cannot be built (injected)"]


def test_scoring_in_workers_is_for_cpu_scans_whose_workers_fit_in_memory(monkeypatch):
    monkeypatch.delenv(worker_scoring.ENV, raising=False)
    monkeypatch.setattr(worker_scoring, "_available_bytes", lambda: 16 * 2**30)
    assert worker_scoring.wanted("cpu", 2) and worker_scoring.wanted("cpu", worker_scoring.MAX_WORKERS)
    assert not worker_scoring.wanted("cpu", worker_scoring.MAX_WORKERS + 1)  # torch imported in each: ~300 MB
    assert not worker_scoring.wanted("cuda", 2) and not worker_scoring.wanted("mps", 2)
    monkeypatch.setattr(worker_scoring, "_available_bytes", lambda: 3 * 2**30)
    assert worker_scoring.wanted("cpu", 2) and not worker_scoring.wanted("cpu", 4)  # half of what is available
    monkeypatch.setenv(worker_scoring.ENV, "0")
    assert not worker_scoring.wanted("cpu", 2)


def test_available_memory_is_read_from_meminfo():
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo")
    available = worker_scoring._available_bytes()
    assert 0 < available < float("inf")
