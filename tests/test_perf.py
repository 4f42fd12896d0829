"""The fast paths: pipelined scan, the scan cache, and lazy imports."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import class_image, make_incoming_folder, write_png
from imgclean import data
from imgclean.store.artifact import load_model
from imgclean.store.cache import CACHE_FILE, ScanCache, model_key
from imgclean.pipeline.scan.scanner import ScanOptions, Scorer, run_scan

ROOT = Path(__file__).resolve().parents[1]
OLD_NS = 1_600_000_000 * 10**9  # files older than the cache's racy window


def age(root: Path) -> None:
    for i, p in enumerate(sorted(Path(root).rglob("*"))):
        if p.is_file():
            os.utime(p, ns=(OLD_NS + i, OLD_NS + i))


# A file's ctime cannot be set back: files a test has just written (or aged with os.utime, which
# sets the ctime to now) stay racy for RACY_SECONDS, and the cache stores none of them. Tests of
# what a cache answers for such files narrow the window to the instant the scan starts (files
# written before it are then old enough); the window itself is tested in test_cache_identity.py.
@pytest.fixture
def no_racy_window(monkeypatch):
    from imgclean.store import cache as cache_module

    monkeypatch.setattr(cache_module, "RACY_SECONDS", 0.0)


# The same in a CLI run in a fresh interpreter (run_cli's `pre`).
NO_RACY = "import imgclean.store.cache as _cache; _cache.RACY_SECONDS = 0.0"


def scan_records(root, bundle, cache_dir=None, use_cache=True, batch_size=4):
    records = []
    opts = ScanOptions(batch_size=batch_size, workers=2, use_cache=use_cache, cache_dir=cache_dir)
    summary = run_scan(root, bundle, opts, on_record=records.append)
    return summary, [(r.path, r.status, r.predicted, r.nearest, r.score) for r in records]


def same(a, b) -> bool:
    """Records equal; scores to float32 precision (batch composition changes the last bits)."""
    return len(a) == len(b) and all(
        x[:4] == y[:4] and (x[4] is None) == (y[4] is None) and (x[4] is None or abs(x[4] - y[4]) <= 1e-5 * max(1, abs(y[4])))
        for x, y in zip(a, b)
    )


@pytest.fixture
def aged_incoming(tmp_path, no_racy_window):
    root = tmp_path / "incoming"
    make_incoming_folder(root, normal=9, ood=5)
    write_png(root / "sub" / "deep.png", np.full((16, 16), 7, np.uint8))
    os.symlink(root / "normal_00.png", root / "link.png")
    age(root)
    return root


# Modules worth not importing: torch and timm (seconds), numpy (~0.1 s), Pillow, importlib.metadata.
HEAVY = ("torch", "timm", "numpy", "PIL", "importlib.metadata")
# Reported too: rich (~20 ms, plus rich.progress and rich.table) is imported only to draw something.
RICH = ("rich", "rich.progress", "rich.table")


def run_cli(*args, pre: str = "", env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter and report which heavy modules it imported (`pre`: code
    run first, NO_RACY say)."""
    code = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: sys.stderr.write('\\nMODULES ' + json.dumps({{m: m in sys.modules for m in {HEAVY + RICH!r}}}) + '\\n'))\n"
        f"{pre}\n"
        f"sys.argv = ['imgclean', *{list(map(str, args))!r}]\n"
        "from imgclean.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def imported(proc: subprocess.CompletedProcess, *names: str) -> dict:
    """Which of HEAVY (or of `names`, from HEAVY and RICH) the run imported: name -> bool."""
    line = [l for l in proc.stderr.splitlines() if l.startswith("MODULES ")][-1]
    found = json.loads(line[len("MODULES "):])
    return {n: found[n] for n in names or HEAVY}


# ---- pipeline --------------------------------------------------------------------------------
def test_pipelined_scan_matches_batch_scoring_in_walk_order(model_dir, aged_incoming):
    bundle = load_model(model_dir)
    entries = list(data.walk_images(aged_incoming))
    _, records = scan_records(aged_incoming, bundle, use_cache=False, batch_size=3)
    assert [r[0] for r in records] == [os.path.relpath(e.path, aged_incoming) for e in entries]
    scorer = Scorer(bundle, batch_size=1000, workers=1)
    good = [e for e in entries if not e.skip_reason]
    expected = {r.path: r for r in scorer.score_entries(good, aged_incoming)}
    for path, status, pred, near, score in records:
        if path == "link.png":
            assert status == data.SKIPPED
            continue
        assert status == expected[path].status
        assert pred == expected[path].predicted
        if score is not None:
            assert score == pytest.approx(expected[path].score, rel=1e-5)
    assert {r[1] for r in records} >= {"ok", "ood", "unreadable", "skipped"}


def test_stopping_early_leaves_no_running_decoders(model_dir, aged_incoming):
    bundle = load_model(model_dir)
    seen = []
    opts = ScanOptions(batch_size=2, workers=2)
    summary = run_scan(aged_incoming, bundle, opts, on_record=seen.append, should_stop=lambda: len(seen) >= 3)
    # It stops at the end of the batch in hand (2 files to decode, and the files beside them)
    assert summary.interrupted and 3 <= len(seen) == sum(summary.counts.values()) < 17 and summary.decoded <= 2 * 2


def test_lazy_bundle_loads_the_network_only_when_used(model_dir):
    bundle = load_model(model_dir, lazy=True)
    assert not bundle.model_loaded
    pred, near, score = Scorer(bundle).score_arrays(np.stack([class_image("checker", np.random.default_rng(0))[:, :, None]] * 2))
    assert bundle.model_loaded and pred.shape == near.shape == score.shape == (2,)


# ---- cache -------------------------------------------------------------------------------------
def test_cache_reuses_results_and_gives_the_same_answers(model_dir, aged_incoming, tmp_path):
    bundle = load_model(model_dir, lazy=True)
    cache = tmp_path / "cache"
    plain, expected = scan_records(aged_incoming, bundle, use_cache=False)
    cold, first = scan_records(aged_incoming, bundle, cache)
    assert same(first, expected) and cold.cached == 0 and cold.decoded == plain.decoded == 16
    warm, second = scan_records(aged_incoming, load_model(model_dir, lazy=True), cache)
    assert same(second, expected)
    assert warm.cached == 16 and warm.decoded == 0
    assert warm.counts == cold.counts


def test_a_warm_rescan_never_loads_the_model(model_dir, aged_incoming, tmp_path):
    cache = tmp_path / "cache"
    scan_records(aged_incoming, load_model(model_dir, lazy=True), cache)
    bundle = load_model(model_dir, lazy=True)
    summary, _ = scan_records(aged_incoming, bundle, cache)
    assert summary.cached == 16 and not bundle.model_loaded


def test_changed_and_new_files_are_misses(model_dir, aged_incoming, tmp_path):
    cache = tmp_path / "cache"
    _, before = scan_records(aged_incoming, load_model(model_dir, lazy=True), cache)
    target = aged_incoming / "normal_01.png"
    old = dict((r[0], r) for r in before)["normal_01.png"]
    assert old[1] == "ok"
    # Same size, new content and mtime: an OOD blob written over an in-distribution image.
    from conftest import ood_image

    write_png(target, ood_image(np.random.default_rng(5)))
    os.utime(target, ns=(OLD_NS + 10**12, OLD_NS + 10**12))
    write_png(aged_incoming / "new.png", class_image("checker", np.random.default_rng(3)))
    os.utime(aged_incoming / "new.png", ns=(OLD_NS, OLD_NS))
    summary, after = scan_records(aged_incoming, load_model(model_dir, lazy=True), cache)
    assert summary.decoded == 2 and summary.cached == 15
    _, truth = scan_records(aged_incoming, load_model(model_dir), use_cache=False)
    assert same(after, truth)
    assert dict((r[0], r) for r in after)["normal_01.png"][1] == "ood"


def test_a_different_model_is_a_miss(model_dir, model_copy, aged_incoming, tmp_path):
    cache = tmp_path / "cache"
    scan_records(aged_incoming, load_model(model_dir, lazy=True), cache)
    from imgclean.store.artifact import save_model

    other = load_model(model_copy)
    other.detector.set_threshold_scale(2.0)  # a new detector.npz, so a new fingerprint
    save_model(other, model_copy, force=True)
    config = json.loads((model_copy / "config.json").read_text())
    assert config["fingerprint"] != json.loads((model_dir / "config.json").read_text())["fingerprint"]
    summary, _ = scan_records(aged_incoming, load_model(model_copy, lazy=True), cache)
    assert summary.cached == 0 and summary.decoded == 16
    # Same fingerprint, edited settings (e.g. the normalisation): also a miss.
    config["mean"] = [0.9]
    (model_copy / "config.json").write_text(json.dumps(config))
    summary, _ = scan_records(aged_incoming, load_model(model_copy, lazy=True), cache)
    assert summary.cached == 0


def test_files_written_during_the_racy_window_are_not_cached(model_dir, aged_incoming, tmp_path):
    fresh = aged_incoming / "fresh.png"
    write_png(fresh, class_image("checker", np.random.default_rng(4)))
    soon = time.time_ns() + 600 * 10**9  # modified "now" for any scan in the next ten minutes: racy
    os.utime(fresh, ns=(soon, soon))
    cache = tmp_path / "cache"
    scan_records(aged_incoming, load_model(model_dir, lazy=True), cache)
    summary, _ = scan_records(aged_incoming, load_model(model_dir, lazy=True), cache)
    assert summary.decoded == 1 and summary.cached == 16


@pytest.mark.parametrize("damage", [b"garbage" * 200, b"", b"SQLite format 3\x00" + b"\xff" * 3000])
def test_a_damaged_cache_is_set_aside_and_rebuilt(model_dir, aged_incoming, tmp_path, damage):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / CACHE_FILE).write_bytes(damage)
    _, truth = scan_records(aged_incoming, load_model(model_dir), use_cache=False)
    cold, first = scan_records(aged_incoming, load_model(model_dir, lazy=True), cache)
    assert same(first, truth)
    warm, second = scan_records(aged_incoming, load_model(model_dir, lazy=True), cache)
    assert same(second, truth) and warm.cached == 16


def test_a_foreign_database_is_not_trusted(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    db = sqlite3.connect(cache / CACHE_FILE)
    db.execute("CREATE TABLE results (x)")
    db.commit()
    db.close()
    entry = data.FileEntry(tmp_path / "a.png", 1, 1, "", 7, 8, 9)
    with ScanCache(cache, "k") as c:
        assert c.enabled and c.get(entry) is None
        c.put_many([entry], [("ok", "a", "a", 0.5, "")])
    with ScanCache(cache, "k") as c:
        assert c.get(entry) == ("ok", "a", "a", 0.5, "")
        for field in ("size", "mtime_ns", "dev", "ino", "ctime_ns"):  # any part of the identity differs
            assert c.get(entry._replace(**{field: 2})) is None, field
    with ScanCache(cache, "other") as c:
        assert c.get(entry) is None  # another model


def test_an_unwritable_cache_dir_only_turns_the_cache_off(model_dir, aged_incoming, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    summary, records = scan_records(aged_incoming, load_model(model_dir, lazy=True), blocker / "cache")
    _, truth = scan_records(aged_incoming, load_model(model_dir), use_cache=False)
    assert same(records, truth) and summary.cached == 0


def test_model_key_depends_on_fingerprint_and_settings():
    a = {"fingerprint": "abc", "mean": [0.1]}
    assert model_key(a) == model_key(dict(a))
    assert model_key(a) != model_key({**a, "fingerprint": "abd"})
    assert model_key(a) != model_key({**a, "mean": [0.2]})
    assert model_key(a) != model_key(a, extra="energy")


# ---- CLI: flags, and what gets imported ----------------------------------------------------------
def test_cli_import_does_not_import_torch():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys, imgclean.cli; print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_info_imports_neither_torch_nor_timm(model_dir):
    proc = run_cli("info", model_dir)
    assert proc.returncode == 0, proc.stderr
    assert "stripes_h" in proc.stdout
    assert imported(proc, "torch", "timm") == {"torch": False, "timm": False}


def test_cli_warm_rescan_skips_torch_and_no_cache_forces_scoring(model_dir, aged_incoming, tmp_path):
    cache = tmp_path / "c"
    first = run_cli("scan", aged_incoming, "-m", model_dir, "--json", "--cache-dir", cache, pre=NO_RACY)
    assert first.returncode == 0, first.stderr
    cold = json.loads(first.stdout)
    assert cold["decoded"] == 16 and imported(first, "torch", "timm") == {"torch": True, "timm": False}  # lenet: no timm
    second = run_cli("scan", aged_incoming, "-m", model_dir, "--json", "--cache-dir", cache, "--report", tmp_path / "r.jsonl")
    assert second.returncode == 0, second.stderr
    warm = json.loads(second.stdout)
    assert warm["cached"] == 16 and warm["decoded"] == 0
    assert imported(second)["torch"] is False
    assert {k: warm[k] for k in ("ok", "ood", "unreadable", "skipped")} == {k: cold[k] for k in ("ok", "ood", "unreadable", "skipped")}
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 17
    forced = run_cli("scan", aged_incoming, "-m", model_dir, "--json", "--cache-dir", cache, "--no-cache")
    assert json.loads(forced.stdout)["decoded"] == 16 and json.loads(forced.stdout)["cached"] == 0


# ---- start-up: what --help, info and a fully cached rescan import -----------------------------------
def warm_cli_rescan(model_dir, root, tmp_path) -> subprocess.CompletedProcess:
    cache = tmp_path / "cache"
    cold, _ = scan_records(root, load_model(model_dir, lazy=True), cache)  # the CLI's cache key: method mahalanobis
    assert cold.decoded == 16
    proc = run_cli("scan", root, "-m", model_dir, "--json", "--quiet", "--cache-dir", cache, "--report", tmp_path / "r.csv")
    assert proc.returncode in (0, 1), proc.stderr  # 1: some files rejected
    summary = json.loads(proc.stdout)
    assert summary["cached"] == 16 and summary["decoded"] == 0
    return proc


def test_a_fully_cached_cli_rescan_imports_neither_pillow_nor_torch(model_dir, aged_incoming, tmp_path):
    proc = warm_cli_rescan(model_dir, aged_incoming, tmp_path)
    assert imported(proc, "torch", "timm", "PIL") == {"torch": False, "timm": False, "PIL": False}


def test_a_fully_cached_cli_rescan_imports_no_numpy(model_dir, aged_incoming, tmp_path):
    proc = warm_cli_rescan(model_dir, aged_incoming, tmp_path)
    assert imported(proc, "numpy") == {"numpy": False}


def test_a_quiet_json_rescan_imports_no_rich(model_dir, aged_incoming, tmp_path):
    # --json --quiet draws nothing: no console, no progress bar, no table (cli/common.py)
    proc = warm_cli_rescan(model_dir, aged_incoming, tmp_path)
    assert imported(proc, *RICH) == dict.fromkeys(RICH, False)


def test_a_table_or_a_bar_still_brings_rich(model_dir, aged_incoming, tmp_path):
    proc = run_cli("scan", aged_incoming, "-m", model_dir, "--cache-dir", tmp_path / "cache", "--quiet")
    assert proc.returncode in (0, 1), proc.stderr
    assert "scanned" in proc.stdout  # the summary table
    assert imported(proc, "rich.table", "rich.progress") == {"rich.table": True, "rich.progress": False}  # no terminal: no bar


@pytest.mark.parametrize("args, code", [(["--version"], 0), (["info", "/nonexistent/model"], 1), (["scan"], 2)])
def test_main_freezes_the_heap_and_still_exits_as_the_command_says(args, code):
    # cli.main: gc.freeze() before the interpreter's teardown (its last collection is the cost);
    # the exit code, the output and the atexit handlers are as before.
    pre = "import gc; atexit.register(lambda: sys.stderr.write(f'\\nFROZEN {gc.get_freeze_count() > 0}\\n'))"
    proc = run_cli(*args, pre=pre)
    assert proc.returncode == code, proc.stderr
    assert "FROZEN True" in proc.stderr and "MODULES " in proc.stderr
    assert ("imgclean" in proc.stdout) if code == 0 else proc.stderr.strip()


def test_help_imports_nothing_heavy():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert not any(imported(proc).values()), imported(proc)


def test_info_imports_numpy_only_for_the_thresholds(model_dir):
    proc = run_cli("info", model_dir)
    assert proc.returncode == 0, proc.stderr
    # numpy reads detector.npz (the thresholds info shows)
    assert imported(proc, "torch", "timm", "PIL") == {"torch": False, "timm": False, "PIL": False}


def test_a_lazy_model_needs_numpy_only_to_score(model_dir):
    code = (
        "import sys, json\n"
        "import imgclean.cli, imgclean.data, imgclean.pipeline.decode, imgclean.store.cache\n"
        "from imgclean.store.artifact import load_model\n"
        "from imgclean.pipeline.engines.scoring import check_method\n"
        f"bundle = load_model({str(model_dir)!r}, lazy=True)\n"
        "check_method(bundle, 'mahalanobis')\n"
        "heavy = lambda: [m for m in ('numpy', 'PIL', 'importlib.metadata', 'torch') if m in sys.modules]\n"
        "before = heavy(), bundle.available_methods(), bundle.detectors_loaded\n"
        "names = sorted(bundle.detectors)\n"
        "print(json.dumps([*before, heavy(), names == sorted(bundle.detector_names)]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    before, methods, loaded, after, same_names = json.loads(proc.stdout)
    assert before == [] and not loaded and "mahalanobis" in methods
    assert after == ["numpy"] and same_names


def test_one_blas_thread_waits_for_numpy():
    code = (
        "from imgclean.pipeline import blas\n"
        "with blas.single_blas_thread():\n"
        "    import numpy\n"
        "    counts = lambda: [get() for get, _ in blas._controls()]\n"
        "    before = counts()\n"
        "    blas.engage()\n"
        "    during = counts()\n"
        "print(before, during, counts())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    before, during, after = (json.loads(part) for part in re.findall(r"\[[^]]*\]", proc.stdout))
    if not before:
        pytest.skip("no OpenBLAS found in this numpy")
    assert set(before) == {2} and set(during) == {1} and after == before


def test_cache_dir_inside_the_scanned_folder_is_refused(model_dir, aged_incoming):
    before = sorted(p.name for p in aged_incoming.iterdir())
    proc = run_cli("scan", aged_incoming, "-m", model_dir, "--cache-dir", aged_incoming / "cache")
    assert proc.returncode == 2
    assert "inside the scanned folder" in proc.stderr
    assert sorted(p.name for p in aged_incoming.iterdir()) == before


def test_default_cache_lives_under_xdg_cache_home(model_dir, aged_incoming, tmp_path):
    xdg = tmp_path / "xdg"
    proc = run_cli("scan", aged_incoming, "-m", model_dir, "--json", env_extra={"XDG_CACHE_HOME": str(xdg)})
    assert proc.returncode == 0, proc.stderr
    assert (xdg / "imgclean" / CACHE_FILE).is_file()
    assert not any(p.suffix.startswith(".sqlite") for p in aged_incoming.rglob("*"))


# ---- decoding work: draft mode, and fit decodes each image once ----------------------------------
def test_large_jpegs_are_decoded_in_draft_mode(tmp_path, monkeypatch):
    from PIL import Image, JpegImagePlugin

    y, x = np.mgrid[0:1200, 0:1600]
    photo = np.stack([(x // 7) % 256, (y // 5) % 256, ((x + y) // 9) % 256], -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(photo).save(path, quality=90)
    loaded_sizes = []
    real_load = JpegImagePlugin.JpegImageFile.load

    def spy_load(self):
        loaded_sizes.append(self.size)
        return real_load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy_load)
    arr = data.decode_image(path, 96, 3)
    assert arr.shape == (96, 96, 3)
    # draft() picks a DCT scale: the decoder produced at most 1/4 of the pixels per side.
    assert loaded_sizes and max(loaded_sizes[0]) <= 1600 // 4
    loaded_sizes.clear()
    data.decode_image(path, 700, 3)  # input not much smaller than the photo: full decode
    assert loaded_sizes[0] == (1600, 1200)


def test_fit_decodes_each_training_image_once(train_dir, monkeypatch):
    from imgclean.pipeline.fit import fit_model as fit_module
    from imgclean.config import FitConfig, TrainSettings

    calls: dict[str, int] = {}
    real = data.decode_image

    def counting(path, *args, **kwargs):
        calls[str(path)] = calls.get(str(path), 0) + 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "decode_image", counting)
    fit_module.fit_model(train_dir, FitConfig(device="cpu", train=TrainSettings(epochs=3, batch_size=32)))
    n_files = sum(1 for p in Path(train_dir).rglob("*.png"))
    assert len(calls) == n_files and set(calls.values()) == {1}
