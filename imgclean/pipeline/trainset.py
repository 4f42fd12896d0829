"""Turning class folders into training arrays: the image geometry, and each image decoded once.

Shared by `fit` and `fit-head` (kept apart from both so neither imports the other).
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from .. import config as cfg
from .. import data
from ..errors import ImgcleanError
from .decode import Decoder, DecodeSettings

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
PROBE_IMAGES_PER_CLASS = 20
PROGRESS_EVERY = 256  # decode progress is reported after each batch of this many files, and at the end

# progress(stage, done, total, info): stages "decode", "batch", "epoch", "embed". The one progress
# type of fit and fit-head (pipeline.fit and pipeline.headfit take it from here).
ProgressCallback = Callable[[str, int, int, dict], None]


class FitError(ImgcleanError):
    """The training data cannot produce a model (message names the class or setting to fix)."""


def detect_geometry(class_files: list[list[data.FileEntry]]) -> tuple[int, int]:
    """(typical image size, channels) from a sample of each class's images."""
    sizes, gray = [], True
    for files in class_files:
        for entry in files[:PROBE_IMAGES_PER_CLASS]:
            try:
                w, h, mode = data.probe_image(entry.path)
            except data.DecodeError:
                continue
            sizes.append(max(w, h))
            gray = gray and mode in GRAY_MODES
    if not sizes:
        return cfg.DEFAULT_TIMM_SIZE, 3
    return int(np.median(sizes)), 1 if gray else 3


def decode_classes(
    class_names: list[str],
    class_files: list[list[data.FileEntry]],
    size: int,
    channels: int,
    progress: ProgressCallback | None = None,
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
    """Decode every training image once: (uint8 images, labels, skipped files).

    `interpolation` and `crop_pct` are the model's (data.decode_image).
    """
    entries = [entry for files in class_files for entry in files]
    label_of = [label for label, files in enumerate(class_files) for _ in files]
    images, labels, skipped = [], [], []
    done = 0
    with Decoder(DecodeSettings(size, channels, interpolation, crop_pct)) as decoder:
        for batch, decoded in decoder.batches(entries, PROGRESS_EVERY):
            for i, (entry, d) in enumerate(zip(batch, decoded, strict=True), start=done):
                if d.ok:
                    images.append(d.array)
                    labels.append(label_of[i])
                else:
                    skipped.append((os.fsdecode(entry.path), d.status, d.message))
            done += len(batch)
            if progress is not None:
                progress("decode", done, len(entries), {})
    counts = np.bincount(np.array(labels, dtype=np.int64), minlength=len(class_names))
    empty = [class_names[j] for j in range(len(class_names)) if counts[j] == 0]
    if empty:
        raise FitError(
            f"class {', '.join(repr(n) for n in empty)} has no usable image "
            "(empty folder, or every file unreadable); add images or remove the folder"
        )
    return np.stack(images), np.array(labels, dtype=np.int64), skipped
