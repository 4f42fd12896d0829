"""Tiny generated image folders and a tiny trained model, shared by the tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import CLASSES, SIZE, class_image, ood_image  # noqa: F401  (re-exported for the tests)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path)
    return path


def make_train_folder(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        for i in range(per_class):
            write_png(root / name / f"{name}_{i:03d}.png", class_image(name, rng))
    return root


def make_incoming_folder(root: Path, normal: int = 6, ood: int = 4, seed: int = 1) -> dict[str, str]:
    """A flat folder of in-distribution images, OOD blobs and one broken file; returns name -> kind."""
    rng = np.random.default_rng(seed)
    kinds = {}
    for i in range(normal):
        name = f"normal_{i:02d}.png"
        write_png(root / name, class_image(CLASSES[i % len(CLASSES)], rng))
        kinds[name] = "normal"
    for i in range(ood):
        name = f"odd_{i:02d}.png"
        write_png(root / name, ood_image(rng))
        kinds[name] = "ood"
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    kinds["broken.png"] = "broken"
    return kinds


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file below root (hidden ones too): relative path -> (size, mtime_ns, sha-ish)."""
    import hashlib

    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and p.name not in (".imgclean.lock", ".imgclean-decisions.jsonl"):  # bookkeeping, by design
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def journal_view(q: Path, root: Path, digits: int | None = None) -> list[tuple]:
    """A quarantine manifest's moves, paths relative to their folders (comparable across two
    runs); scores rounded to `digits` when given (two engines may batch differently)."""
    import os

    from imgclean.quarantine.moves import read_manifest

    out = []
    for rec in read_manifest(q):
        if rec["state"] == "started":
            d = rec["details"]
            score = d["score"] if digits is None or d["score"] is None else round(d["score"], digits)
            out.append((os.path.relpath(rec["source"], root), os.path.relpath(rec["destination"], q), rec["reason"],
                        rec["size"], rec["sha256"], d["predicted"], d["nearest"], score, d["message"]))
        else:
            out.append((rec["state"],))
    return sorted(out, key=str)


def quarantined(q: Path) -> dict[str, str]:
    """File -> sha256 of what a quarantine holds (its manifest and features file left out)."""
    return {k: v[2] for k, v in tree_snapshot(q).items() if not k.startswith(("imgclean-manifest", "imgclean-features"))}


@pytest.fixture(scope="session")
def train_dir(tmp_path_factory) -> Path:
    return make_train_folder(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="session")
def model_dir(train_dir, tmp_path_factory) -> Path:
    """A lenet model trained for a few epochs on the tiny folder (a few seconds)."""
    from imgclean.store.artifact import save_model
    from imgclean.config import FitConfig, TrainSettings
    from imgclean.pipeline.fit.fit_model import fit_model

    bundle, _ = fit_model(train_dir, FitConfig(device="cpu", train=TrainSettings(epochs=6, batch_size=16)))
    return save_model(bundle, tmp_path_factory.mktemp("models") / "model")


@pytest.fixture
def incoming(tmp_path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "incoming"
    kinds = make_incoming_folder(root)
    return root, kinds


@pytest.fixture
def model_copy(model_dir, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(model_dir, dst)
    return dst


@pytest.fixture(scope="session")
def reject_folder(tmp_path_factory) -> Path:
    """Twelve OOD blobs, laid out like a scan --move-to folder (manifest, lock, a broken file)."""
    root = tmp_path_factory.mktemp("rejects")
    rng = np.random.default_rng(5)
    for i in range(12):
        write_png(root / "sub" / f"blob_{i:02d}.png", ood_image(rng))
    (root / "imgclean-manifest.jsonl").write_text('{"x": 1}\n')
    (root / ".imgclean.lock").write_text("")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


@pytest.fixture(scope="session")
def model_with_head(model_dir, reject_folder, tmp_path_factory) -> Path:
    """model_dir plus a supervised head trained on reject_folder (do not modify)."""
    from imgclean.store.artifact import load_model, save_model
    from imgclean.pipeline.fit.headfit import fit_head

    bundle = load_model(model_dir)
    fit_head(bundle, reject_folder)
    return save_model(bundle, tmp_path_factory.mktemp("models") / "with_head")
@pytest.fixture(autouse=True)
def _private_scan_cache(tmp_path_factory, monkeypatch):
    """Scans cache results under $XDG_CACHE_HOME: give every test its own, never ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture(autouse=True)
def _restore_logging():
    """In-process CLI calls point the root logger at the stream CliRunner captured, which is
    closed afterwards: put the logging set-up back, or a later test's log lines hit a closed file."""
    import logging
    import warnings

    root, ours = logging.getLogger(), logging.getLogger("imgclean")
    saved = (root.handlers[:], root.level, ours.level, warnings.formatwarning)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    ours.setLevel(saved[2])
    warnings.formatwarning = saved[3]
    logging.captureWarnings(False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small MLPs train several times faster on one thread when the cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Wide enough that no message or path is ever wrapped, whatever the test's temporary path.
RENDER_WIDTH = 4000


@pytest.fixture(autouse=True)
def _fixed_terminal(monkeypatch):
    """Render as into a wide, plain pipe, whatever the terminal running the tests.

    Typer draws usage errors in a box wrapped at the terminal width (rich reads $COLUMNS on
    every render; typer reads $TERMINAL_WIDTH and the colour variables once, at import), so a
    long tmp path or COLUMNS=60 would split the words a test looks for. Subprocesses inherit
    the variables.
    """
    monkeypatch.setenv("COLUMNS", str(RENDER_WIDTH))
    monkeypatch.setenv("TERMINAL_WIDTH", str(RENDER_WIDTH))
    for name in ("FORCE_COLOR", "PY_COLORS", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    try:
        from typer import rich_utils
    except ImportError:  # typer without rich: click's plain formatter reads $COLUMNS
        return
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", RENDER_WIDTH, raising=False)
    monkeypatch.setattr(rich_utils, "FORCE_TERMINAL", False, raising=False)


def flat(text: str) -> str:
    """Text with whitespace and box-drawing characters removed, for width-proof comparisons."""
    return "".join(ch for ch in text if not ch.isspace() and not "\u2500" <= ch <= "\u257f")
