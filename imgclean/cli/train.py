"""fit and fit-head: train a model, or add a reject head to one."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..config import DEFAULT_MODEL_DIR, DEFAULT_PERCENTILE, FitConfig, TrainSettings
from ..jobs.base import refusal_classes
from .common import (
    Covariance, Device, command, err, fail, make_progress, note, os_error, out, print_json, resolve_device,
    setup_logging, usage_error,
)
from .options import config_option, resolved_settings


# Below this held-out accuracy, fit suggests `imgclean audit` (the folder may be dirty). The
# shipped 1,000 sample digits reach about 0.86, so the README demo does not trigger it.
LOW_ACCURACY = 0.8


class Interpolation(str, Enum):
    """The resampling filters of imgclean.data.INTERPOLATIONS (timm's names)."""

    nearest = "nearest"
    bilinear = "bilinear"
    bicubic = "bicubic"
    lanczos = "lanczos"
    box = "box"
    hamming = "hamming"


def parse_floats(option: str, text: Optional[str]) -> Optional[list[float]]:
    """--mean 0.5,0.5,0.5 -> [0.5, 0.5, 0.5]; a usage error naming the option when a part is no
    number (how many, and which values, the request checks: jobs/fit.check_channel_values)."""
    if text is None:
        return None
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise usage_error(f"{option} takes comma-separated numbers, e.g. 0.5,0.5,0.5; got {str(text)[:60]!r}") from None


def torchrun_follower() -> bool:
    """This process is a torchrun rank other than 0: it trains, but only rank 0 prints and saves."""
    return os.environ.get("RANK", "0") not in ("", "0") and os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def fit_config(arch: str, input_size, channels, interpolation, crop_pct, mean, std, pretrained: bool, weights,
               percentile: float, covariance, device, cache_memory, settings: TrainSettings) -> FitConfig:
    """The FitConfig the options ask for (parsed here, checked by jobs.fit.FitRequest). The data-config
    overrides go to FitConfig only when given (contract 6), so a FitConfig without them still
    works for every run that does not use them."""
    overrides = {
        "interpolation": interpolation.value if interpolation is not None else None,
        "crop_pct": crop_pct,
        "mean": parse_floats("--mean", mean),
        "std": parse_floats("--std", std),
    }
    if cache_memory is not None:
        from ..nn.datasets import parse_size

        try:
            overrides["cache_memory"] = parse_size(cache_memory)
        except ValueError as exc:
            raise usage_error(f"--cache-memory: {exc}") from None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return FitConfig(
            arch=arch, input_size=input_size, channels=channels, pretrained=pretrained, weights=weights,
            percentile=percentile, covariance=covariance.value, device=device.value, train=settings, **overrides,
        )
    except TypeError:
        flags = ", ".join("--" + k.replace("_", "-") for k in overrides)
        raise usage_error(f"{flags}: not supported by this build of imgclean") from None


@command()
def fit(
    ctx: typer.Context,
    train_dir: Path = typer.Argument(..., help="Folder with one sub-folder of images per class."),
    output: Path = typer.Option(DEFAULT_MODEL_DIR, "-o", "--output", help="Model directory to write."),
    arch: str = typer.Option("auto", help="'lenet', a timm model name (e.g. efficientnet_b0), or 'auto' (lenet for small images)."),
    input_size: Optional[int] = typer.Option(None, help="Square input size in pixels [default: from the data, or the timm model's own]."),
    channels: Optional[int] = typer.Option(None, help="1 (grayscale) or 3 (colour) [default: from the data]."),
    interpolation: Optional[Interpolation] = typer.Option(None, help="Resampling filter when resizing images [default: the timm model's own, else bilinear]."),
    crop_pct: Optional[float] = typer.Option(None, "--crop-pct", max=1.0, help="Centre crop: share of the shorter side kept before resizing [default: the timm model's own, else 1.0]."),
    mean: Optional[str] = typer.Option(None, help="Normalisation mean per channel, comma-separated (e.g. 0.485,0.456,0.406) [default: the timm model's own, else from the data]."),
    std: Optional[str] = typer.Option(None, help="Normalisation standard deviation per channel, comma-separated [default: the timm model's own, else from the data]."),
    pretrained: bool = typer.Option(False, help="Start a timm model from its pretrained weights (needs them downloadable or cached)."),
    weights: Optional[Path] = typer.Option(None, help="Local weights file (.safetensors or .pth) for the backbone: timm's, torchvision's or EfficientNet-PyTorch's names, matched by name or by order (fit says which)."),
    epochs: int = typer.Option(TrainSettings.epochs, min=0, help="Training epochs, raised when needed to reach --min-steps (a note says so when you gave --epochs; the summary shows the epochs trained). 0 with --pretrained or --weights: no training, the detectors are fitted on the frozen backbone's features."),
    min_steps: int = typer.Option(TrainSettings.min_steps, min=0, help="Train at least this many batches (small data sets get more epochs)."),
    batch_size: int = typer.Option(TrainSettings.batch_size, min=1, help="Training batch size."),
    lr: float = typer.Option(TrainSettings.lr, min=0.0, help="Peak learning rate (one-cycle schedule, AdamW)."),
    center_weight: float = typer.Option(TrainSettings.center_weight, min=0.0, help="lambda: weight of the center loss."),
    percentile: float = typer.Option(DEFAULT_PERCENTILE, min=0.0, max=100.0, help="Per-class threshold percentile of the training distances."),
    covariance: Covariance = typer.Option(Covariance.tied, help="One covariance pooled over classes (tied), or one per class as in the paper (class)."),
    val_fraction: float = typer.Option(TrainSettings.val_fraction, min=0.0, max=0.9, help="Share of each class held out for validation."),
    augment: bool = typer.Option(TrainSettings.augment, help="Random small shifts during training."),
    seed: int = typer.Option(TrainSettings.seed, help="Random seed (runs on CPU are deterministic)."),
    device: Device = typer.Option(Device.auto, help="Where to train."),
    cache_memory: Optional[str] = typer.Option(None, "--cache-memory", help="Keep the decoded training images in memory when they fit in this much (e.g. 512M, 4G; 0 = always stream from disk) [default: a quarter of the available memory, at most 1G]."),
    force: bool = typer.Option(False, "--force", help="Replace an existing model directory."),
    reject_dir: Optional[Path] = typer.Option(None, "--reject-dir", help="Folder of images that do NOT belong (e.g. a scan --move-to folder): also train the supervised reject head."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout instead of tables."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Name every skipped file and log details."),
    config_file: Optional[Path] = config_option(),
) -> None:
    """Train a model on a labelled image folder and calibrate its out-of-distribution thresholds.

    A TRAIN_DIR that is not a training folder (missing, not a folder, or empty: no class
    sub-folders) is a usage error (exit 2); what is wrong inside a class (no image files, or none
    readable) is an error (exit 1).
    """
    from ..jobs.fit import FitRequest

    if torchrun_follower():  # only rank 0 prints and saves
        quiet, json_out, verbose = True, False, False
    setup_logging(quiet, verbose)
    settings = TrainSettings(
        epochs=epochs, min_steps=min_steps, batch_size=batch_size, lr=lr, center_weight=center_weight,
        val_fraction=val_fraction, augment=augment, seed=seed,
    )
    config = fit_config(arch, input_size, channels, interpolation, crop_pct, mean, std, pretrained, weights,
                        percentile, covariance, device, cache_memory, settings)
    request = FitRequest(train_dir, config, output=output, force=force, reject_dir=reject_dir)
    request.check()
    # (compared by name: typer releases that vendor click have an enum of their own)
    epochs_given = getattr(ctx.get_parameter_source("epochs"), "name", "DEFAULT") != "DEFAULT"
    view = FitView(quiet, json_out, verbose, epochs_given)
    trained = train_and_save(request, resolved_settings(ctx), view)
    if trained is not None:  # None: torchrun, rank > 0 (rank 0 saves)
        show_fit(*trained, request, view)


@dataclass
class FitView:
    """How the terminal shows a fit: -q, --json, -v, and whether --epochs was given (not its default)."""

    quiet: bool
    json_out: bool
    verbose: bool
    epochs_given: bool = False


class FitProgress:
    """fit_model's progress callback drawn on the terminal: decode, training batches, epochs
    (one line each when stderr is no terminal), calibration."""

    def __init__(self, progress, view: FitView):
        self.progress, self.view, self.tasks = progress, view, {}

    def task(self, stage: str, label: str, total: int):
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(label, total=total, info="")
        return self.tasks[stage]

    def __call__(self, stage: str, done: int, total: int, info: dict) -> None:
        if stage == "decode":
            self.progress.update(self.task("decode", "decoding", total), completed=done)
        elif stage == "batch":
            n_epochs = info["epochs"]
            self.progress.update(
                self.task("train", "training", total * n_epochs), completed=(info["epoch"] - 1) * total + done,
                info=f"epoch {info['epoch']}/{n_epochs} batch {done}/{total} loss {info['loss']:.3f} acc {info['accuracy']:.3f}",
            )
        elif stage == "epoch" and not (self.view.quiet or self.view.json_out) and not err.is_terminal:
            va = info.get("val_accuracy")
            err.print(f"epoch {done}/{total}: loss {info['loss']:.4f}, train acc {info['train_accuracy']:.4f}"
                      + (f", val acc {va:.4f}" if va is not None else ""), highlight=False)
        elif stage == "embed":
            self.progress.update(self.task("embed", "calibrating", total), completed=done)


def train_and_save(request, settings_used: dict, view: FitView):
    """Train (joining the other torchrun ranks when started by torchrun) and save the model;
    (bundle, report, saved path), or None on a torchrun rank other than 0."""
    from ..pipeline.fit.fit_model import FitError, fit_model
    from ..store.artifact import ModelError, save_model

    progress = make_progress(view.quiet or view.json_out)
    dist = None
    try:
        if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):  # started by torchrun: join the others
            from ..nn.distributed import Distributed

            dist = Distributed.from_env(request.config.device)
        with progress:
            bundle, report = fit_model(request.train_dir, request.config, FitProgress(progress, view),
                                       reject_dir=request.reject_dir, dist=dist)
        if bundle is None:
            return None
        bundle.config["settings"] = settings_used
        return bundle, report, save_model(bundle, request.output, force=request.force)
    except (FitError, ModelError, ValueError) as exc:
        if isinstance(exc, refusal_classes()):
            raise  # (TrainingFolderError) a usage error, said by the Command
        raise fail(str(exc)) from None
    except OSError as exc:
        raise os_error(exc) from None
    finally:
        if dist is not None:  # the others wait until rank 0 has saved
            dist.barrier()
            dist.close()


def show_fit(bundle, report, path: Path, request, view: FitView) -> None:
    """The notes and warnings of a fit on stderr, then its summary: JSON, or a table and lines."""
    if view.verbose:
        for p, status, message in report.skipped:
            err.print(f"skipped {p}: {status} ({message})", highlight=False, markup=False)
    if not view.quiet:
        show_notes(report, request, view)
    summary = fit_summary(bundle, report, path)
    if view.json_out:
        print_json(summary)
        return
    print_fit_table(report, path)
    if summary["head"]:
        print_head_metrics(summary["head"])


def show_notes(report, request, view: FitView) -> None:
    for line in report.notes:
        note(line)
    # --min-steps raised the epochs: a note when the user asked for a number, else only the
    # summary's epoch count (the default is a starting point, not a request).
    if report.epochs_raised and view.epochs_given:
        note(f"trained {report.epochs_trained} epochs instead of the {report.epochs_requested} asked for, so that at "
             f"least --min-steps {request.config.train.min_steps} batches ran ({report.steps_per_epoch} an epoch; "
             "--min-steps 0 trains exactly --epochs)")
    for line in report.warnings:
        err.print(f"WARNING: {line}", highlight=False, markup=False)
    val_acc = report.metrics.get("val_accuracy")
    if val_acc is not None and val_acc < LOW_ACCURACY:
        note(f"held-out accuracy is low ({val_acc:.2f}): mislabelled, foreign or duplicate images may be in "
             f"{request.train_dir}; try `imgclean audit {request.train_dir}`")


def fit_summary(bundle, report, path: Path) -> dict:
    """What `fit --json` prints."""
    return {
        "model": os.fsdecode(path),
        "arch": report.arch,
        "input_size": report.input_size,
        "channels": report.channels,
        "classes": report.class_names,
        "images_per_class": report.images_per_class,
        "skipped": len(report.skipped),
        "epochs_requested": report.epochs_requested,
        "epochs_trained": report.epochs_trained,
        "backbone_trained": bool(bundle.config.get("backbone_trained", True)),
        "preprocessing": report.preprocessing,
        "weights_mapping": report.weights_mapping,
        "thresholds": report.thresholds,
        "calibration": report.calibration,
        "metrics": report.metrics,
        "warnings": report.warnings,
        "notes": report.notes,
        "head": (bundle.config.get("head") or {}).get("metrics"),
        "seconds": round(report.seconds, 2),
    }


def print_fit_table(report, path: Path) -> None:
    from rich.table import Table

    table = Table(title=f"imgclean model {path}")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("threshold", justify="right")
    for name, n, t in zip(report.class_names, report.images_per_class, report.thresholds, strict=True):
        table.add_row(name, str(n), f"{t:.3f}")
    out.print(table)
    m = report.metrics
    trained = report.epochs_trained

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    lines = [
        f"{report.arch} {report.input_size}px x{report.channels}, {sum(report.images_per_class)} images, "
        f"{len(report.skipped)} skipped, {trained if trained is not None else '?'} epochs"
        f"{' (backbone not trained: pretrained features, nearest-class predictions)' if trained == 0 else ''}, "
        f"{report.seconds:.1f}s",
        f"validation accuracy {fmt(m.get('val_accuracy'))}, macro-F1 {fmt(m.get('val_macro_f1'))}",
        calibration_line(report.calibration),
    ]
    if report.weights_mapping:
        lines.insert(1, f"weights: {describe_mapping(report.weights_mapping)}")
    out.print("\n".join(lines), highlight=False, markup=False)


def calibration_line(c: dict) -> str:
    """What the thresholds promise: the false-reject rate expected on new in-distribution images,
    its interval, and what it rests on (shared with `info`)."""
    if not isinstance(c, dict) or not c:
        return "thresholds: calibration not recorded (a model saved before imgclean recorded it)"
    try:
        asked = 100.0 - float(c["percentile"])
        n = int(c.get("held_out_images") or 0)
        if c.get("method") != "split-conformal" or not n:
            return (f"thresholds: not calibrated (no held-out images); {asked:g}% false rejects asked for, "
                    "likely more on new images")
        low, high = (float(v) for v in c["false_reject_interval"])
        rate = float(c["expected_false_reject_rate"])
        enough = "" if c.get("enough") else f"; too few images: {int(c['needed_held_out_images'])} held out are needed"
        return (f"false-reject rate on new in-distribution images: expected {100 * rate:.1f}% "
                f"({100 * float(c.get('interval_level', 0.9)):.0f}% interval {100 * low:.1f}-{100 * high:.1f}%; "
                f"{asked:g}% asked for), calibrated on {n} held-out images{enough}")
    except (KeyError, TypeError, ValueError):
        return "thresholds: calibration record unreadable"


def describe_mapping(w: dict) -> str:
    """config.json's weights_mapping as fit printed it (nn.weights.WeightsMapping.describe)."""
    try:
        from ..nn.weights import WeightsMapping

        return WeightsMapping(**w).describe()
    except (TypeError, ValueError):
        return str(w)[:200]


def print_head_metrics(h: dict) -> None:
    out.print(
        f"reject head: {h['normal_images']} normal vs {h['reject_images']} reject images "
        f"(pos_weight {h['pos_weight']:.4g}); on them: normal accepted {h['train_normal_accepted']:.4f}, "
        f"rejects rejected {h['train_rejects_rejected']:.4f}",
        highlight=False, markup=False,
    )


@command("fit-head")
def fit_head_command(
    reject_dir: Path = typer.Option(..., "--reject-dir", help="Folder of images that do NOT belong (a scan --move-to folder works as is)."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, "-m", "--model", help="Model directory made by `imgclean fit`; updated in place."),
    train_dir: Optional[Path] = typer.Option(None, "--train-dir", help="The model's training folder [default: the one recorded in config.json]."),
    device: Device = typer.Option(Device.auto, help="Where to embed and train."),
    json_out: bool = typer.Option(False, "--json", help="Print the head's training metrics as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Add (or replace) the supervised reject head of a model, without retraining the backbone."""
    from ..store.artifact import ModelError, load_model, save_model
    from ..pipeline.fit.headfit import HeadError, fit_head

    setup_logging(quiet, False)
    if not reject_dir.is_dir():
        raise usage_error(f"--reject-dir {reject_dir} does not exist or is not a folder")
    try:
        dev = resolve_device(device.value)
        bundle = load_model(model, device=dev)
        _, metrics = fit_head(bundle, reject_dir, train_dir, dev)
        bundle.model.to("cpu")
        path = save_model(bundle, model, force=True)
    except (HeadError, ModelError, ValueError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise os_error(exc) from None
    if json_out:
        print_json({"model": os.fsdecode(path), "head": metrics})
        return
    print_head_metrics(metrics)
    out.print(f"saved {path}", highlight=False, markup=False)
