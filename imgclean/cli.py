"""The command line: parse, call the library, print, map errors to exit codes.

Data (tables, JSON) goes to stdout; progress, logs and errors go to stderr.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import DEFAULT_MODEL_DIR, DEFAULT_PERCENTILE, FitConfig, TrainSettings

# Exit codes (documented in the README; each one is tested).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3  # scan --fail-on-reject found something to reject
EXIT_LOCKED = 4  # another scan holds the folder's lock
EXIT_SKIPPED = 5  # scan --fail-on-skip: some files were skipped or changed during the scan
EXIT_INTERRUPTED = 130  # SIGINT
EXIT_TERMINATED = 143  # SIGTERM

app = typer.Typer(
    name="imgclean",
    help="Keep image datasets clean: learn what belongs from labelled folders, then find and "
    "quarantine images that do not belong. Scores: higher = more out-of-distribution.",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("imgclean")


class Method(str, Enum):
    mahalanobis = "mahalanobis"
    head = "head"
    both = "both"


class Covariance(str, Enum):
    tied = "tied"
    per_class = "class"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print one clear error line and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(code)


def os_error(exc: OSError) -> typer.Exit:
    """An OSError as one line naming the file."""
    return fail(f"{exc.strerror or exc}: {os.fsdecode(exc.filename or '')}")


def usage_error(message: str) -> typer.Exit:
    return fail(message, EXIT_USAGE)


def setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    warnings.formatwarning = lambda message, *args, **kwargs: f"{message}"


def print_json(obj) -> None:
    # Plain print: rich would wrap or colour it; cron jobs parse this.
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=True) + "\n")
    sys.stdout.flush()


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"imgclean {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """imgclean: find images that do not belong in a dataset."""


def make_progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
        transient=False,
    )


# ---------------------------------------------------------------------------------------------
# Options a settings file may not set: the file itself, and what only makes sense per run.
NOT_IN_SETTINGS_FILE = {"config_file", "help", "force", "dry_run"}


def load_settings_file(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """--config: the file's values become the command's defaults, so flags still win."""
    from .config import SettingsFileError, read_settings_file

    if value is None or ctx.resilient_parsing:
        return value
    allowed = {p.name for p in settable_options(ctx.command)}
    try:
        settings = read_settings_file(value, ctx.info_name, allowed)
    except SettingsFileError as exc:
        raise typer.BadParameter(str(exc), param=param) from None
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


def settable_options(command) -> list:
    return [p for p in command.params if p.param_type_name == "option" and p.name not in NOT_IN_SETTINGS_FILE]


def config_option() -> Path:
    return typer.Option(
        None, "--config", is_eager=True, callback=load_settings_file, exists=False,
        help="YAML settings file (see `imgclean init-config`); flags given on the command line win.",
    )


def resolved_settings(ctx: typer.Context) -> dict:
    """Every option's final value, for the record (JSON-able)."""
    out = {}
    for key, value in ctx.params.items():
        if key in NOT_IN_SETTINGS_FILE:
            continue
        out[key] = value.value if isinstance(value, Enum) else os.fsdecode(value) if isinstance(value, Path) else value
    return out


@app.command()
def fit(
    ctx: typer.Context,
    train_dir: Path = typer.Argument(..., help="Folder with one sub-folder of images per class."),
    output: Path = typer.Option(DEFAULT_MODEL_DIR, "-o", "--output", help="Model directory to write."),
    arch: str = typer.Option("auto", help="'lenet', a timm model name (e.g. efficientnet_b0), or 'auto' (lenet for small images)."),
    input_size: Optional[int] = typer.Option(None, help="Square input size in pixels [default: from the data]."),
    channels: Optional[int] = typer.Option(None, help="1 (grayscale) or 3 (colour) [default: from the data]."),
    pretrained: bool = typer.Option(False, help="Start a timm model from its pretrained weights (needs them downloadable or cached)."),
    weights: Optional[Path] = typer.Option(None, help="Local state dict (.safetensors or .pth) for the backbone."),
    epochs: int = typer.Option(TrainSettings.epochs, min=1, help="Training epochs."),
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
    force: bool = typer.Option(False, "--force", help="Replace an existing model directory."),
    reject_dir: Optional[Path] = typer.Option(None, "--reject-dir", help="Folder of images that do NOT belong (e.g. a scan --move-to folder): also train the supervised reject head."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout instead of tables."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Name every skipped file and log details."),
    config_file: Optional[Path] = config_option(),
) -> None:
    """Train a model on a labelled image folder and calibrate its out-of-distribution thresholds."""
    from .artifact import ModelError, check_replaceable, save_model
    from .fit import FitError, fit_model

    setup_logging(quiet or json_out, verbose)
    if not train_dir.is_dir():
        raise usage_error(f"training folder {train_dir} does not exist or is not a folder")
    if channels not in (None, 1, 3):
        raise usage_error("--channels must be 1 or 3")
    if reject_dir is not None and not reject_dir.is_dir():
        raise usage_error(f"--reject-dir {reject_dir} does not exist or is not a folder")
    if output.exists() and not force:
        raise usage_error(f"{output} already exists; pass --force to replace it, or choose another --output")
    try:
        check_replaceable(output, force)  # before training, not after it
    except ModelError as exc:
        raise fail(str(exc)) from None
    settings = TrainSettings(
        epochs=epochs, min_steps=min_steps, batch_size=batch_size, lr=lr, center_weight=center_weight,
        val_fraction=val_fraction, augment=augment, seed=seed,
    )
    config = FitConfig(
        arch=arch, input_size=input_size, channels=channels, pretrained=pretrained, weights=weights,
        percentile=percentile, covariance=covariance.value, device=device.value, train=settings,
    )
    progress = make_progress(quiet or json_out)
    tasks: dict[str, int] = {}

    def on_progress(stage: str, done: int, total: int, info: dict) -> None:
        if stage == "decode":
            if "decode" not in tasks:
                tasks["decode"] = progress.add_task("decoding", total=total, info="")
            progress.update(tasks["decode"], completed=done)
        elif stage == "batch":
            n_epochs = info["epochs"]
            if "train" not in tasks:
                tasks["train"] = progress.add_task("training", total=total * n_epochs, info="")
            progress.update(
                tasks["train"], completed=(info["epoch"] - 1) * total + done,
                info=f"epoch {info['epoch']}/{n_epochs} batch {done}/{total} loss {info['loss']:.3f} acc {info['accuracy']:.3f}",
            )
        elif stage == "epoch" and not (quiet or json_out) and not err.is_terminal:
            va = info.get("val_accuracy")
            err.print(f"epoch {done}/{total}: loss {info['loss']:.4f}, train acc {info['train_accuracy']:.4f}"
                      + (f", val acc {va:.4f}" if va is not None else ""), highlight=False)
        elif stage == "embed":
            if "embed" not in tasks:
                tasks["embed"] = progress.add_task("calibrating", total=total, info="")
            progress.update(tasks["embed"], completed=done)

    try:
        with progress:
            bundle, report = fit_model(train_dir, config, on_progress, reject_dir=reject_dir)
        bundle.config["settings"] = resolved_settings(ctx)
        path = save_model(bundle, output, force=force)
    except (FitError, ModelError, ValueError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise os_error(exc) from None

    if verbose:
        for p, status, message in report.skipped:
            err.print(f"skipped {p}: {status} ({message})", highlight=False, markup=False)
    summary = {
        "model": os.fsdecode(path),
        "arch": report.arch,
        "input_size": report.input_size,
        "channels": report.channels,
        "classes": report.class_names,
        "images_per_class": report.images_per_class,
        "skipped": len(report.skipped),
        "thresholds": report.thresholds,
        "metrics": report.metrics,
        "head": (bundle.config.get("head") or {}).get("metrics"),
        "seconds": round(report.seconds, 2),
    }
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"imgclean model {path}")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("threshold", justify="right")
    for name, n, t in zip(report.class_names, report.images_per_class, report.thresholds):
        table.add_row(name, str(n), f"{t:.3f}")
    out.print(table)
    m = report.metrics

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    out.print(
        f"{report.arch} {report.input_size}px x{report.channels}, {sum(report.images_per_class)} images, "
        f"{len(report.skipped)} skipped, {report.seconds:.1f}s\n"
        f"validation accuracy {fmt(m.get('val_accuracy'))}, macro-F1 {fmt(m.get('val_macro_f1'))}, "
        f"threshold scale from held-out images {fmt(m.get('threshold_scale'))}, "
        f"held-out images rejected {fmt(m.get('val_rejected_fraction'))}",
        highlight=False,
    )
    if summary["head"]:
        print_head_metrics(summary["head"])


def print_head_metrics(h: dict) -> None:
    out.print(
        f"reject head: {h['normal_images']} normal vs {h['reject_images']} reject images "
        f"(pos_weight {h['pos_weight']:.4g}); on them: normal accepted {h['train_normal_accepted']:.4f}, "
        f"rejects rejected {h['train_rejects_rejected']:.4f}",
        highlight=False,
    )


@app.command("fit-head")
def fit_head_command(
    reject_dir: Path = typer.Option(..., "--reject-dir", help="Folder of images that do NOT belong (a scan --move-to folder works as is)."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, "-m", "--model", help="Model directory made by `imgclean fit`; updated in place."),
    train_dir: Optional[Path] = typer.Option(None, "--train-dir", help="The model's training folder [default: the one recorded in config.json]."),
    device: Device = typer.Option(Device.auto, help="Where to embed and train."),
    json_out: bool = typer.Option(False, "--json", help="Print the head's training metrics as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Add (or replace) the supervised reject head of a model, without retraining the backbone."""
    from .artifact import ModelError, load_model, save_model
    from .headfit import HeadError, fit_head
    from .models import pick_device

    setup_logging(quiet or json_out, False)
    if not reject_dir.is_dir():
        raise usage_error(f"--reject-dir {reject_dir} does not exist or is not a folder")
    try:
        dev = str(pick_device(device.value))
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
    out.print(f"saved {path}", highlight=False)


# ---------------------------------------------------------------------------------------------
class StopFlag:
    """SIGINT/SIGTERM set a flag; the scan finishes the file in flight, then stops."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signum == signal.SIGINT else EXIT_TERMINATED


def check_move_target(folder: Path, move_to: Path) -> tuple[Path, ...]:
    """Refuse a quarantine equal to or above the scanned folder; exclude it when inside."""
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(move_to))
    if target == root or root.is_relative_to(target):
        raise usage_error(f"--move-to {move_to} is the scanned folder or contains it; choose a folder outside {folder}")
    return (target,) if target.is_relative_to(root) else ()


def check_html_output(path: Path) -> None:
    """A review page must go to a file in an existing folder; say so before any long work."""
    if path.is_dir():
        raise usage_error(f"--html {path} is a folder; give a file name such as review.html")
    if not path.absolute().parent.is_dir():
        raise usage_error(f"--html {path}: folder {path.absolute().parent} does not exist")


@app.command()
def scan(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., help="Folder of images to check (searched recursively)."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, "-m", "--model", help="Model directory made by `imgclean fit`."),
    move_to: Optional[Path] = typer.Option(None, "--move-to", help="Move rejected files here (keeping their relative paths); without it, only report."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would move and change nothing."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write every record to this .csv or .jsonl file."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML review page (thumbnails, scores, histograms) to this file."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary on stdout."),
    fail_on_reject: bool = typer.Option(False, "--fail-on-reject", help=f"Exit with code {EXIT_REJECTED} when anything was rejected (for cron alerts)."),
    fail_on_skip: bool = typer.Option(False, "--fail-on-skip", help=f"Exit with code {EXIT_SKIPPED} when any file was skipped or changed during the scan (links, FIFOs, edited files)."),
    keep_unreadable: bool = typer.Option(False, "--keep-unreadable", help="Report unreadable, too large and unsupported files but leave them in place."),
    batch_size: int = typer.Option(256, min=1, help="Images scored per batch."),
    method: Method = typer.Option(Method.mahalanobis, "--method", help="Who decides: the Mahalanobis thresholds, the supervised head (needs `fit-head`), or both (rejected when either rejects)."),
    device: Device = typer.Option(Device.cpu, help="Where to run the model."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Print every rejected file on stderr."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Decode and score every file, ignoring results cached by earlier scans."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where the scan cache lives [default: $XDG_CACHE_HOME/imgclean or ~/.cache/imgclean]."),
    workers: int = typer.Option(0, "--workers", min=0, help="Decode threads [default: 0 = one per CPU core]."),
    config_file: Optional[Path] = config_option(),
) -> None:
    """Score every image in a folder; report, and with --move-to quarantine, the ones that do not belong."""
    from .artifact import ModelError, load_model
    from .locking import LockError, LockHeld, ScanLock
    from .moves import Quarantine, QuarantineError
    from .report import RecordWriter, report_format
    from .scan import ScanOptions, check_method, is_rejected, run_scan

    setup_logging(quiet or json_out, verbose)
    if not folder.is_dir():
        raise usage_error(f"folder {folder} does not exist or is not a folder")
    if dry_run and move_to is None:
        raise usage_error("--dry-run shows planned moves; give --move-to DIR too")
    exclude: tuple[Path, ...] = ()
    if move_to is not None:
        exclude = check_move_target(folder, move_to)
    use_cache = not no_cache
    if use_cache:
        from .cache import default_cache_dir

        cache_real = Path(os.path.realpath(cache_dir or default_cache_dir()))
        if cache_real.is_relative_to(os.path.realpath(folder)):
            if cache_dir is not None:
                raise usage_error(f"--cache-dir {cache_dir} is inside the scanned folder; choose a folder outside {folder}")
            log.warning("the scan cache %s is inside the scanned folder; scanning without it", cache_real)
            use_cache = False
    if report is not None:
        try:
            report_format(report)
        except ValueError as exc:
            raise usage_error(str(exc)) from None
    if html is not None:
        check_html_output(html)
    try:
        if device.value == "cpu":
            dev = "cpu"  # no torch import: a rescan whose files are all cached never needs it
        else:
            from .models import pick_device

            dev = str(pick_device(device.value))
        # The network is loaded (and torch imported) when the first file needs scoring.
        bundle = load_model(model, device=dev, lazy=True)
        check_method(bundle, method.value)
    except (ModelError, ValueError) as exc:
        raise fail(str(exc)) from None

    plan: list[dict] = []

    review = None
    if html is not None:
        from .html_report import ReviewCollector

        review = ReviewCollector(root=folder.absolute())

    def on_record(rec) -> None:
        if writer is not None:
            writer.write(rec)
        if review is not None:
            review.add(rec)
        if rec.action in ("would move", "moved"):
            if dry_run:
                plan.append({"source": rec.path, "destination": rec.destination, "reason": rec.status, "score": rec.score})
                if not json_out:
                    out.print(f"would move {rec.path!r} -> {rec.destination!r} ({rec.status})", highlight=False, markup=False)
            elif verbose:
                err.print(f"moved {rec.path!r} -> {rec.destination!r} ({rec.status})", highlight=False, markup=False)
        elif verbose and is_rejected(rec, keep_unreadable):
            err.print(f"{rec.status}: {rec.path!r} {rec.message}", highlight=False, markup=False)
        if progress_task is not None:
            progress.update(progress_task, advance=1, info=f"ok {counts['ok']} rejected {counts['rej']}")
        counts["ok" if rec.status == "ok" else "rej" if is_rejected(rec, keep_unreadable) else "other"] += 1

    counts = {"ok": 0, "rej": 0, "other": 0}
    options = ScanOptions(
        batch_size=batch_size, workers=workers, keep_unreadable=keep_unreadable, exclude=exclude,
        use_cache=use_cache, cache_dir=cache_dir, method=method.value,
    )
    progress = make_progress(quiet or json_out)
    progress_task = None
    writer = None
    moving = move_to is not None and not dry_run
    # Only runs that move files take the folder's lock: reports and dry runs write nothing there.
    lock = ScanLock(folder) if moving else None
    quarantine = None
    try:
        if lock is not None:
            try:
                lock.__enter__()
            except LockError as exc:
                lock = None
                raise fail(f"cannot lock {folder}: {exc}") from None
        quarantine = Quarantine(move_to) if move_to is not None else None
        if quarantine is not None and not dry_run:
            quarantine.open()
        if report is not None:
            writer = RecordWriter(report).__enter__()
        with StopFlag() as stop, progress:
            if not progress.disable:
                from .data import walk_images

                total = sum(1 for _ in walk_images(folder, exclude))
                progress_task = progress.add_task("scanning", total=total, info="")
            summary = run_scan(folder, bundle, options, quarantine, dry_run, dev, on_record, stop)
    except LockHeld as exc:
        raise fail(f"another imgclean scan is running on {folder} ({exc.holder}); try again when it ends", EXIT_LOCKED) from None
    except (QuarantineError, ModelError, ValueError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise os_error(exc) from None
    finally:
        report_error = None
        if writer is not None:
            try:
                writer.__exit__(None, None, None)
            except OSError as exc:  # e.g. the report's disk is full; still close the rest
                report_error = exc
        if moving and quarantine is not None:
            quarantine.close()
        if lock is not None:
            lock.__exit__(None, None, None)
        if report_error is not None:
            raise fail(f"{report_error.strerror or report_error}: {os.fsdecode(report_error.filename or '')}") from None

    result = summary.to_dict()
    if dry_run:
        result["plan"] = plan
    if json_out:
        print_json(result)
    else:
        table = Table(title=f"scan of {folder}")
        for key in ("scanned", "ok", "ood", "unreadable", "too_large", "unsupported", "skipped", "changed", "moved", "would_move", "move_errors"):
            if key in ("scanned", "ok", "ood", "unreadable") or result[key]:
                table.add_column(key, justify="right")
        table.add_row(*[str(result[c.header]) for c in table.columns])
        out.print(table)
    if review is not None:
        from .html_report import render_html, write_html

        note = "The scan was interrupted: this page covers the files scanned before it stopped." if summary.interrupted else ""
        try:
            write_html(html, render_html(review, title=f"imgclean review: {folder}", summary=result, note=note))
        except OSError as exc:
            raise fail(f"cannot write the review page {html}: {exc.strerror or exc}") from None
        if not json_out and not quiet:
            err.print(f"review page: {html}", highlight=False, markup=False)
    if summary.interrupted:
        raise typer.Exit(stop.exit_code)
    if summary.move_errors:
        raise fail(f"{summary.move_errors} file(s) could not be moved; see the report or run with --verbose")
    if fail_on_reject and summary.rejected:
        raise typer.Exit(EXIT_REJECTED)
    if fail_on_skip and (summary.counts["skipped"] or summary.counts["changed"]):
        raise typer.Exit(EXIT_SKIPPED)


# ---------------------------------------------------------------------------------------------
@app.command()
def evaluate(
    in_dir: Path = typer.Option(..., "--in", help="Labelled in-distribution images: one sub-folder per class, named as the model's classes."),
    ood_dir: Path = typer.Option(..., "--ood", help="Known out-of-distribution images (searched recursively)."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, "-m", "--model", help="Model directory made by `imgclean fit`."),
    method: Optional[Method] = typer.Option(None, "--method", help="Evaluate only this method [default: mahalanobis, plus head and both when the model has a head]."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write ROC curves here: roc_<method>.png and roc_<method>.csv."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    batch_size: int = typer.Option(256, min=1, help="Images scored per batch."),
    device: Device = typer.Option(Device.cpu, help="Where to run the model."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Name every unreadable file."),
) -> None:
    """Measure classification accuracy and out-of-distribution detection on labelled folders."""
    from .artifact import ModelError, load_model
    from .evaluate import EvaluateError, evaluate as run_evaluation, write_plots
    from .models import pick_device

    setup_logging(quiet or json_out, verbose)
    for option, folder in (("--in", in_dir), ("--ood", ood_dir)):
        if not folder.is_dir():
            raise usage_error(f"{option} {folder} does not exist or is not a folder")
    progress = make_progress(quiet or json_out)
    task = None

    def on_progress(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task("evaluating", total=total, info="")
        progress.update(task, completed=done)

    try:
        dev = str(pick_device(device.value))
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
    if result.unreadable and not json_out:
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
    table = Table(title="out-of-distribution detection (ood = positive class)")
    keys = ("precision", "recall", "f1", "false_reject_rate", "auroc", "aupr", "fpr_at_95_tpr")
    table.add_column("method")
    for key in keys:
        table.add_column(key, justify="right")
    for name in ("mahalanobis", "head", "both"):
        if name in result.results:
            table.add_row(name, *[f"{result.results[name][k]:.4f}" for k in keys])
    out.print(table)
    for path in written:
        err.print(f"wrote {os.fsdecode(path)}", highlight=False)


# ---------------------------------------------------------------------------------------------
@app.command()
def info(
    model: Path = typer.Argument(DEFAULT_MODEL_DIR, help="Model directory."),
    json_out: bool = typer.Option(False, "--json", help="Print the model's settings as JSON."),
) -> None:
    """Show a model's classes, thresholds, training settings and metrics."""
    import numpy as np

    from .artifact import DETECTOR_FILE, ModelError, read_config

    try:
        config = read_config(model)
        with np.load(model / DETECTOR_FILE, allow_pickle=False) as arrays:
            thresholds = arrays["thresholds"].tolist()
    except ModelError as exc:
        raise fail(str(exc)) from None
    except (OSError, KeyError, ValueError) as exc:
        raise fail(f"{model / DETECTOR_FILE} cannot be read ({exc})") from None
    if json_out:
        print_json({**config, "thresholds": thresholds})
        return
    table = Table(title=f"imgclean model {model}")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("threshold", justify="right")
    counts = (config.get("data") or {}).get("images_per_class") or [""] * len(config["class_names"])
    for name, n, t in zip(config["class_names"], counts, thresholds):
        table.add_row(str(name), str(n), f"{t:.3f}")
    out.print(table)
    settings = Table(show_header=False, title="settings")
    for key in ("arch", "input_size", "channels", "center_weight", "percentile", "created_at", "fingerprint"):
        settings.add_row(key, str(config.get(key)))
    for key, value in (config.get("training") or {}).items():
        settings.add_row(f"training.{key}", str(value))
    for key, value in (config.get("settings") or {}).items():
        settings.add_row(f"settings.{key}", str(value))
    for key, value in (config.get("metrics") or {}).items():
        settings.add_row(f"metrics.{key}", f"{value:.4f}" if isinstance(value, float) else str(value))
    head = config.get("head")
    settings.add_row("head", "yes (scan --method head|both)" if head else "no (add one with `imgclean fit-head`)")
    for key, value in ((head or {}).get("metrics") or {}).items():
        settings.add_row(f"head.{key}", f"{value:.4f}" if isinstance(value, float) else str(value))
    for key, value in (config.get("versions") or {}).items():
        settings.add_row(f"version.{key}", str(value))
    out.print(settings)


# ---------------------------------------------------------------------------------------------
@app.command()
def restore(
    quarantine_dir: Path = typer.Argument(..., help="The --move-to folder of earlier scans."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be restored and change nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Put quarantined files back where they came from, never overwriting anything."""
    from .moves import MANIFEST_NAME, QuarantineError, restore as restore_files

    if not (quarantine_dir / MANIFEST_NAME).is_file():
        raise usage_error(f"{quarantine_dir} has no {MANIFEST_NAME}; give the folder that scan --move-to filled")
    try:
        results = restore_files(quarantine_dir, dry_run=dry_run)
    except (QuarantineError, OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    if json_out:
        print_json({
            "dry_run": dry_run,
            "counts": counts,
            "files": [{"source": os.fsdecode(r.source), "destination": os.fsdecode(r.destination), "status": r.status, "message": r.message} for r in results],
        })
    else:
        for r in results:
            verb = "would restore" if dry_run and r.status == "restored" else r.status
            out.print(f"{verb}: {os.fsdecode(r.destination)!r} -> {os.fsdecode(r.source)!r} {r.message}", highlight=False, markup=False)
        out.print(f"{len(results)} record(s): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), highlight=False)
    problems = sum(v for k, v in counts.items() if k != "restored")
    if problems:
        raise fail(f"{problems} file(s) were not restored (see above)")


# ---------------------------------------------------------------------------------------------
def settings_file_template() -> str:
    """A commented imgclean.yaml listing every settable option of fit and scan at its default."""
    import yaml

    commands = typer.main.get_command(app).commands
    lines = [
        "# imgclean settings. Use with `imgclean fit --config FILE` or `imgclean scan --config FILE`.",
        "# Precedence: built-in defaults < this file < flags on the command line.",
        "# Every key is optional; unknown keys are errors.",
    ]
    for name in ("fit", "scan"):
        lines.append(f"{name}:")
        for opt in settable_options(commands[name]):
            default = opt.default.value if isinstance(opt.default, Enum) else opt.default
            default = os.fsdecode(default) if isinstance(default, Path) else default
            value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"  # {opt.help}")
            lines.append(f"  {opt.name}: {value}")
    return "\n".join(lines) + "\n"


@app.command("init-config")
def init_config(
    path: Path = typer.Argument(Path("imgclean.yaml"), help="Where to write the settings file."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Write a commented settings file with every fit and scan option at its default."""
    if path.exists() and not force:
        raise usage_error(f"{path} already exists; pass --force to replace it")
    try:
        path.write_text(settings_file_template(), encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror or exc}") from None
    err.print(f"wrote {path}", highlight=False)


@app.command()
def report(
    source: Path = typer.Argument(..., help="A `scan --report` file (.csv or .jsonl), a quarantine's imgclean-manifest.jsonl, or the quarantine folder."),
    output: Path = typer.Option(..., "-o", "--output", help="HTML file to write."),
    root: Optional[Path] = typer.Option(None, "--root", help="The folder that was scanned, to show thumbnails of files that were not moved (report paths are relative to it)."),
    max_thumbnails: int = typer.Option(500, min=0, help="Inline thumbnails for at most this many rejects (highest scores first)."),
    max_rows: int = typer.Option(5000, min=1, help="List at most this many files per rejection reason."),
) -> None:
    """Write a self-contained HTML review page for an earlier scan (from its report or quarantine manifest)."""
    from .html_report import ReviewInputError, load_input, render_html, write_html

    if not source.exists():
        raise usage_error(f"{source} does not exist; give a scan report (.csv/.jsonl) or an imgclean-manifest.jsonl")
    check_html_output(output)
    if os.path.realpath(output) == os.path.realpath(source):
        raise usage_error(f"-o {output} would overwrite the input; choose another file name")
    if root is not None and not root.is_dir():
        raise usage_error(f"--root {root} is not a folder")
    try:
        collector, info_ = load_input(source, root=root.absolute() if root else None, max_rows=max_rows)
        roots = info_["roots"]
        summary = {"root": ", ".join(roots)} if roots else {}
        page = render_html(collector, title=f"imgclean review: {source.name}", summary=summary,
                           source=f"{info_['kind']} {info_['path']}", max_thumbnails=max_thumbnails)
        write_html(output, page)
    except ReviewInputError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise os_error(exc) from None
    err.print(f"review page: {output} ({collector.total} record(s) from {info_['kind']})", highlight=False, markup=False)


def main() -> None:
    app()
