"""A failure that says nothing lasting about a file (the system's: EACCES, EIO, EMFILE, ENFILE,
ENOMEM, MemoryError, a decode process killed) is reported with its status as usual, but never
cached as the file's verdict: the next scan decodes the file again and gets the real one."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, class_image
from imgclean import data
from imgclean.pipeline import decode as decode_module
from imgclean.pipeline.scan.scanner import ScanOptions, run_scan
from imgclean.store.artifact import load_model
from test_cache_identity import bmp_tree, write_bmp
from test_perf import NO_RACY, OLD_NS, ROOT, no_racy_window  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("no_racy_window")
VICTIM = "normal_02.bmp"


def scan(root: Path, model_dir: Path, cache: Path | None, workers: int = 1):
    records = []
    opts = ScanOptions(batch_size=4, workers=workers, use_cache=cache is not None, cache_dir=cache)
    summary = run_scan(root, load_model(model_dir, lazy=True), opts, on_record=records.append)
    return summary, {r.path: r for r in records}


def faulty_open(monkeypatch, code: int) -> None:
    """open() of the victim fails with `code` (the decoder's open: data.decode_image's)."""
    real = open

    def fake(path, *args, **kwargs):
        if os.path.basename(os.fsdecode(path)) == VICTIM:
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "open", fake, raising=False)


def out_of_memory(monkeypatch) -> None:
    """The victim's decode raises MemoryError (the machine was short of memory just then)."""
    real = data._pixels

    def fake(img, *args):
        if os.path.basename(os.fsdecode(getattr(img.fp, "name", ""))) == VICTIM:
            raise MemoryError
        return real(img, *args)

    monkeypatch.setattr(data, "_pixels", fake)


FAULTS = {
    **{f"open: {errno.errorcode[code]}": (lambda mp, code=code: faulty_open(mp, code))
       for code in (errno.EACCES, errno.EPERM, errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM)},
    "decode: MemoryError": out_of_memory,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_transient_failure_is_reported_but_never_cached(model_dir, tmp_path, monkeypatch, fault):
    root = bmp_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    _, truth = scan(root, model_dir, None)
    real = truth[VICTIM].status
    assert real in ("ok", "ood")
    with monkeypatch.context() as m:
        FAULTS[fault](m)
        summary, failed = scan(root, model_dir, cache)
        assert failed[VICTIM].status == ("too_large" if "MemoryError" in fault else "unreadable")  # reported as today
        assert data.is_transient(failed[VICTIM].message)
        assert {p: r.status for p, r in failed.items() if p != VICTIM} == {p: r.status for p, r in truth.items() if p != VICTIM}
    summary, after = scan(root, model_dir, cache)
    assert after[VICTIM].status == real and summary.decoded == 1  # decoded again: the real verdict
    summary, again = scan(root, model_dir, cache)
    assert again[VICTIM].status == real and summary.decoded == 0  # and that one is cached


def test_the_mark_comes_back_from_decode_processes(model_dir, tmp_path, monkeypatch):
    """Decoded in worker processes (forked after the fault is in place), the failure's message
    crosses a process boundary and is still marked: not cached."""
    root = bmp_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    monkeypatch.setenv("IMGCLEAN_DECODE", "processes")
    _, truth = scan(root, model_dir, None, workers=2)
    with monkeypatch.context() as m:
        faulty_open(m, errno.EIO)
        _, failed = scan(root, model_dir, cache, workers=2)
    assert failed[VICTIM].status == "unreadable" and data.is_transient(failed[VICTIM].message)
    summary, after = scan(root, model_dir, cache, workers=2)
    assert after[VICTIM].status == truth[VICTIM].status and summary.decoded == 1


def test_a_verdict_on_the_bytes_is_still_cached(model_dir, tmp_path):
    """A decoder's complaint about the data (a truncated file) is the file's own: cached."""
    root = bmp_tree(tmp_path / "t")
    (root / VICTIM).write_bytes((root / VICTIM).read_bytes()[:200])
    os.utime(root / VICTIM, ns=(OLD_NS, OLD_NS))
    cache = tmp_path / "cache"
    _, first = scan(root, model_dir, cache)
    assert first[VICTIM].status == "unreadable" and not data.is_transient(first[VICTIM].message)
    summary, _ = scan(root, model_dir, cache)
    assert summary.decoded == 0


def test_the_decoder_marks_what_the_system_failed(tmp_path, monkeypatch):
    path = write_bmp(tmp_path / VICTIM, class_image(CLASSES[0], np.random.default_rng(0)))
    settings = decode_module.DecodeSettings(16, 1)
    assert not data.is_transient(decode_module.decode_one(path, settings).message)
    faulty_open(monkeypatch, errno.EIO)
    d = decode_module.decode_one(path, settings)
    assert d.status == data.UNREADABLE and "Input/output error" in d.message and data.is_transient(d.message)
    # Whatever else goes wrong, unexpectedly, is not known to be the file's: transient too.
    monkeypatch.setattr(data, "decode_image", lambda *a, **k: 1 / 0)
    d = decode_module.decode_one(path, settings)
    assert d.status == data.UNREADABLE and "ZeroDivisionError" in d.message and data.is_transient(d.message)
    # The mark survives the trip from a worker process (pickled).
    import pickle

    assert data.is_transient(pickle.loads(pickle.dumps(d)).message)
    # A decode process that died on a file: transient, with or without the score in the workers.
    from imgclean.pipeline.engines import worker_scoring

    assert data.is_transient(decode_module.died(data.UNREADABLE, "killed").message)
    assert data.is_transient(worker_scoring.failed(data.UNREADABLE, "killed")[1])


# The decode processes of a scan in a fresh interpreter: while FLAG exists, decoding VICTIM kills
# the process doing it (SIGKILL), in the scanning process's workers only.
KILLER = (
    "import os, signal\n"
    "from imgclean import data\n"
    "_real, _parent = data.decode_image, os.getpid()\n"
    "def _deadly(path, *a, **k):\n"
    f"    if os.path.basename(os.fsdecode(path)) == {VICTIM!r} and os.path.exists(os.environ['FLAG']) and os.getpid() != _parent:\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return _real(path, *a, **k)\n"
    "data.decode_image = _deadly\n"
)


@pytest.mark.parametrize("score_in_workers", ["1", "0"])
def test_a_file_whose_decode_process_died_is_decoded_again(model_dir, tmp_path, score_in_workers):
    root = bmp_tree(tmp_path / "t")
    cache, flag = tmp_path / "cache", tmp_path / "flag"
    flag.write_text("")

    def run() -> dict:
        code = (f"{NO_RACY}\n{KILLER}import sys\nsys.argv = ['imgclean', 'scan', {os.fspath(root)!r}, '-m', {os.fspath(model_dir)!r},"
                f" '--json', '--quiet', '--cache-dir', {os.fspath(cache)!r}, '--report', {os.fspath(tmp_path / 'r.jsonl')!r},"
                " '--overwrite-report']\n"
                "from imgclean.cli import main\nmain()\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FLAG": str(flag), "IMGCLEAN_DECODE": "processes",
               "IMGCLEAN_SCORE_IN_WORKERS": score_in_workers}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode in (0, 1), proc.stderr
        rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
        return {**json.loads(proc.stdout), "rows": {r["path"]: r for r in rows}}

    first = run()
    assert first["rows"][VICTIM]["status"] == "unreadable" and "died" in first["rows"][VICTIM]["message"]
    flag.unlink()
    second = run()
    assert second["rows"][VICTIM]["status"] in ("ok", "ood") and second["decoded"] == 1
