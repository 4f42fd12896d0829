"""evaluate and info: measure a model, show a model."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import os
from pathlib import Path
from typing import Optional

import typer

from ..config import DEFAULT_MODEL_DIR
from ..detectors.registry import method_names
from .common import (
    Device, Method, command, err, fail, make_progress, os_error, out, print_json, resolve_device, setup_logging,
)
from .options import evaluate_method_help
from .train import calibration_line, describe_mapping


# evaluate's table: (result key, column header); the legend names the short ones.
EVALUATE_COLUMNS = (("precision", "prec"), ("recall", "recall"), ("f1", "F1"), ("false_reject_rate", "FRR"),
                    ("auroc", "AUROC"), ("aupr", "AUPR"), ("fpr_at_95_tpr", "FPR95"))
EVALUATE_LEGEND = ("prec, recall, F1: of the rejections (ood = positive); FRR: share of in-distribution images "
                   "rejected; FPR95: share of them rejected at 95% recall (--json: the full names)")


@command()
def evaluate(
    in_dir: Path = typer.Option(..., "--in", help="Labelled in-distribution images: one sub-folder per class, named as the model's classes."),
    ood_dir: Path = typer.Option(..., "--ood", help="Known out-of-distribution images (searched recursively)."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, "-m", "--model", help="Model directory made by `imgclean fit`."),
    method: Optional[Method] = typer.Option(None, "--method", help=evaluate_method_help()),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write ROC curves here: roc_<method>.png and roc_<method>.csv."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    batch_size: int = typer.Option(256, min=1, help="Images scored per batch."),
    device: Device = typer.Option(Device.auto, help="Where to run the model (auto: a GPU when there is one)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Name every unreadable file."),
) -> None:
    """Measure classification accuracy and out-of-distribution detection on labelled folders."""
    from ..store.artifact import ModelError, load_model
    from ..pipeline.evaluate import EvaluateError, evaluate as run_evaluation, write_plots

    from ..jobs.evaluate import EvaluateRequest

    setup_logging(quiet, verbose)
    EvaluateRequest(in_dir, ood_dir, model, [method.value] if method else None, batch_size, plots).check()
    progress = make_progress(quiet or json_out)
    task = None

    def on_progress(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task("evaluating", total=total, info="")
        progress.update(task, completed=done)

    try:
        dev = resolve_device(device.value)
        bundle = load_model(model, device=dev)
        with progress:
            result = run_evaluation(
                bundle, in_dir, ood_dir, [method.value] if method else None, batch_size, dev, on_progress
            )
        written = write_plots(result, plots) if plots is not None else []
    except (EvaluateError, ModelError, ValueError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise os_error(exc) from None

    for path, status, message in result.unreadable:
        if verbose:
            err.print(f"{status}: {path!r} {message}", highlight=False, markup=False)
    if result.unreadable and not quiet:
        err.print(f"{len(result.unreadable)} file(s) could not be decoded and are left out of the metrics", highlight=False)
    if json_out:
        print_json({**result.results, "unreadable": [p for p, _, _ in result.unreadable], "plots": [os.fsdecode(p) for p in written]})
        return
    c = result.results["classification"]
    n = result.results["counts"]
    out.print(
        f"{n['in_distribution']} in-distribution, {n['out_of_distribution']} out-of-distribution images; "
        f"classification accuracy {c['accuracy']:.4f}, macro-F1 {c['macro_f1']:.4f}",
        highlight=False,
    )
    from rich import box
    from rich.table import Table

    # Short headers (the legend below says what they are): 8 columns of at most 11 characters
    # fit 80 columns without truncating a header or a number.
    table = Table(title="out-of-distribution detection (ood = positive class)", box=box.SIMPLE_HEAD)
    table.add_column("method", no_wrap=True)
    for _, header in EVALUATE_COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    for name in method_names():
        if name in result.results:
            table.add_row(name, *[f"{result.results[name][k]:.4f}" for k, _ in EVALUATE_COLUMNS])
    out.print(table)
    out.print(EVALUATE_LEGEND, highlight=False, markup=False)
    for path in written:
        err.print(f"wrote {os.fsdecode(path)}", highlight=False, markup=False)


@command()
def info(
    model: Path = typer.Argument(DEFAULT_MODEL_DIR, help="Model directory."),
    json_out: bool = typer.Option(False, "--json", help="Print the model's settings as JSON."),
) -> None:
    """Show a model's classes, thresholds, detectors, training settings (epochs trained) and metrics."""
    from ..store.artifact import ModelError, inspect_model

    setup_logging(False, False)
    try:
        described = inspect_model(model)
    except ModelError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise os_error(exc) from None
    config, thresholds = described.config, described.thresholds
    from ..store.model_history import versions

    kept = [v.summary() for v in versions(model)]
    if json_out:
        print_json({**config, "thresholds": thresholds, "methods": described.methods,
                    "detector_settings": described.detectors, "model_versions": kept})
        return
    from rich.table import Table

    table = Table(title=f"imgclean model {model}")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("threshold", justify="right")
    k = len(config["class_names"])
    counts = list((config.get("data") or {}).get("images_per_class") or [])[:k]
    counts += [""] * (k - len(counts))
    for name, n, t in zip(config["class_names"], counts, thresholds, strict=True):
        table.add_row(str(name), str(n), f"{t:.3f}")
    out.print(table)
    settings = Table(show_header=False, title="settings")
    training = config.get("training") or {}
    for key in ("arch", "input_size", "channels", "interpolation", "crop_pct", "mean", "std",
                "center_weight", "percentile", "created_at", "fingerprint"):
        settings.add_row(key, str(config.get(key)))
    # Epochs actually trained first: --min-steps may have raised them above the epochs asked for.
    # (models written before training.epochs_trained recorded it as metrics.epochs)
    trained = training.get("epochs_trained", (config.get("metrics") or {}).get("epochs", "not recorded"))
    settings.add_row("training.epochs_trained", str(trained))
    for key, value in training.items():
        if key != "epochs_trained":
            settings.add_row(f"training.{key}", str(value))
    for key, value in (config.get("settings") or {}).items():
        settings.add_row(f"settings.{key}", str(value))
    for key, value in (config.get("metrics") or {}).items():
        settings.add_row(f"metrics.{key}", f"{value:.4f}" if isinstance(value, float) else str(value))
    settings.add_row("calibration", calibration_line(config.get("calibration")))
    weights = config.get("weights_mapping")
    if isinstance(weights, dict):
        settings.add_row("weights_mapping", describe_mapping(weights))
    settings.add_row("methods", ", ".join(described.methods))
    for name, values in described.detectors.items():
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}
        settings.add_row(f"detector.{name}", ", ".join(f"{k}={v}" for k, v in shown.items()) or "yes")
    head = config.get("head")
    settings.add_row("head", "yes (scan --method head|both)" if head else "no (add one with `imgclean fit-head`)")
    for key, value in ((head or {}).get("metrics") or {}).items():
        settings.add_row(f"head.{key}", f"{value:.4f}" if isinstance(value, float) else str(value))
    for key, value in (config.get("versions") or {}).items():
        settings.add_row(f"version.{key}", str(value))
    for key, value in learned_rows(config, kept):
        settings.add_row(key, value)
    out.print(settings)
    for line in model_warnings(config):
        out.print(f"WARNING: {line}", highlight=False, markup=False)


def model_warnings(config: dict) -> list[str]:
    """What fit warned about when it made this model (config.json's fit_warnings; the calibration's
    warning among them), as strings; anything else found there is ignored."""
    found = config.get("fit_warnings")
    lines = [w for w in found if isinstance(w, str)] if isinstance(found, list) else []
    calibration = config.get("calibration")
    warning = calibration.get("warning") if isinstance(calibration, dict) else None
    if isinstance(warning, str) and warning not in lines:
        lines.append(warning)
    return lines


def learned_rows(config: dict, kept: list[dict]) -> list[tuple[str, str]]:
    """info's lines for `imgclean learn`: the default method, what the learned rule learned from
    and why it is (or is not) the default, and the versions kept in MODEL/versions/."""
    from ..detectors.registry import default_method

    rows = [("default_method", default_method(config))]
    learned = config.get("learned")
    if isinstance(learned, dict):
        decisions = learned.get("decisions")
        if isinstance(decisions, dict):
            rows.append(("learned.decisions", ", ".join(f"{k} {v}" for k, v in decisions.items() if v) or "none"))
        rows.append(("learned.reason", str(learned.get("reason"))))
    for v in kept:
        what = v["problem"] or (f"saved {v['created_at']}, default {v['default_method']}"
                                + (f", learned from {v['decisions']}" if v["decisions"] else ""))
        rows.append((f"versions/{v['version']}", what))
    return rows
