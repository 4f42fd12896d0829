"""Out-of-sample predictions by K-fold cross-fitting, and confident learning on them.

A model never scores an image it was trained on, or it would have memorised the very errors an
audit looks for. The images (decoded once, by trainset.decode_classes) are split into K
stratified folds; for each fold a fresh classifier is trained on the other folds with `fit`'s
recipe (nn.models.build_model, nn.training.train_classifier: cross-entropy + center loss), the
chosen unsupervised detector (detectors.registry) is fitted on those folds' deep features and
calibrated on their held-out validation split as `fit` does, and the held-out fold gets its class
probabilities and its outlier score. Exact-duplicate groups are kept inside one fold, so no
image is scored by a model that trained on its own copy.

Confident learning (Northcutt, Jiang & Chuang, JAIR 2021): per-class thresholds t_j = the mean
out-of-sample probability of class j over the images labelled j; an image labelled i counts
for class j when p_j >= t_j, and is a label issue when the most probable such class is not i
(an off-diagonal entry of the confident joint).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import numpy as np

from ... import config as cfg
from ...errors import ImgcleanError

log = logging.getLogger(__name__)


class AuditError(ImgcleanError, ValueError):
    """The folder cannot be audited as asked (the message says what to change)."""


class AuditInterrupted(Exception):
    """should_stop() said stop (SIGINT/SIGTERM): raised between epochs; nothing was moved."""


@dataclass
class Recipe:
    """How each fold's classifier is built and trained: fit's settings, from a model or defaults."""

    arch: str
    input_size: int
    channels: int
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    mean: list[float] | None = None  # None: measured on the images (lenet without a model)
    std: list[float] | None = None
    pretrained: bool = False
    weights: str | None = None
    train: cfg.TrainSettings = field(default_factory=cfg.TrainSettings)
    source: str = "fit defaults"  # or the model directory the settings came from


def recipe_from_model(model_config: dict, source: str) -> Recipe:
    """The recipe a saved model was trained with (its config.json)."""
    known = {f.name for f in fields(cfg.TrainSettings)}
    training = {k: v for k, v in (model_config.get("training") or {}).items() if k in known}
    opts = cfg.decode_options(model_config)
    return Recipe(
        arch=str(model_config["arch"]), input_size=int(model_config["input_size"]),
        channels=int(model_config["channels"]), interpolation=opts["interpolation"], crop_pct=opts["crop_pct"],
        mean=[float(v) for v in model_config["mean"]] if model_config.get("mean") else None,
        std=[float(v) for v in model_config["std"]] if model_config.get("std") else None,
        pretrained=bool(model_config.get("pretrained")), weights=model_config.get("weights") or None,
        train=cfg.TrainSettings(**training), source=source,
    )


def default_recipe(class_files: list, config: cfg.FitConfig | None = None) -> Recipe:
    """fit's choices for this folder: geometry from the images, architecture and preprocessing
    as `fit` resolves them."""
    from ..fit.fit_model import check_preprocessing, resolve_architecture, resolve_preprocessing
    from ..fit.trainset import FitError, detect_geometry

    config = config or cfg.FitConfig()
    size, channels = detect_geometry(class_files)
    try:
        arch, size, channels = resolve_architecture(config, size, channels)
        check_preprocessing(config, channels)
    except FitError as exc:
        raise AuditError(str(exc)) from None
    model = None
    if arch != cfg.LENET:
        from ...nn.models import build_model

        model = build_model(arch, 2, channels, size, config.pretrained, config.weights)
    prep = resolve_preprocessing(config, arch, channels, size, model)
    return Recipe(arch=arch, input_size=int(prep["input_size"]), channels=channels,
                  interpolation=prep["interpolation"], crop_pct=float(prep["crop_pct"]),
                  mean=prep["mean"], std=prep["std"], pretrained=config.pretrained,
                  weights=str(config.weights) if config.weights else None, train=config.train)


def assign_folds(labels: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold number per image: stratified by label, each group (exact duplicates) in one fold.

    Groups are dealt round-robin within their first member's class over a shuffled order. When
    keeping groups together would leave some fold's training part without a class, the images
    are dealt one by one instead (stratified, groups ignored).
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    folds = np.empty(n, dtype=np.int64)
    for attempt in ("groups", "images"):
        keys = groups if attempt == "groups" else np.arange(n)
        first: dict[int, int] = {}
        for i in range(n):
            first.setdefault(int(keys[i]), i)
        fold_of: dict[int, int] = {}
        for c in np.unique(labels):
            reps = [g for g, i in first.items() if labels[i] == c]
            offset = int(rng.integers(k))
            for pos, g in enumerate(rng.permutation(len(reps))):
                fold_of[reps[g]] = (pos + offset) % k
        folds = np.array([fold_of[int(keys[i])] for i in range(n)], dtype=np.int64)
        if all(np.isin(np.unique(labels), labels[folds != f]).all() for f in range(k)):
            return folds
    return folds


def check_folds(class_names: list[str], labels: np.ndarray, k: int) -> int:
    """The number of folds to use: `k`, or fewer when a class has fewer images than that
    (a warning), never below 2; an AuditError names a class with a single image."""
    if k < 2:
        raise AuditError(f"--folds must be at least 2, got {k}")
    counts = np.bincount(labels, minlength=len(class_names))
    if len(class_names) < 2:
        raise AuditError("the audit needs at least two classes (one sub-folder per class) to judge labels")
    lone = [class_names[j] for j in range(len(class_names)) if counts[j] < 2]
    if lone:
        raise AuditError(
            f"class {', '.join(repr(n) for n in lone)} has fewer than 2 usable images; cross-fitting holds "
            "each image out of its model, so every class needs at least 2 (add images or remove the folder)"
        )
    smallest = int(counts.min())
    if smallest < k:
        j = int(counts.argmin())
        log.warning("class %r has only %d images: using %d folds instead of %d", class_names[j], smallest, smallest, k)
        return smallest
    return k


@dataclass
class OutOfSample:
    """Per image: out-of-sample class probabilities, logits and outlier score; features of one
    model for every image (for the near-duplicate search); per-fold training statistics."""

    probs: np.ndarray
    logits: np.ndarray
    outlier: np.ndarray
    features: np.ndarray
    folds: np.ndarray
    fold_stats: list[dict] = field(default_factory=list)


def fit_detector(method: str, context, fit_idx: np.ndarray, val_idx: np.ndarray, trim: float = 0.0):
    """The registered unsupervised detector `method`, fitted on the fit_idx rows of `context` (a
    detectors.base.FitContext: outputs, settings, the classifier's last layer) and calibrated on
    its val_idx rows as fit does, through the detector contract (Detector.fit, Detector.calibrate:
    split conformal, detectors/calibration.py).

    `trim` > 0: fitted twice, the second time without that share of the fit_idx images that
    scored highest the first time. A training folder holds its own foreign pictures; fitted on
    them, the class statistics and the thresholds widen until they accept their like (on the
    planted MNIST folder, trim 0.02 took the foreign pictures named from 37% to 90%).
    """
    labels = np.asarray(context.labels)
    if trim > 0 and len(fit_idx) > 1:
        det = fit_detector(method, context, fit_idx, val_idx)
        fitted = context.rows(fit_idx)
        own = det.score(features=fitted.features, logits=fitted.logits)
        kept = fit_idx[own <= np.quantile(own, 1.0 - trim)]
        if len(np.unique(labels[kept])) == len(np.unique(labels[fit_idx])):
            fit_idx = kept
    return _fit_once(method, context, fit_idx, val_idx)


def _fit_once(method: str, context, fit_idx: np.ndarray, val_idx: np.ndarray):
    import warnings

    from ...detectors import registry

    cls = registry.detector_class(method)
    fitted = context.rows(fit_idx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few images per class: shrinkage, said once by fit, not per fold
        det = cls.for_context(fitted).fit(fitted)
    if len(val_idx):
        held = context.rows(val_idx)
        det.calibrate(features=held.features, logits=held.logits)
    return det


def fold_context(model, feats: np.ndarray, logits: np.ndarray, labels: np.ndarray, num_classes: int,
                 percentile: float):
    """A fold's FitContext: its training images' outputs, the percentile and its classifier's last layer."""
    from ...detectors.base import FitContext
    from ...nn.models import last_layer

    weight, bias, given = last_layer(model)
    return FitContext(features=feats, logits=logits, labels=labels, num_classes=num_classes, percentile=percentile,
                      classifier_weight=weight, classifier_bias=bias, classifier_input=given)


def cross_fit(images: np.ndarray, labels: np.ndarray, num_classes: int, recipe: Recipe, folds: np.ndarray,
              method: str, percentile: float, device, progress: Callable | None = None, trim: float = 0.0,
              should_stop: Callable[[], bool] = lambda: False) -> OutOfSample:
    """Train one classifier per fold and score its held-out images (see the module docstring)."""
    from ...nn.models import build_model
    from ...nn.runtime import predict_arrays
    from ...nn.training import channel_stats, seed_everything, train_classifier

    k = int(folds.max()) + 1
    n = len(images)
    mean, std = recipe.mean, recipe.std
    if mean is None or std is None:
        measured = channel_stats(images)
        mean, std = mean or measured[0], std or measured[1]
    out = OutOfSample(np.zeros((n, num_classes), np.float32), np.zeros((n, num_classes), np.float32),
                      np.zeros(n, np.float64), np.zeros((0, 0), np.float32), folds)
    for f in range(k):
        if should_stop():
            raise AuditInterrupted
        train_idx, held_idx = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        settings = replace(recipe.train, seed=recipe.train.seed + f)
        seed_everything(settings.seed)
        try:
            model = build_model(recipe.arch, num_classes, recipe.channels, recipe.input_size, recipe.pretrained,
                                recipe.weights)
        except ValueError as exc:
            raise AuditError(str(exc)) from None

        def on_epoch(stats, f=f):
            if progress is not None:
                progress("fold", f, k, {"epoch": stats.epoch, "epochs": stats.epochs, "loss": stats.loss})
            if should_stop():
                raise AuditInterrupted

        if progress is not None:
            progress("fold", f, k, {"epoch": 0, "epochs": settings.epochs})
        result = train_classifier(model, images[train_idx], labels[train_idx], mean, std, settings, device,
                                  None, on_epoch)
        tr_logits, tr_feats = predict_arrays(model, images[train_idx], mean, std, device)
        ho_logits, ho_feats = predict_arrays(model, images[held_idx], mean, std, device)
        fit_idx = result.train_indices if len(result.val_indices) else np.arange(len(train_idx))
        context = fold_context(model, tr_feats, tr_logits, labels[train_idx], num_classes, percentile)
        det = fit_detector(method, context, fit_idx, result.val_indices, trim)
        out.outlier[held_idx] = det.score(features=ho_feats, logits=ho_logits)
        out.logits[held_idx] = ho_logits
        out.probs[held_idx] = softmax(ho_logits)
        if f == 0:  # one model's features for every image: the near-duplicate search compares them
            out.features = np.zeros((n, ho_feats.shape[1]), np.float32)
            out.features[train_idx], out.features[held_idx] = tr_feats, ho_feats
        accuracy = float(np.mean(ho_logits.argmax(1) == labels[held_idx])) if len(held_idx) else None
        out.fold_stats.append({"fold": f, "train_images": int(len(train_idx)), "held_out_images": int(len(held_idx)),
                               "epochs": int(result.epochs), "held_out_accuracy": accuracy})
        if progress is not None:
            progress("fold", f + 1, k, {"epoch": result.epochs, "epochs": result.epochs})
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass
class LabelFindings:
    issue: np.ndarray  # bool per image
    suggested: np.ndarray  # class index per image (the label itself when nothing is preferred)
    self_confidence: np.ndarray  # p(label)
    margin: np.ndarray  # p(suggested) - p(label)
    thresholds: np.ndarray  # t_j per class


def confident_learning(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> LabelFindings:
    """Label issues from out-of-sample probabilities (the module docstring states the rule)."""
    n = len(labels)
    rows = np.arange(n)
    thresholds = np.array([probs[labels == j, j].mean() if np.any(labels == j) else np.inf
                           for j in range(num_classes)])
    above = probs >= thresholds[None, :]
    counted = np.where(above, probs, -1.0).argmax(axis=1)
    suggested = np.where(above.any(axis=1), counted, probs.argmax(axis=1))
    issue = above.any(axis=1) & (counted != labels)
    self_conf = probs[rows, labels]
    margin = probs[rows, suggested] - self_conf
    suggested = np.where(issue, suggested, np.where(margin > 0, suggested, labels))
    return LabelFindings(issue, suggested, self_conf, probs[rows, suggested] - self_conf, thresholds)
