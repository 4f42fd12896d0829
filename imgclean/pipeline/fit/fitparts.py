"""fit's steps that are not the main line: the held-out calibration of the detectors, --epochs 0
(no training), torchrun's embedding and statistics, and images a streamed pass could no longer
decode. Used by pipeline/fit/fit_model.py only."""
from __future__ import annotations

import os
import warnings

import numpy as np

from ... import config as cfg
from ... import data
from ...detectors import MahalanobisDetector, registry
from ...detectors import calibration as cal
from ...detectors.base import FitContext
from ...detectors.mahalanobis import MIN_IMAGES_FOR_OWN_THRESHOLD

# Above this share of held-out images beyond the training thresholds before calibration (and at
# least 5x the rate asked for), the thresholds had to move far: the model does not generalise well
# yet. (The sample digits' model, 900 training images, has 11%: calibration handles that.)
GENERALISATION_ALARM = 0.2


def calibrate_detectors(detectors: dict, context: FitContext, fit_idx: np.ndarray, val_idx: np.ndarray,
                        config: cfg.FitConfig, metrics: dict) -> dict:
    """Calibrate every detector on the held-out images of `context` through the detector contract
    (Detector.calibrate: split conformal, detectors/calibration.py; a supervised detector returns
    None) and return what the model's config.json records as `calibration`: the false-reject rate
    promised (expected, and its interval given these held-out images), how many images that rests
    on and how many are needed (`warning`: one line when too few), and each detector's cut.
    `metrics` gets val_rejected_fraction[_<name>] (no suffix for the primary detector,
    registry.DEFAULT_METHOD), its val_rejected_fraction_uncalibrated and each detector's
    calibration_metrics() (threshold_scale, energy_threshold_shift, ...)."""
    class_names, labels = list(context.class_names), np.asarray(context.labels)
    k = len(class_names)
    needs = cal.assess(class_names, np.bincount(labels[val_idx], minlength=k), np.bincount(labels[fit_idx], minlength=k),
                       config.percentile, config.train.val_fraction, MIN_IMAGES_FOR_OWN_THRESHOLD)
    out = {"method": "none", "percentile": float(config.percentile), **needs.to_dict(),
           "warning": needs.warning(), "detectors": {}}
    if not len(val_idx):
        return out
    held = context.rows(val_idx)
    cuts = {}
    for name, det in detectors.items():
        before = det.score(features=held.features, logits=held.logits)
        done = det.calibrate(features=held.features, logits=held.logits)
        if done is None:  # a supervised detector: nothing to calibrate
            continue
        cuts[name] = done
        after = det.predict(features=held.features, logits=held.logits)
        out["detectors"][name] = {"cut": done.cut, "held_out_rejected_before": float(np.mean(before > 1.0)),
                                  "held_out_rejected": float(np.mean(after))}
        suffix = "" if name == registry.DEFAULT_METHOD else f"_{name}"
        metrics[f"val_rejected_fraction{suffix}"] = float(np.mean(after))
    if not cuts:
        return out
    primary = registry.DEFAULT_METHOD
    if primary in cuts:
        before = out["detectors"][primary]["held_out_rejected_before"]
        metrics["val_rejected_fraction_uncalibrated"] = before
        nominal = (100.0 - config.percentile) / 100.0
        if before > max(5 * nominal, GENERALISATION_ALARM) and len(val_idx) >= 20:
            out["generalisation_warning"] = (
                f"{100 * before:.0f}% of the held-out training images scored above the training thresholds "
                f"({100 * nominal:.1f}% expected), so calibration widened them {cuts[primary].cut:.2f}x: the model "
                "does not generalise well yet and will let more foreign images through; train longer (--epochs) "
                "or add images")
    for det in detectors.values():
        metrics.update(det.calibration_metrics())
    cut = cuts[list(cuts)[-1]]  # the promise is the same for every detector (one percentile, one held-out set)
    low, high = cut.interval
    out.update(method=cal.METHOD, rank=cut.rank, expected_false_reject_rate=cut.expected_false_reject_rate,
               false_reject_interval=[low, high], interval_level=cal.INTERVAL)
    return out


def drop_lost(images, labels: np.ndarray, kept: np.ndarray, result, skipped: list) -> tuple[np.ndarray, list]:
    """Leave out the images a streamed embedding pass could no longer decode (changed on disk
    since the first pass): they join the skipped files, and the split's indices follow."""
    lost = np.setdiff1d(np.arange(len(labels)), kept)
    for i in lost:
        item = images.items[i]
        skipped.append((os.fsdecode(getattr(item, "path", item)), data.UNREADABLE,
                        "could not be decoded again after it was first read (changed on disk during fit?)"))
    pos = np.full(len(labels), -1, dtype=np.int64)
    pos[kept] = np.arange(len(kept))
    for name in ("train_indices", "val_indices"):
        moved = pos[getattr(result, name)]
        setattr(result, name, moved[moved >= 0])
    return labels[kept], skipped


def untrained(labels: np.ndarray, settings: cfg.TrainSettings):
    """The TrainResult of `--epochs 0`: the same held-out split training would make, no epochs."""
    from ...nn.training import TrainResult, stratified_split

    train_idx, val_idx = stratified_split(labels, settings.val_fraction, settings.seed)
    return TrainResult(epochs=0, train_indices=train_idx, val_indices=val_idx,
                       val_metrics={"val_images": int(len(val_idx)), "epochs": 0})


def gaussian_logits(model, fit_feats: np.ndarray, fit_labels: np.ndarray, feats: np.ndarray, num_classes: int,
                    percentile: float = 97.5) -> np.ndarray:
    """Set the untrained classifier to the Gaussian classifier of the features (the class means
    and the tied precision of a tied Mahalanobis fit on the training split, scaled by 1 / feature
    dimension so the logits stay small) and return the logits of `feats`. (--epochs 0: the
    logits the logit detectors are then fitted on.)"""
    from ...nn.models import set_gaussian_logits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tied = MahalanobisDetector(percentile, "tied").fit(fit_feats, fit_labels, num_classes=num_classes)
    set_gaussian_logits(model, tied.means_, tied.precisions_[0], float(feats.shape[1]))
    w = model.classifier.weight.detach().cpu().numpy()
    b = model.classifier.bias.detach().cpu().numpy()
    return (feats @ w.T + b).astype(np.float32)


def embed_distributed(model, images, labels, mean, std, device, result, config: cfg.FitConfig, num_classes: int,
                      dist) -> tuple[np.ndarray, np.ndarray, np.ndarray, MahalanobisDetector]:
    """Under torchrun: each rank embeds its unpadded share of the images; the Mahalanobis detector
    is fitted from the statistics summed over ranks (distances gathered for the thresholds); the
    features and logits are gathered in the original order (KNN, energy and the calibration need
    them all). Returns (logits, features, kept indices, detector) on every rank."""
    from ...nn.runtime import predict_images
    from ...nn.training import plain

    net = plain(model)
    logits, feats, kept = predict_images(net, images, dist.shard(np.arange(len(labels))), mean, std, device)
    in_fit = np.zeros(len(labels), dtype=bool)
    in_fit[result.train_indices if len(result.val_indices) else np.arange(len(labels))] = True
    rows = in_fit[kept]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generic warning is replaced by one naming the classes
        detector = MahalanobisDetector(config.percentile, config.covariance).fit_chunks(
            lambda: [(feats[rows], labels[kept][rows])], num_classes, reduce=dist.reduce_arrays, gather=dist.gather_rows
        )
    kept_all = dist.gather_rows(kept)
    order = np.argsort(kept_all, kind="stable")
    return dist.gather_rows(logits)[order], dist.gather_rows(feats)[order], kept_all[order], detector
