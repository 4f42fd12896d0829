"""`evaluate`: how well a model classifies labelled images and separates known out-of-distribution ones.

In-distribution images come as a labelled folder (one sub-folder per class, names as the
model's classes); out-of-distribution images as any folder (searched recursively). Files that
cannot be decoded in either folder are reported and left out of every metric.

Images go through the same pieces as a scan: pipeline.decode.Decoder, nn.runtime.predict_arrays
and the registered detectors (detectors/registry.py). One result per method the model serves
(every registered detector it has, and the combining rules over them):
- precision, recall and F1 at the model's own thresholds (score > 1 = rejected), with
  out-of-distribution as the positive class;
- AUROC, AUPR (average precision) and the FPR at 95% TPR of the score (higher = more OOD);
- ROC curve points: a detector's own sweep where it has one (Detector.own_curve: Mahalanobis as
  the paper draws it, all class thresholds moving together through the percentile of each class's
  own training distances; the head its sigmoid threshold), else the plain ROC of its score
  (metrics.roc_curve); each runs from (1, 1) to (0, 0). Combined methods have none.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import data, metrics
from ..detectors import registry
from ..store.artifact import ModelBundle
from ..errors import ImgcleanError
from .decode import Decoder, DecodeSettings



class EvaluateError(ImgcleanError):
    """The folders cannot be evaluated with this model (message says what to fix)."""


@dataclass
class Outputs:
    """The network's outputs for the files of a folder that decoded."""

    logits: np.ndarray  # (n, classes)
    features: np.ndarray  # (n, feature_dim)
    kept: np.ndarray  # index into the input paths of each row
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # (path, status, message)


@dataclass
class Evaluation:
    results: dict
    curves: dict[str, dict[str, np.ndarray]]  # method -> {"fpr", "tpr", "setting"}
    unreadable: list[tuple[str, str, str]]


def network_outputs(
    bundle: ModelBundle, paths: list[Path], batch_size: int, device: str,
    progress: Callable[[int], None] | None = None,
) -> Outputs:
    """Decode (the one Decoder, with the model's settings) and embed `paths` a batch at a time."""
    from ..nn.runtime import predict_arrays

    cfg = bundle.config
    logits, feats, kept, unreadable = [], [], [], []
    offset = 0
    with Decoder(DecodeSettings.from_model(bundle)) as decoder:
        for items, decoded in decoder.batches(paths, batch_size):
            good = []
            for i, (path, d) in enumerate(zip(items, decoded, strict=True), start=offset):
                if d.ok:
                    good.append(d.array)
                    kept.append(i)
                else:
                    unreadable.append((os.fsdecode(path), d.status, d.message))
            offset += len(items)
            if good:
                lg, ft = predict_arrays(bundle.model, np.stack(good), cfg["mean"], cfg["std"], device, batch_size)
                logits.append(lg)
                feats.append(ft)
            if progress is not None:
                progress(len(items))
    k, dim = len(bundle.class_names), int(cfg["feature_dim"])
    return Outputs(
        logits=np.concatenate(logits) if logits else np.zeros((0, k), np.float32),
        features=np.concatenate(feats) if feats else np.zeros((0, dim), np.float32),
        kept=np.array(kept, dtype=np.int64),
        unreadable=unreadable,
    )


def list_inputs(bundle: ModelBundle, in_dir: Path, ood_dir: Path) -> tuple[list[Path], np.ndarray, list[Path]]:
    """(in-distribution paths, their class indices in the model, out-of-distribution paths)."""
    try:
        names, files = data.list_image_folder(in_dir)
    except ValueError as exc:
        raise EvaluateError(str(exc)) from None
    unknown = [n for n in names if n not in bundle.class_names]
    if unknown:
        raise EvaluateError(
            f"{in_dir} has class folder(s) {', '.join(repr(n) for n in unknown)} that the model does not know "
            f"(its classes: {', '.join(bundle.class_names)})"
        )
    in_paths = [e.path for fs in files for e in fs]
    in_labels = np.array(
        [bundle.class_names.index(n) for n, fs in zip(names, files, strict=True) for _ in fs], dtype=np.int64
    )
    if not Path(ood_dir).is_dir():
        raise EvaluateError(f"{ood_dir} does not exist or is not a folder")
    ood_paths = [e.path for e in data.walk_images(Path(ood_dir)) if not e.skip_reason]
    if not in_paths:
        raise EvaluateError(f"{in_dir} has no image files")
    if not ood_paths:
        raise EvaluateError(f"{ood_dir} has no image files")
    return in_paths, in_labels, ood_paths


def available_methods(bundle: ModelBundle) -> list[str]:
    """Every method the model serves (registry order): its detectors and the combinations of them."""
    return registry.available_methods(bundle.detectors)


def score_roc(s_in: np.ndarray, s_ood: np.ndarray) -> dict[str, np.ndarray]:
    """The plain ROC of a score (reject when score >= threshold), from (1, 1) down to (0, 0)."""
    labels = np.r_[np.zeros(len(s_in)), np.ones(len(s_ood))]
    fpr, tpr, thr = metrics.roc_curve(labels, np.r_[s_in, s_ood])
    setting = np.array(["above_max" if np.isinf(t) else f"{t:.6g}" for t in thr])
    return {"fpr": fpr[::-1], "tpr": tpr[::-1], "setting": setting[::-1]}


def _curve(bundle: ModelBundle, name: str, o_in: Outputs, o_ood: Outputs, n_in: int, score: np.ndarray) -> dict:
    """The detector's own ROC sweep (Detector.own_curve) or the plain ROC of its score."""
    inside = {"features": o_in.features, "logits": o_in.logits}
    outside = {"features": o_ood.features, "logits": o_ood.logits}
    own = bundle.detectors[name].own_curve(inside, outside)
    return own if own is not None else score_roc(score[:n_in], score[n_in:])


def evaluate(
    bundle: ModelBundle,
    in_dir: Path,
    ood_dir: Path,
    methods: list[str] | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Classification and out-of-distribution metrics of `bundle` on the two folders."""
    from .engines.scoring import check_method

    methods = methods or available_methods(bundle)
    for m in methods:
        check_method(bundle, m)
    in_paths, in_labels, ood_paths = list_inputs(bundle, in_dir, ood_dir)
    total, done = len(in_paths) + len(ood_paths), [0]

    def tick(n):
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    o_in = network_outputs(bundle, in_paths, batch_size, device, tick)
    o_ood = network_outputs(bundle, ood_paths, batch_size, device, tick)
    if not len(o_in.kept):
        raise EvaluateError(f"no image in {in_dir} could be decoded")
    if not len(o_ood.kept):
        raise EvaluateError(f"no image in {ood_dir} could be decoded")
    predicted = o_in.logits.argmax(1)
    y_true = in_labels[o_in.kept]
    k = len(bundle.class_names)
    n_in, n_ood = len(o_in.kept), len(o_ood.kept)
    results: dict = {
        "classification": {
            "accuracy": metrics.accuracy(y_true, predicted),
            "macro_f1": metrics.macro_f1(y_true, predicted, num_classes=k),
        },
        "counts": {
            "in_distribution": int(n_in),
            "out_of_distribution": int(n_ood),
            "unreadable": len(o_in.unreadable) + len(o_ood.unreadable),
        },
    }
    features, logits = np.r_[o_in.features, o_ood.features], np.r_[o_in.logits, o_ood.logits]
    needed = dict.fromkeys(name for m in methods for name in registry.members(m))
    scores = {name: bundle.detectors[name].score(features=features, logits=logits) for name in needed}
    labels = np.r_[np.zeros(n_in), np.ones(n_ood)]
    curves: dict[str, dict[str, np.ndarray]] = {}
    for method in methods:
        score = registry.combine(method, scores)
        r = metrics.precision_recall_f1(labels, score > 1.0)
        r.update(
            auroc=metrics.auroc(labels, score),
            aupr=metrics.average_precision(labels, score),
            fpr_at_95_tpr=metrics.fpr_at_tpr(labels, score, 0.95),
            false_reject_rate=float(np.mean(score[labels == 0] > 1.0)),
        )
        if method in registry.DETECTORS:
            curves[method] = _curve(bundle, method, o_in, o_ood, n_in, score)
            setting = registry.DETECTORS[method].curve_setting
            if setting == "percentile":  # the paper's sweep: its area beside the score's
                r["auroc_percentile_sweep"] = metrics.trapezoid_auc(curves[method]["fpr"], curves[method]["tpr"])
        results[method] = r
    return Evaluation(results=results, curves=curves, unreadable=o_in.unreadable + o_ood.unreadable)


# ---- curves on disk ----------------------------------------------------------------------
def write_curve_csv(curve: dict[str, np.ndarray], path: Path, setting_name: str) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([setting_name, "fpr", "tpr"])
        for s, f, t in zip(curve["setting"], curve["fpr"], curve["tpr"], strict=True):
            w.writerow([s, f"{f:.6f}", f"{t:.6f}"])
    return path


# One colour per registered method, in registry order (a new detector gets the next one).
PALETTE = ((31, 119, 180), (255, 127, 14), (148, 103, 189), (214, 39, 40), (44, 160, 44), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def colour(method: str) -> tuple[int, int, int]:
    names = registry.method_names()
    return PALETTE[names.index(method) % len(PALETTE)] if method in names else PALETTE[4]


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, str]], path: Path, title: str) -> Path:
    """Draw ROC curves into a PNG with Pillow: axes, ticks, chance diagonal, curves, legend."""
    from PIL import Image, ImageDraw, ImageFont

    w = h = 560
    left, right, top, bottom = 70, 20, 40, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    pw, ph = w - left - right, h - top - bottom

    def xy(fx, fy):
        return left + fx * pw, top + (1 - fy) * ph

    d.rectangle([left, top, left + pw, top + ph], outline="black")
    for v in np.linspace(0, 1, 6):
        x, _ = xy(v, 0)
        _, y = xy(0, v)
        d.line([x, top + ph, x, top + ph + 5], fill="black")
        d.line([left - 5, y, left, y], fill="black")
        d.line([x, top, x, top + ph], fill=(230, 230, 230))
        d.line([left, y, left + pw, y], fill=(230, 230, 230))
        d.text((x - 8, top + ph + 8), f"{v:.1f}", fill="black", font=font)
        d.text((left - 32, y - 6), f"{v:.1f}", fill="black", font=font)
    for i in range(20):  # dashed chance diagonal
        a, b = i / 20, (i + 0.5) / 20
        d.line([xy(a, a), xy(b, b)], fill=(150, 150, 150), width=1)
    for n, (name, (fpr, tpr, label)) in enumerate(curves.items()):
        line_colour = colour(name)
        order = np.lexsort((tpr, fpr))
        d.line([xy(float(f), float(t)) for f, t in zip(fpr[order], tpr[order], strict=True)], fill=line_colour, width=2)
        ly = top + ph - 20 - 16 * n
        d.line([left + pw - 190, ly + 6, left + pw - 170, ly + 6], fill=line_colour, width=2)
        d.text((left + pw - 165, ly), label, fill="black", font=font)
    d.text((left + pw / 2 - 80, h - 22), "false positive rate (in-distribution rejected)", fill="black", font=font)
    d.text((8, top - 16), "true positive rate (out-of-distribution rejected)", fill="black", font=font)
    d.text((left, 4), title, fill="black", font=font)
    img.save(path, format="PNG")
    return path


def write_plots(evaluation: Evaluation, folder: Path) -> list[Path]:
    """roc_<method>.csv and roc_<method>.png per method with a curve, and roc.png with all of them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    labelled = {}
    for method, curve in evaluation.curves.items():
        setting = registry.DETECTORS[method].curve_setting
        written.append(write_curve_csv(curve, folder / f"roc_{method}.csv", setting))
        label = f"{method} (area {metrics.trapezoid_auc(curve['fpr'], curve['tpr']):.3f})"
        labelled[method] = (curve["fpr"], curve["tpr"], label)
        written.append(plot_roc({method: labelled[method]}, folder / f"roc_{method}.png", f"ROC, {method}"))
    if len(labelled) > 1:
        written.append(plot_roc(labelled, folder / "roc.png", "ROC"))
    return written
