"""Turning class folders into training data: the image geometry, and one pass over every image.

Shared by `fit` and `fit-head` (kept apart from both so neither imports the other).

`list_training_folder` reads the class folders and names the image files left beside them (they
belong to no class and are not used). `read_training_set` is fit's one pass over the files: each file's status (a file that cannot be
decoded is skipped and reported), the per-channel statistics (exact histograms, no float copy),
and the decoded images kept in one preallocated uint8 array when all of them fit the cache
budget; otherwise they are dropped as soon as counted and training streams them
(nn.datasets.StreamedImages, decoded again per batch by DataLoader workers with the same
decode_one). `decode_classes` is that pass with an unlimited budget (the arrays, as before).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ... import config as cfg
from ... import data
from ...errors import ImgcleanError
from ..decode import Decoder, DecodeSettings, decode_one

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
PROBE_IMAGES_PER_CLASS = 20
PROGRESS_EVERY = 256  # decode progress is reported after each batch of this many files, and at the end

# progress(stage, done, total, info): stages "decode", "batch", "epoch", "embed". The one progress
# type of fit and fit-head (pipeline.fit and pipeline.headfit take it from here).
ProgressCallback = Callable[[str, int, int, dict], None]


class FitError(ImgcleanError):
    """The training data cannot produce a model (message names the class or setting to fix)."""


class TrainingFolderError(FitError):
    """The folder given is not a training folder: missing, not a folder, or without class
    sub-folders (an empty folder). The CLI treats all of these as usage errors (exit 2). What is
    wrong inside a class (no image files, or none readable) is a FitError (exit 1)."""


@dataclass
class TrainingFolder:
    """A training folder's classes (sorted), each class's image files, and the image files at its
    top level, beside the class folders (`stray`: names, sorted; they are not used)."""

    root: Path
    class_names: list[str]
    class_files: list[list[data.FileEntry]]
    stray: list[str] = field(default_factory=list)

    def stray_warning(self) -> str | None:
        return stray_warning(self.root, self.stray)


def stray_warning(root: Path, stray: list[str]) -> str | None:
    """One line naming the unused top-level images (count and an example), or None for none."""
    if not stray:
        return None
    return (f"{len(stray)} image file(s) at the top of {os.fsdecode(root)} (e.g. {stray[0]!r}) are in no class "
            "folder and are not used; move each into the folder of its class")


def list_training_folder(root: Path) -> TrainingFolder:
    """The class folders of `root` and their image files; TrainingFolderError when it has none,
    FitError when a class folder has no image file."""
    root = Path(root)
    try:
        names, files = data.list_image_folder(root)
    except ValueError as exc:
        raise TrainingFolderError(str(exc)) from None
    empty = [n for n, f in zip(names, files, strict=True) if not f]
    if empty:
        raise FitError(f"class {', '.join(repr(n) for n in empty)} has no image files; add images or remove the folder")
    return TrainingFolder(root, names, files, stray_images(root))


def stray_images(root: Path) -> list[str]:
    """Names of the (non-hidden) image files directly in `root`, sorted; symlinks are not followed."""
    out = []
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if data.is_hidden(entry.name) or not data.has_image_extension(entry.name):
                    continue
                try:
                    if entry.is_file(follow_symlinks=False):
                        out.append(os.fsdecode(entry.name))
                except OSError:
                    continue
    except OSError:
        return []
    return sorted(out)


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


@dataclass
class TrainingSet:
    """What fit's one pass found: `images` is a uint8 array (cached) or StreamedImages."""

    images: object
    labels: np.ndarray
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    mean: list[float] | None = None
    std: list[float] | None = None
    cached: bool = True


def read_training_set(
    class_names: list[str],
    class_files: list[list[data.FileEntry]],
    settings: DecodeSettings,
    progress: ProgressCallback | None = None,
    cache_bytes: int | None = None,
    statistics: bool = True,
) -> TrainingSet:
    """Decode every training image once: statuses, channel statistics, and the images kept in
    memory when all of them fit `cache_bytes` (None: nn.datasets.cache_budget())."""
    from ...nn.datasets import ChannelHistogram, StreamedImages, cache_budget

    entries = [entry for files in class_files for entry in files]
    label_of = [label for label, files in enumerate(class_files) for _ in files]
    shape = (settings.size, settings.size, settings.channels)
    budget = cache_budget(cache_bytes)
    cache = np.empty((len(entries), *shape), dtype=np.uint8) if len(entries) * int(np.prod(shape)) <= budget else None
    hist = ChannelHistogram(settings.channels) if statistics else None
    good, labels, skipped = [], [], []
    done = 0
    with Decoder(settings) as decoder:
        for batch, decoded in decoder.batches(entries, PROGRESS_EVERY):
            for i, (entry, d) in enumerate(zip(batch, decoded, strict=True), start=done):
                if d.ok:
                    if cache is not None:
                        cache[len(good)] = d.array
                    if hist is not None:
                        hist.add(d.array)
                    good.append(entry)
                    labels.append(label_of[i])
                else:
                    skipped.append((os.fsdecode(entry.path), d.status, d.message))
            done += len(batch)
            if progress is not None:
                progress("decode", done, len(entries), {})
    labels = np.array(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [class_names[j] for j in range(len(class_names)) if counts[j] == 0]
    if empty:
        raise FitError(
            f"class {', '.join(repr(n) for n in empty)} has no usable image "
            "(empty folder, or every file unreadable); add images or remove the folder"
        )
    if cache is not None:
        images = cache[: len(good)]
    else:
        images = StreamedImages(good, functools.partial(decode_one, settings=settings), shape)
    mean, std = hist.mean_std() if hist is not None else (None, None)
    return TrainingSet(images, labels, skipped, mean, std, cached=cache is not None)


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
    found = read_training_set(class_names, class_files, DecodeSettings(size, channels, interpolation, crop_pct),
                              progress, cache_bytes=1 << 62, statistics=False)
    return found.images, found.labels, found.skipped
