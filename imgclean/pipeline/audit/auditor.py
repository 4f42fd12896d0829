"""`audit`: check the training folder itself for wrong labels, foreign pictures, duplicates and
unreadable files, and optionally move what it flags through the quarantine.

walk (every class folder; links and other unopenable files get status skipped) -> decode once
(trainset.decode_classes, at the recipe's size) -> exact duplicates (pipeline.duplicates: bytes,
then pixels) -> K-fold cross-fitting (pipeline.crossfit: out-of-sample probabilities and outlier
scores, duplicate groups kept in one fold) -> near duplicates (one model's deep features, chunked)
-> confident learning -> one AuditRecord per file (reports.audit_records, with the precedence
stated there). :func:`apply_audit` then moves flagged files exactly as a scan does
(pipeline/audit/apply_findings.py, through pipeline.apply.applier.Applier: each move re-checks the file against
what the walk saw, journaled in the quarantine, undone by `imgclean restore`); of duplicates only
the copies move, never the original: the oldest file of each group (pipeline.audit.duplicates.sort_key).

The recipe (architecture, input size, preprocessing, epochs, lambda...) comes from a model
directory when one is given (`audit -m`), else from fit's defaults for the folder. The model
itself never scores the folder's images for labels or outliers (it trained on them); its deep
features are used only to compare images with each other for near duplicates.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ... import data
from ...reports.audit_records import DUPLICATE, ISSUES, LABEL_ISSUE, OK, OUTLIER, UNREADABLE, AuditRecord
from .apply_findings import MOVABLE, apply_audit  # noqa: F401  (public here: audit --move-to)
from .crossfit import (
    AuditError, AuditInterrupted, Recipe, assign_folds, check_folds, confident_learning, cross_fit,
    default_recipe, recipe_from_model,
)
from .duplicates import BYTES, NEAR, PIXELS, Groups, exact_duplicates, near_duplicates, sort_key

log = logging.getLogger(__name__)

DEFAULT_FOLDS = 4
DEFAULT_PERCENTILE = 99.5  # the audit flags the far tail only: a training folder is mostly clean
DEFAULT_TRIM = 0.02
# Epochs per fold without a model to copy: on the planted MNIST folder (docs/audit-results.md)
# 10 and 15 epochs (fit's default) named 78% of the wrong labels, 20 named 85%.
DEFAULT_EPOCHS = 20
DEFAULT_NEAR_THRESHOLD = 0.998


@dataclass
class AuditOptions:
    folds: int = DEFAULT_FOLDS
    method: str = "mahalanobis"  # a registered unsupervised detector (detectors/registry.py)
    percentile: float = DEFAULT_PERCENTILE
    trim: float = DEFAULT_TRIM  # share of each fold's training images left out of the detector's second fit
    near_threshold: float | None = DEFAULT_NEAR_THRESHOLD  # None: no near-duplicate search
    epochs: int | None = None  # None: the model's, or without a model DEFAULT_EPOCHS
    min_steps: int | None = None  # None: the recipe's
    batch_size: int | None = None  # None: the recipe's
    seed: int = 0


@dataclass
class AuditSummary:
    root: str
    settings_from: str = ""
    files: int = 0
    images: int = 0  # decoded and audited
    counts: dict[str, int] = field(default_factory=lambda: {i: 0 for i in (OK, *ISSUES)})
    statuses: dict[str, int] = field(default_factory=dict)  # decode status -> files
    duplicate_kinds: dict[str, int] = field(default_factory=lambda: {BYTES: 0, PIXELS: 0, NEAR: 0})
    folds: int = 0
    method: str = ""
    held_out_accuracy: float | None = None
    class_thresholds: dict[str, float] = field(default_factory=dict)
    fold_stats: list[dict] = field(default_factory=list)
    recipe: dict = field(default_factory=dict)
    moved: int = 0
    would_move: int = 0
    move_errors: int = 0
    changed: int = 0
    kept: int = 0  # copies left in place because their original moved too or was gone (audit_apply.py)
    accepted: int = 0  # flagged files a person accepted, left in place
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def issues(self) -> int:
        return sum(self.counts[i] for i in ISSUES)

    def to_dict(self) -> dict:
        c = self.counts
        return {
            "images": self.files, "decoded": self.images, "ok": c[OK], "label_issues": c[LABEL_ISSUE],
            "outliers": c[OUTLIER], "duplicates": c[DUPLICATE], "unreadable": c[UNREADABLE], "issues": self.issues,
            "statuses": self.statuses, "duplicate_kinds": self.duplicate_kinds, "folds": self.folds,
            "method": self.method, "held_out_accuracy": self.held_out_accuracy,
            "class_thresholds": self.class_thresholds, "fold_stats": self.fold_stats, "recipe": self.recipe,
            "settings_from": self.settings_from, "moved": self.moved, "would_move": self.would_move,
            "move_errors": self.move_errors, "changed": self.changed, "kept": self.kept, "accepted": self.accepted,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 2), "root": self.root,
        }


@dataclass
class AuditResult:
    records: list[AuditRecord]
    summary: AuditSummary
    class_names: list[str]


def _walk_classes(root: Path) -> tuple[list[str], list[list[data.FileEntry]], list[tuple[int, data.FileEntry]]]:
    """Class names, each class's openable files, and (class, entry) of the files a walk skips."""
    try:
        class_names, _ = data.list_image_folder(root)
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    from ..fit.trainset import stray_images, stray_warning

    if line := stray_warning(root, stray_images(root)):  # images beside the class folders: never audited
        log.warning("%s", line)
    class_files, skipped = [], []
    for j, name in enumerate(class_names):
        files = []
        for entry in data.walk_images(root / name):
            (skipped.append((j, entry)) if entry.skip_reason else files.append(entry))
        class_files.append(files)
    empty = [n for n, files in zip(class_names, class_files, strict=True) if not files]
    if empty:
        raise AuditError(f"class {', '.join(repr(n) for n in empty)} has no image files; add images or remove the folder")
    return class_names, class_files, skipped


def resolve_recipe(class_files, options: AuditOptions, model_config: dict | None, model_source: str) -> Recipe:
    recipe = recipe_from_model(model_config, model_source) if model_config else default_recipe(class_files)
    train = recipe.train
    if options.epochs is not None or not model_config:
        train = replace(train, epochs=options.epochs or DEFAULT_EPOCHS)
    if options.min_steps is not None:
        train = replace(train, min_steps=options.min_steps)
    if options.batch_size is not None:
        train = replace(train, batch_size=options.batch_size)
    return replace(recipe, train=replace(train, seed=train.seed + options.seed))


def run_audit(train_dir: Path, options: AuditOptions | None = None, *, bundle=None, device: str = "cpu",
              progress: Callable[[str, int, int, dict], None] | None = None,
              should_stop: Callable[[], bool] = lambda: False) -> AuditResult:
    """Audit the class folders of `train_dir` (see the module docstring); moves nothing.

    `bundle`: a loaded model (store.artifact.ModelBundle) whose recipe the folds follow and whose
    features compare images for near duplicates; None: fit's defaults and the first fold's model.
    Raises AuditError (or trainset.FitError) naming what to fix; AuditInterrupted when
    `should_stop()` turns true during training.
    """
    from ..scan.scanner import relative_name
    from ..fit.trainset import decode_classes

    options = options or AuditOptions()
    started = time.perf_counter()
    root = Path(os.path.realpath(train_dir))
    class_names, class_files, walk_skipped = _walk_classes(root)
    source = os.fsdecode(bundle.path) if bundle is not None and getattr(bundle, "path", None) else "model"
    recipe = resolve_recipe(class_files, options, bundle.config if bundle is not None else None, source)
    images, labels, decode_skipped = decode_classes(
        class_names, class_files, recipe.input_size, recipe.channels, progress,
        interpolation=recipe.interpolation, crop_pct=recipe.crop_pct,
    )
    failed = {p: (status, message) for p, status, message in decode_skipped}
    entries = [e for files in class_files for e in files]
    good = [e for e in entries if os.fsdecode(e.path) not in failed]
    assert len(good) == len(images), "decode_classes kept images in walk order"
    rel = [relative_name(e.path, root) for e in good]
    keys = [sort_key(p, e.mtime_ns) for p, e in zip(rel, good, strict=True)]  # the oldest copy is the original

    groups = Groups(len(good))
    exact_duplicates([e.path for e in good], [e.size for e in good], images, groups,
                     (lambda d, t: progress("hash", d, t, {})) if progress else None)
    dups = groups.duplicates(keys)
    k = check_folds(class_names, labels, options.folds)
    folds = assign_folds(labels, k, options.seed, np.array([groups.find(i) for i in range(len(good))]))
    oos = cross_fit(images, labels, len(class_names), recipe, folds, options.method, options.percentile, device,
                    progress, options.trim, should_stop)
    if options.near_threshold is not None:
        dups = {**_near_copies(images, oos.features, bundle, device, options.near_threshold, keys, dups, progress), **dups}
    found = confident_learning(oos.probs, labels, len(class_names))

    summary = AuditSummary(root=os.fsdecode(root), settings_from=recipe.source, folds=k, method=options.method)
    summary.held_out_accuracy = float(np.mean(oos.probs.argmax(1) == labels)) if len(labels) else None
    summary.class_thresholds = {n: float(t) for n, t in zip(class_names, found.thresholds, strict=True)}
    summary.fold_stats = oos.fold_stats
    summary.recipe = {k_: v for k_, v in asdict(recipe).items() if k_ != "source"}
    records: list[AuditRecord] = []
    index = {id(e): i for i, e in enumerate(good)}
    by_class_skipped: dict[int, list[data.FileEntry]] = {}
    for j, e in walk_skipped:
        by_class_skipped.setdefault(j, []).append(e)
    for j, files in enumerate(class_files):
        for e in sorted([*files, *by_class_skipped.get(j, [])], key=lambda e: os.fsencode(e.path)):
            rec = AuditRecord(relative_name(e.path, root), OK, label=class_names[j], size=e.size,
                              mtime_ns=e.mtime_ns, dev=e.dev, ino=e.ino)
            i = index.get(id(e))
            if e.skip_reason:
                rec.issue, rec.status, rec.message = UNREADABLE, data.SKIPPED, e.skip_reason
            elif i is None:
                rec.issue, (rec.status, rec.message) = UNREADABLE, failed[os.fsdecode(e.path)]
            else:
                _judge(rec, i, found, oos.outlier[i], dups.get(i), rel, class_names, options.method)
                summary.images += 1
                if rec.issue == DUPLICATE:
                    summary.duplicate_kinds[dups[i].kind] += 1
            summary.files += 1
            summary.counts[rec.issue] += 1
            summary.statuses[rec.status] = summary.statuses.get(rec.status, 0) + 1
            records.append(rec)
    summary.seconds = time.perf_counter() - started
    return AuditResult(records, summary, class_names)


def _near_copies(images, features, bundle, device: str, threshold: float, keys: list, exact: dict, progress) -> dict:
    """Near duplicates by deep features (the model's when given, else the folds'), among the
    images that are not exact copies already."""
    from ...nn.runtime import predict_arrays

    if bundle is not None:
        cfg = bundle.config
        _, features = predict_arrays(bundle.model, images, cfg["mean"], cfg["std"], device)
    near = Groups(len(images))
    not_copies = np.array([i not in exact for i in range(len(images))], dtype=bool)
    near_duplicates(features, threshold, near, keys, arrays=images, candidates=not_copies,
                    progress=(lambda d, t: progress("near", d, t, {})) if progress else None)
    return near.duplicates(keys)


def _judge(rec: AuditRecord, i: int, found, outlier_score: float, dup, rel: list[str], names: list[str],
           method: str) -> None:
    """Fill one decoded file's findings; the strongest is its issue, the others go in the message."""
    label_p, margin = float(found.self_confidence[i]), float(found.margin[i])
    suggested = names[int(found.suggested[i])]
    rec.label_confidence, rec.outlier_score = label_p, float(outlier_score)
    rec.suggested = suggested if suggested != rec.label else None
    findings = []  # (issue, score, message), strongest first (reports.audit_records.PRECEDENCE)
    if dup is not None:
        what = {BYTES: "same bytes as", PIXELS: "same pixels as", NEAR: "near-duplicate of"}[dup.kind]
        extra = f" (cosine {dup.similarity:.4f})" if dup.kind == NEAR else ""
        findings.append((DUPLICATE, dup.similarity, f"{what} {rel[dup.original]}{extra}"))
        rec.duplicate_of = rel[dup.original]
    if outlier_score > 1.0:
        findings.append((OUTLIER, float(outlier_score),
                         f"out-of-distribution for every class ({method} score {outlier_score:.2f} > 1)"))
    if found.issue[i]:
        p_s = label_p + margin
        findings.append((LABEL_ISSUE, margin,
                         f"filed under {rec.label!r} but looks like {suggested!r} (p {p_s:.2f} vs {label_p:.2f})"))
    if not findings:
        rec.score = float(outlier_score)
        return
    rec.issue, rec.score, rec.message = findings[0]
    if len(findings) > 1:
        rec.message += "; also " + "; ".join(m for _, _, m in findings[1:])
