"""`fit` end to end: read the class folders, train, embed, fit and calibrate the detectors.

Every unsupervised detector of the registry (detectors/registry.py) is fitted here, on the
training split's deep features and logits, and calibrated on the held-out split (split conformal:
detectors/calibration.py); the supervised head only with a reject folder.

Returns a ModelBundle ready to save, and a FitReport for the summary table. Nothing is printed or
logged as a warning: what the user should hear (too few images for the calibration, unused files
beside the class folders, a weights file that only partly fits) is in FitReport.warnings and
the model's config.json (`fit_warnings`, `calibration`), for the CLI to print and the API to return.

Longer than 400 lines: fit_model's steps (build, train, embed, fit, the config it writes, the
report) are functions of their own, in the order fit_model calls them, beside it.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ... import config as cfg
from ... import data
from ...metrics import macro_f1
from ...store.artifact import ModelBundle
from ...detectors import registry
from ...detectors.base import FitContext
from ..decode import DecodeSettings
from .fitparts import calibrate_detectors, drop_lost, embed_distributed, gaussian_logits, untrained
from .trainset import (
    FitError, ProgressCallback, TrainingFolderError, decode_classes, detect_geometry, list_training_folder,
    read_training_set,
)

log = logging.getLogger(__name__)


@dataclass
class FitReport:
    class_names: list[str]
    images_per_class: list[int]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, status, message)
    arch: str = ""
    input_size: int = 0
    channels: int = 0
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    epochs_requested: int = 0
    epochs_trained: int = 0  # more than requested when --min-steps raised it
    steps_per_epoch: int = 0
    preprocessing: dict = field(default_factory=dict)  # input_size, interpolation, crop_pct, mean, std
    calibration: dict = field(default_factory=dict)  # fitparts.calibrate_detectors: the promised false-reject rate
    weights_mapping: dict | None = None  # how --weights was matched to the backbone (nn.weights.WeightsMapping)
    warnings: list[str] = field(default_factory=list)  # what the user should hear, one line each
    notes: list[str] = field(default_factory=list)  # what fit chose for the user (e.g. another timm model)

    @property
    def epochs_raised(self) -> bool:
        """--min-steps made the run train more epochs than asked for."""
        return self.epochs_trained > self.epochs_requested > 0


def resolve_architecture(config: cfg.FitConfig, detected_size: int, detected_channels: int) -> tuple[str, int | None, int]:
    """(arch, input_size, channels) from the settings, filling 'auto' from the data.

    input_size is None for a timm model without --input-size: the model's own size is used.
    """
    channels = config.channels or detected_channels
    if channels not in (1, 3):
        raise FitError(f"channels must be 1 (grayscale) or 3 (colour), got {channels}")
    arch = config.arch
    if arch == "auto":
        small = (config.input_size or detected_size) <= cfg.LENET_MAX_SIZE
        arch = "lenet" if small and not config.pretrained else cfg.DEFAULT_TIMM_ARCH
    if config.input_size:
        size = config.input_size
    elif arch == "lenet":
        size = min(max(detected_size, 16), cfg.LENET_MAX_SIZE)
    else:
        size = None  # timm's data config for the model says (build_model)
    if size is not None and size < 16:
        raise FitError(f"input size {size} is too small; use 16 or more")
    if (config.pretrained or config.weights) and arch != "lenet" and channels != 3:
        channels = 3  # photo-model weights expect colour (their first layer has 3 input channels); grayscale is replicated
    return arch, size, channels


def check_preprocessing(config: cfg.FitConfig, channels: int) -> None:
    """Explicit interpolation, crop_pct, mean and std are usable (checked before any model is built)."""
    if config.interpolation is not None and config.interpolation not in data.INTERPOLATIONS:
        raise FitError(f"interpolation {config.interpolation!r} is not one of {', '.join(data.INTERPOLATIONS)}")
    if config.crop_pct is not None and not 0.0 < float(config.crop_pct) <= 1.0:
        raise FitError(f"crop_pct must be above 0 and at most 1, got {config.crop_pct:g}")
    for key in ("mean", "std"):
        values = getattr(config, key)
        if values is None:
            continue
        if len(values) not in (1, channels):
            raise FitError(f"{key} needs {channels} value(s) (one per channel, or one for all), got {len(values)}")
        if not all(np.isfinite(values)) or (key == "std" and min(values) <= 0):
            raise FitError(f"{key} must be finite numbers{' above 0' if key == 'std' else ''}, got {list(values)}")


def resolve_preprocessing(config: cfg.FitConfig, arch: str, channels: int, size: int | None, model) -> dict:
    """input_size, interpolation, crop_pct, mean, std: explicit settings over the model's defaults.

    timm models default to timm's data config for the created model (what its pretrained
    weights were trained with); lenet to bilinear, no crop, and mean/std measured on the data
    (None here: the caller measures them once the images are decoded).
    """
    if arch == "lenet":
        own = {"input_size": size, "interpolation": "bilinear", "crop_pct": 1.0, "mean": None, "std": None}
    else:
        from ...nn.models import timm_data_config

        own = timm_data_config(model.backbone)
        if size is not None:
            own["input_size"] = size
        if channels == 1 and len(own["mean"]) == 3:  # colour statistics for grey inputs: their average
            own["mean"], own["std"] = [float(np.mean(own["mean"]))], [float(np.mean(own["std"]))]
    chosen = {
        "input_size": own["input_size"],
        "interpolation": config.interpolation or own["interpolation"],
        "crop_pct": own["crop_pct"] if config.crop_pct is None else float(config.crop_pct),
        "mean": own["mean"] if config.mean is None else [float(v) for v in config.mean] * (channels // len(config.mean)),
        "std": own["std"] if config.std is None else [float(v) for v in config.std] * (channels // len(config.std)),
    }
    return chosen


def few_images_warning(class_names: list[str], labels: np.ndarray, dim: int, covariance: str) -> str | None:
    """Which classes lean on covariance shrinkage because they have few images (None: none)."""
    counts = np.bincount(labels, minlength=len(class_names))
    if covariance == "class":
        few = [f"{class_names[j]!r} ({counts[j]})" for j in range(len(class_names)) if counts[j] <= dim]
    else:  # one pooled covariance: what matters is the total
        few = [f"{class_names[j]!r} ({counts[j]})" for j in range(len(class_names))] if len(labels) - len(class_names) <= dim else []
    if not few:
        return None
    return (f"class {', '.join(few)}: too few images for the {dim} feature dimensions; the covariance relies on "
            "shrinkage and thresholds may be loose (add images for sharper ones)")


def fit_detectors(context: FitContext, prefitted: dict | None = None) -> dict:
    """Every unsupervised registered detector, fitted through the detector contract on `context`
    (the training split; calibrate_detectors calibrates them all afterwards), in registry order.
    `prefitted`: detectors fitted already (under torchrun, from the statistics of every rank)."""
    prefitted = dict(prefitted or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a detector's generic warnings are replaced by fit's own (few_images_warning)
        fitted = {**registry.fit_unsupervised(context, skip=prefitted), **prefitted}
    return {name: fitted[name] for name in registry.DETECTORS if name in fitted}


def fit_context(model, feats: np.ndarray, logits: np.ndarray, labels: np.ndarray, class_names: list[str],
                config: cfg.FitConfig) -> FitContext:
    """The FitContext of every image (take the training split with .rows): outputs, settings and
    the classifier's last layer (nn.models.last_layer)."""
    from ...nn.models import last_layer
    from ...nn.training import plain

    weight, bias, given = last_layer(plain(model))
    return FitContext(features=feats, logits=logits, labels=labels, num_classes=len(class_names),
                      class_names=tuple(class_names), percentile=config.percentile, covariance=config.covariance,
                      classifier_weight=weight, classifier_bias=bias, classifier_input=given)


def choose_arch(config: cfg.FitConfig, arch: str, notes: list[str]):
    """(arch, the weights file read once, or None): a TensorFlow port of EfficientNet weights
    builds timm's tf_ twin of the model asked for (nn.weights.timm_arch_for; a note says so)."""
    if not config.weights or arch == cfg.LENET:
        return arch, None
    from ...nn.weights import WeightsError, read_checkpoint, timm_arch_for

    try:
        checkpoint = read_checkpoint(config.weights)
    except WeightsError as exc:
        raise FitError(str(exc)) from None
    chosen, why = timm_arch_for(checkpoint, arch)
    if why:
        notes.append(why)
    return chosen, checkpoint


def fit_model(
    train_dir: Path,
    config: cfg.FitConfig,
    progress: ProgressCallback | None = None,
    reject_dir: Path | None = None,
    dist=None,
) -> tuple[ModelBundle, FitReport]:
    """Train a classifier on `train_dir`, fit and calibrate every unsupervised registered detector.

    With `reject_dir`, also train the supervised reject head on the frozen features
    (training images = 1, the images of reject_dir = 0). `dist`: an nn.distributed.Distributed
    under torchrun; every rank calls this, and only rank 0 gets (bundle, report), the others
    (None, None) once their part of the statistics is done.
    """
    from ...nn.runtime import pick_device

    from ...nn.datasets import fixed_mmap_threshold

    fixed_mmap_threshold()  # memory flat in the number of images (nn/datasets.py)
    started = time.perf_counter()
    folder = list_training_folder(Path(train_dir))
    class_names, class_files = folder.class_names, folder.class_files
    warned: list[str] = [w for w in (folder.stray_warning(), _one_class_warning(class_names)) if w]
    notes: list[str] = []

    arch, size, channels, frozen, model = _build(config, class_files, len(class_names), notes)  # fails before decoding
    device = pick_device(config.device) if dist is None else dist.device()
    mapping = model.weights_mapping
    if mapping is not None and mapping.left_initial:
        warned.append(mapping.describe())
    prep = resolve_preprocessing(config, arch, channels, size, model)
    size, decode_opts = prep["input_size"], {"interpolation": prep["interpolation"], "crop_pct": prep["crop_pct"]}
    measure = prep["mean"] is None or prep["std"] is None
    found = read_training_set(class_names, class_files, DecodeSettings(size, channels, **decode_opts), progress,
                              config.cache_memory, statistics=measure)
    images, labels, skipped = found.images, found.labels, found.skipped
    rejects, rejects_skipped = _decode_rejects(reject_dir, size, channels, decode_opts)  # before training: fails fast
    if measure:
        prep["mean"] = found.mean if prep["mean"] is None else prep["mean"]
        prep["std"] = found.std if prep["std"] is None else prep["std"]
    mean, std = prep["mean"], prep["std"]
    result = _train(model, images, labels, prep, arch, channels, frozen, config, device, progress, dist)
    embedded = _embed(model, images, labels, mean, std, device, result, config, len(class_names), dist, progress)
    if embedded is None:
        return None, None  # a torchrun rank other than the first: its part is done
    logits, feats, kept, prefitted = embedded
    if len(kept) < len(labels):  # files that changed on disk since they were read: skipped now
        labels, skipped = drop_lost(images, labels, kept, result, skipped)
    # With a validation split, the detectors are fitted on the training split only, and the
    # held-out images calibrate their thresholds (split conformal: detectors/calibration.py).
    metrics = dict(result.val_metrics)
    val_idx = result.val_indices
    fit_idx = result.train_indices if len(val_idx) else np.arange(len(labels))
    warned += [w for w in (few_images_warning(class_names, labels[fit_idx], feats.shape[1], config.covariance),) if w]
    if frozen:  # the class logits: the Gaussian classifier of the deep features (nearest class)
        logits = gaussian_logits(model, feats[fit_idx], labels[fit_idx], feats, len(class_names), config.percentile)
        metrics.update(_accuracies(logits, labels, fit_idx, val_idx, len(class_names)))
    context = fit_context(model, feats, logits, labels, class_names, config)
    detectors = fit_detectors(context.rows(fit_idx), prefitted)
    calibration = calibrate_detectors(detectors, context, fit_idx, val_idx, config, metrics)
    warned += [w for w in (calibration.get("warning"), calibration.get("generalisation_warning")) if w]
    primary = detectors[registry.DEFAULT_METHOD]  # always fitted: the model's per-class thresholds and nearest class
    metrics["train_rejected_fraction"] = float(np.mean(primary.predict(features=feats, logits=logits)))

    counts = np.bincount(labels, minlength=len(class_names)).tolist()
    model_config = _model_config(
        arch=arch, size=size, channels=channels, mean=mean, std=std, prep=prep, class_names=class_names, model=model,
        config=config, mapping=mapping, result=result, frozen=frozen, dist=dist, train_dir=train_dir, counts=counts,
        skipped=skipped, metrics=metrics, calibration=calibration, warned=warned, notes=notes, primary=primary)
    head = _fit_head(model, feats, rejects, rejects_skipped, reject_dir, mean, std, device, model_config)
    model.to("cpu").eval()
    bundle = ModelBundle(config=model_config, model=model, detectors=detectors, head=head)
    report = _fit_report(class_names=class_names, counts=counts, skipped=skipped, arch=arch, size=size, channels=channels,
                         metrics=metrics, result=result, primary=primary, started=started, config=config, prep=prep,
                         mean=mean, std=std, calibration=calibration, model_config=model_config, warned=warned, notes=notes)
    return bundle, report


class _TrainingProgress:
    """train_classifier's callbacks, said to fit's `progress` (if any)."""

    def __init__(self, progress: ProgressCallback | None):
        self.progress = progress

    def batch(self, epoch, epochs, batch, batches, loss, acc) -> None:
        if self.progress is not None:
            self.progress("batch", batch, batches, {"epoch": epoch, "epochs": epochs, "loss": loss, "accuracy": acc})

    def epoch(self, stats) -> None:
        if self.progress is not None:
            self.progress("epoch", stats.epoch, stats.epochs, asdict(stats))


def _decode_rejects(reject_dir: Path | None, size: int, channels: int, decode_opts: dict):
    """(images, skipped) of the reject folder (None, None without one); FitError when it cannot be used."""
    if reject_dir is None:
        return None, None
    from .headfit import HeadError, decode_folder

    try:
        return decode_folder(reject_dir, size, channels, **decode_opts)
    except HeadError as exc:
        raise FitError(str(exc)) from None


def _accuracies(logits, labels, fit_idx, val_idx, n_classes: int) -> dict:
    """The frozen model's accuracies: of its Gaussian classifier on the fit and held-out splits."""
    out = {}
    if len(val_idx):
        pred = logits[val_idx].argmax(1)
        out["val_accuracy"] = float(np.mean(pred == labels[val_idx]))
        out["val_macro_f1"] = macro_f1(labels[val_idx], pred, n_classes)
    out["train_accuracy"] = float(np.mean(logits[fit_idx].argmax(1) == labels[fit_idx]))
    return out


def _model_config(*, arch, size, channels, mean, std, prep, class_names, model, config, mapping, result, frozen, dist,
                  train_dir, counts, skipped, metrics, calibration, warned, notes, primary) -> dict:
    """The model's config.json (store/model_files.CONFIG_SCHEMA checks it when it is saved)."""
    return {
        "arch": arch,
        "input_size": size,
        "channels": channels,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "interpolation": prep["interpolation"],
        "crop_pct": prep["crop_pct"],
        "class_names": class_names,
        "feature_dim": int(model.feature_dim),
        "center_weight": config.train.center_weight,
        "percentile": config.percentile,
        "covariance": config.covariance,
        "pretrained": bool(config.pretrained),
        "weights": os.fsdecode(config.weights) if config.weights else None,
        "weights_mapping": mapping.to_dict() if mapping is not None else None,
        "training": {**asdict(config.train), "epochs_trained": int(result.epochs), "backbone_trained": not frozen,
                     "steps_per_epoch": int(result.steps_per_epoch)},
        "backbone_trained": not frozen,
        "world_size": dist.world_size if dist is not None else 1,
        "logits": "gaussian" if frozen else "linear",
        "data": {"train_dir": os.fsdecode(Path(train_dir).absolute()), "images_per_class": counts, "skipped": len(skipped)},
        "metrics": metrics,
        "calibration": calibration,
        "fit_warnings": warned,
        "fit_notes": notes,
        "score": f"{primary.summary}; higher = more out-of-distribution; > 1 = rejected",
    }


def _build(config: cfg.FitConfig, class_files, n_classes: int, notes: list[str]):
    """(arch, input size, channels, frozen, the network) for these class folders and settings."""
    from ...nn.models import build_model
    from ...nn.training import seed_everything

    size, channels = detect_geometry(class_files)
    arch, size, channels = resolve_architecture(config, size, channels)
    check_preprocessing(config, channels)
    arch, weights = choose_arch(config, arch, notes)
    frozen = config.train.epochs == 0  # pretrained features only: no training (docs/training.md)
    if frozen and not (config.pretrained or config.weights):
        raise FitError("--epochs 0 trains nothing, so it needs a backbone that already works: "
                       "add --pretrained or --weights FILE, or train with --epochs 1 or more")
    seed_everything(config.train.seed)  # the initial weights too
    try:
        model = build_model(arch, n_classes, channels, size, config.pretrained, weights or config.weights,
                            logits="gaussian" if frozen else "linear")
    except ValueError as exc:
        raise FitError(str(exc)) from None
    return arch, size, channels, frozen, model


def _fit_report(*, class_names, counts, skipped, arch, size, channels, metrics, result, primary, started, config, prep,
                mean, std, calibration, model_config, warned, notes) -> FitReport:
    return FitReport(
        class_names=class_names,
        images_per_class=counts,
        skipped=skipped,
        arch=arch,
        input_size=size,
        channels=channels,
        metrics=metrics,
        history=[asdict(h) for h in result.history],
        thresholds=primary.thresholds_.tolist(),
        seconds=time.perf_counter() - started,
        epochs_requested=config.train.epochs,
        epochs_trained=int(result.epochs),
        steps_per_epoch=int(result.steps_per_epoch),
        preprocessing={**prep, "mean": [float(m) for m in mean], "std": [float(v) for v in std]},
        calibration=calibration,
        weights_mapping=model_config["weights_mapping"],
        warnings=warned,
        notes=notes,
    )


def _train(model, images, labels, prep: dict, arch: str, channels: int, frozen: bool, config: cfg.FitConfig, device, progress, dist):
    """Train the classifier (nothing with --epochs 0); its TrainResult."""
    from ...nn.models import timm_train_transform
    from ...nn.training import train_classifier

    if frozen:
        return untrained(labels, config.train)
    mean, std, size = prep["mean"], prep["std"], prep["input_size"]
    transform = None
    if arch != "lenet" and config.train.augment:  # photos: timm's training transform, in the loader's workers
        transform = timm_train_transform(model.backbone, size, channels, mean, std, prep["interpolation"])
    shown = _TrainingProgress(progress)
    return train_classifier(model, images, labels, mean, std, config.train, device, shown.batch, shown.epoch,
                            transform, dist=dist)


def _embed(model, images, labels, mean, std, device, result, config: cfg.FitConfig, n_classes: int, dist, progress):
    """(logits, features, kept rows, detectors fitted across ranks) of the training images; None
    on a torchrun rank other than the first, once its part of the statistics is done."""
    from ...nn.runtime import predict_images

    if progress is not None:
        progress("embed", 0, len(images), {})
    prefitted = {}
    if dist is None:
        logits, feats, kept = predict_images(model, images, None, mean, std, device)
    else:
        logits, feats, kept, shared = embed_distributed(model, images, labels, mean, std, device, result, config,
                                                        n_classes, dist)
        if not dist.is_main:
            return None
        prefitted[shared.name] = shared
    if progress is not None:
        progress("embed", len(images), len(images), {})
    return logits, feats, kept, prefitted


def _one_class_warning(class_names: list[str]) -> str | None:
    if len(class_names) < 2:
        return f"only one class ({class_names[0]}): the classifier learns nothing, the detector still works"
    return None


def _fit_head(model, feats, rejects, rejects_skipped, reject_dir, mean, std, device, model_config: dict):
    """The supervised reject head on the frozen features (None without a reject folder); its
    settings and metrics go into model_config["head"]."""
    if rejects is None:
        return None
    from ...nn.runtime import predict_arrays
    from .headfit import head_config, train_head

    _, reject_feats = predict_arrays(model, rejects, mean, std, device)
    head, head_metrics = train_head(feats, reject_feats)
    model_config["head"] = head_config(reject_dir, head_metrics, len(rejects_skipped))
    return head
