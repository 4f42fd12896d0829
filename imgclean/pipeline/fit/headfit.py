"""Training the supervised reject head on frozen deep features.

Used by `fit --reject-dir` (right after the classifier) and by `fit-head` (on an existing model,
without touching the backbone). Rejects are label 0, training images label 1.

The reject folder may be a `scan --move-to` quarantine fed back as is: it is walked recursively,
hidden files (the lock) are ignored and the manifest (.jsonl) is not an image; files that cannot
be decoded (which a quarantine often holds) are counted and skipped.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ... import data
from ...store.artifact import ModelBundle
from ...config import decode_options
from ...detectors import RejectHead
from ..decode import DecodeSettings, decode_many
from .trainset import FitError, decode_classes
from ...errors import ImgcleanError


class HeadError(ImgcleanError):
    """The head cannot be trained with what was given (message says what to fix)."""


def decode_folder(
    root: Path, size: int, channels: int, interpolation: str = "bilinear", crop_pct: float = 1.0
) -> tuple[np.ndarray, list[tuple[str, str, str]]]:
    """Every decodable image below `root` (recursively): (uint8 images, skipped (path, status, message)).

    `interpolation` and `crop_pct` are the model's (data.decode_image).
    """
    root = Path(root)
    if not root.is_dir():
        raise HeadError(f"reject folder {root} does not exist or is not a folder")
    entries = list(data.walk_images(root))
    skipped = [(os.fsdecode(e.path), data.SKIPPED, e.skip_reason) for e in entries if e.skip_reason]
    entries = [e for e in entries if not e.skip_reason]

    images = []
    decoded = decode_many(entries, DecodeSettings(size, channels, interpolation, crop_pct))
    for entry, d in zip(entries, decoded, strict=True):
        if d.ok:
            images.append(d.array)
        else:
            skipped.append((os.fsdecode(entry.path), d.status, d.message))
    if not images:
        raise HeadError(
            f"{root} has no readable images to use as rejects"
            + (f" ({len(skipped)} file(s) could not be used)" if skipped else "")
        )
    return np.stack(images), skipped


def train_head(normal_feats: np.ndarray, reject_feats: np.ndarray, head: RejectHead | None = None) -> tuple[RejectHead, dict]:
    """Fit a head (normal = 1, rejects = 0) and return it with its training metrics."""
    head = head or RejectHead()
    x = np.concatenate([normal_feats, reject_feats])
    y = np.concatenate([np.ones(len(normal_feats)), np.zeros(len(reject_feats))])
    head.fit(x, y)
    rejected = head.predict(x)
    metrics = {
        "normal_images": int(len(normal_feats)),
        "reject_images": int(len(reject_feats)),
        "imbalance": "BCE pos_weight = rejects / normal",
        "pos_weight": float(head.pos_weight_),
        "steps": int(head.steps_),
        "final_loss": float(head.final_loss_),
        # On the training examples themselves (optimistic): share of each kind classified right.
        "train_normal_accepted": float(np.mean(~rejected[y == 1])),
        "train_rejects_rejected": float(np.mean(rejected[y == 0])),
    }
    return head, metrics


def embed(bundle: ModelBundle, images: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Deep features of uint8 images through the inference runtime (its batch size and precision)."""
    from ...nn.runtime import predict_arrays

    cfg = bundle.config
    _, feats = predict_arrays(bundle.model, images, cfg["mean"], cfg["std"], device)
    return feats


def head_config(reject_dir: Path, metrics: dict, skipped: int) -> dict:
    return {
        "reject_dir": os.fsdecode(Path(reject_dir).absolute()),
        "rejects_skipped": skipped,
        "metrics": metrics,
        "score": "(1 - sigmoid) / (1 - threshold); higher = more out-of-distribution; > 1 = rejected",
    }


def fit_head(
    bundle: ModelBundle,
    reject_dir: Path,
    train_dir: Path | None = None,
    device: str = "cpu",
    head: RejectHead | None = None,
) -> tuple[RejectHead, dict]:
    """Add (or replace) the head of a loaded model; the backbone and detector are untouched.

    The training images (class 1) come from `train_dir`, by default the folder recorded in the
    model's config.json. Sets bundle.head and bundle.config["head"]; the caller saves.
    """
    recorded = (bundle.config.get("data") or {}).get("train_dir")
    source = Path(train_dir) if train_dir is not None else (Path(recorded) if recorded else None)
    if source is None:
        raise HeadError("the model does not record its training folder; give it with --train-dir")
    if not source.is_dir():
        raise HeadError(
            f"training folder {source} (needed for the normal examples) is gone; give its new place with --train-dir"
        )
    try:
        names, files = data.list_image_folder(source)
    except ValueError as exc:
        raise HeadError(str(exc)) from None
    if names != bundle.class_names:
        raise HeadError(
            f"{source} has classes {names}, the model has {bundle.class_names}; give the model's training folder with --train-dir"
        )
    opts = decode_options(bundle.config)
    rejects, skipped = decode_folder(reject_dir, bundle.input_size, bundle.channels, **opts)
    try:
        normal, _, _ = decode_classes(names, files, bundle.input_size, bundle.channels, **opts)
    except FitError as exc:
        raise HeadError(str(exc)) from None
    head, metrics = train_head(embed(bundle, normal, device), embed(bundle, rejects, device), head)
    bundle.head = head
    bundle.config = {**bundle.config, "head": head_config(reject_dir, metrics, len(skipped))}
    return head, metrics
