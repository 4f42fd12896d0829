"""audit: check a training folder for wrong labels, foreign pictures, duplicates, unreadable files."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import contextlib
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..detectors.registry import unsupervised
from ..jobs import ISSUE_NAMES
from .common import (
    Device, command, err, fail, make_progress, os_error, out, print_json, resolve_device, rich_console, setup_logging,
)
from .console import counts_table
from .options import REPORT_EXTENSIONS, DryRun, JsonOut, KeepUnreadable, OverwriteReport, Quiet, Verbose, config_option
from .runs import StopFlag, enter_quarantine, exit_with

# The audit's methods: the detectors fitted from the training images alone (detectors/registry.py).
AuditMethod = Enum("AuditMethod", {cls.name: cls.name for cls in unsupervised()}, type=str)
SHOWN_PER_ISSUE = 10  # findings listed per issue on the terminal (all of them with -v)


class _Progress:
    """The terminal's progress callback for run_audit: decode, hashing, folds (epochs), near search."""

    def __init__(self, progress):
        self.progress = progress
        self.tasks: dict[str, object] = {}

    def __call__(self, stage: str, done: int, total: int, info: dict) -> None:
        p = self.progress
        if stage == "fold":
            epochs = max(1, int(info.get("epochs") or 1))
            if "fold" not in self.tasks:
                self.tasks["fold"] = p.add_task("cross-fitting", total=total * epochs, info="")
            task = self.tasks["fold"]
            p.update(task, total=total * epochs, completed=min(done, total - 1) * epochs + int(info.get("epoch", 0))
                     if done < total else total * epochs, info=f"fold {min(done + 1, total)}/{total}")
            return
        label = {"decode": "decoding", "hash": "hashing", "near": "near duplicates"}.get(stage, stage)
        if stage not in self.tasks:
            self.tasks[stage] = p.add_task(label, total=total, info="")
        p.update(self.tasks[stage], completed=done, total=total)


@command()
def audit(
    ctx: typer.Context,
    train_dir: Path = typer.Argument(..., help="Training folder to check: one sub-folder per class, as for `fit`."),
    model: Optional[Path] = typer.Option(None, "-m", "--model", help="A model made by `imgclean fit` on this folder: the folds are trained with its settings (architecture, input size, epochs, lambda...) and its features find near duplicates. It never scores its own training images [default: fit's defaults]."),
    report: Optional[Path] = typer.Option(None, "--report", help=f"Write one record per file to this file: {REPORT_EXTENSIONS}."),
    overwrite_report: OverwriteReport = False,
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML review page of the findings (thumbnails; duplicates side by side)."),
    json_out: JsonOut = False,
    folds: int = typer.Option(4, "--folds", min=2, help="Cross-fitting folds: each image is judged by a model trained on the other folds."),
    method: AuditMethod = typer.Option("mahalanobis", "--method", help="Detector for foreign pictures, fitted per fold on the other folds' features."),
    percentile: float = typer.Option(99.5, "--percentile", min=50.0, max=99.99, help="Detector threshold percentile: higher flags fewer outliers."),
    trim: float = typer.Option(0.02, "--trim", min=0.0, max=0.2, help="Share of each fold's training images left out of the detector's second fit (a folder's own foreign pictures would widen it)."),
    near_threshold: float = typer.Option(0.998, "--near-threshold", min=0.5, max=1.0, help="Cosine similarity of deep features from which two pictures are near duplicates (their pixels must correlate too)."),
    no_near: bool = typer.Option(False, "--no-near", help="Look for exact duplicates only."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs per fold [default: the -m model's, else 20]."),
    min_steps: Optional[int] = typer.Option(None, "--min-steps", min=0, help="Train each fold for at least this many batches, as fit's --min-steps [default: the -m model's, else fit's]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Training batch size of the fold models [default: the -m model's, else fit's]."),
    move_to: Optional[Path] = typer.Option(None, "--move-to", help="Move flagged files here (keeping their relative paths; later copies of duplicates only, never the original); `imgclean restore` puts them back. Without it, only report."),
    move_issues: str = typer.Option(",".join(ISSUE_NAMES), "--move-issues", help="Which issues --move-to moves (comma-separated)."),
    dry_run: DryRun = False,
    keep_unreadable: KeepUnreadable = False,
    device: Device = typer.Option(Device.auto, help="Where to train and run the fold models."),
    seed: int = typer.Option(0, "--seed", help="Seed of the folds and of the fold models."),
    quiet: Quiet = False,
    verbose: Verbose = False,
    config_file: Optional[Path] = config_option(),
) -> None:
    """Check a training folder: wrong labels, foreign pictures, duplicates, unreadable files.

    Each image is judged out of sample: K models are trained with fit's recipe, each on all
    folds but one, and judge only the fold they never saw. Label issues by confident learning
    (the classifier confidently prefers another class), foreign pictures by the detector
    (--method), exact duplicates by bytes and pixels, near duplicates by deep features. One
    issue per file: unreadable > duplicate > outlier > label_issue. Exit code 3 when anything
    is found (0 when the folder is clean).
    """
    from ..jobs.audit import AuditRequest

    setup_logging(quiet, verbose)
    request = AuditRequest(
        train_dir, dict(folds=folds, method=method.value, percentile=percentile, trim=trim,
                        near_threshold=None if no_near else near_threshold, epochs=epochs, min_steps=min_steps,
                        batch_size=batch_size, seed=seed),
        model=model, move_to=move_to, move_issues=_split(move_issues), dry_run=dry_run,
        keep_unreadable=keep_unreadable, report=report, overwrite_report=overwrite_report, html=html,
    )
    options = request.check()
    try:
        dev = resolve_device(device.value)
        bundle = None
        if model is not None:
            from ..store.artifact import load_model

            bundle = load_model(model, device=dev)
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        run = _run(request, options, bundle, dev, quiet, json_out)
    except OSError as exc:
        raise os_error(exc) from None
    _write_page(request, run)
    _print(run, run.summary, json_out, quiet, verbose, dry_run, html)
    exit_with(run)


def _split(value: str) -> tuple:
    return tuple(v.strip() for v in value.split(","))


def _run(request, options, bundle, dev: str, quiet: bool, json_out: bool):
    """Lock, open the quarantine, audit, move what was found, write the report; the jobs.results.AuditRun."""
    from ..jobs.results import AuditRun
    from ..pipeline.audit.auditor import AuditInterrupted, apply_audit, run_audit

    root = request.root
    progress = make_progress(quiet or json_out)
    with contextlib.ExitStack() as stack:
        quarantine = enter_quarantine(stack, root, request.train_dir, request.move_to, request.dry_run)
        stop = stack.enter_context(StopFlag())
        with progress:
            try:
                result = run_audit(request.train_dir, options, bundle=bundle, device=dev,
                                   progress=_Progress(progress), should_stop=stop)
            except AuditInterrupted:
                if not quiet:
                    err.print("interrupted while training; nothing was moved", highlight=False, markup=False)
                raise typer.Exit(stop.exit_code) from None
        if quarantine is not None:
            apply_audit(result.records, root, result.summary, quarantine, request.dry_run, request.keep_unreadable,
                        request.move_issues, should_stop=stop)
        if request.report is not None:
            from ..reports.audit_records import AuditWriter

            with AuditWriter(request.report, root, request.overwrite_report) as writer:
                for rec in result.records:
                    writer.write(rec)
    return AuditRun(result.records, result.summary, result.class_names, stop_code=stop.exit_code)


def _write_page(request, run) -> None:
    if request.html is None:
        return
    from ..reports.review.audit_page import render_audit_html
    from ..reports.review.page import write_html

    page = render_audit_html(run.records, run.summary.to_dict(), root=request.root, quarantine=request.move_to,
                             title=f"imgclean audit: {request.train_dir}")
    try:
        write_html(request.html, page)
    except OSError as exc:
        raise fail(f"cannot write the review page {request.html}: {exc.strerror or exc}") from None


def _print(result, summary, json_out: bool, quiet: bool, verbose: bool, dry_run: bool, html) -> None:
    data = summary.to_dict()
    if dry_run:
        data["plan"] = [{"source": r.path, "destination": r.destination, "issue": r.issue}
                        for r in result.records if r.action == "would move"]
    if json_out:
        print_json(data)
        return
    shown: dict[str, int] = {}
    for r in result.records:
        if r.issue == "ok":
            continue
        shown[r.issue] = shown.get(r.issue, 0) + 1
        if verbose or shown[r.issue] <= SHOWN_PER_ISSUE:
            action = f" [{r.action}{' -> ' + r.destination if r.destination else ''}]" if r.action else ""
            out.print(f"{r.issue}: {r.path!r} {r.message}{action}", highlight=False, markup=False)
    for issue, n in shown.items():
        if not verbose and n > SHOWN_PER_ISSUE and not quiet:
            err.print(f"... {n - SHOWN_PER_ISSUE} more {issue} (see --report, or -v)", highlight=False, markup=False)
    keys = ["images", "ok", "label_issues", "outliers", "duplicates", "unreadable"]
    keys += [k for k in ("moved", "would_move", "changed", "move_errors") if data[k]]
    console = rich_console(out)
    out.print(counts_table(f"audit of {summary.root}", {k: data[k] for k in keys}, console.width))
    if not quiet:
        acc = data["held_out_accuracy"]
        err.print(f"{data['folds']} folds, out-of-sample accuracy {acc:.4f}, settings from {data['settings_from']}, "
                  f"{data['seconds']:.1f}s" if acc is not None else f"{data['folds']} folds", highlight=False, markup=False)
        if html is not None:
            err.print(f"review page: {html}", highlight=False, markup=False)
