"""scan: score every image in a folder (or one file, or the files a list names); report, and with
--move-to quarantine, the rejects."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import typer

from ..config import DEFAULT_MODEL_DIR
from .common import Device, Engine, Method, command, fail, log, make_progress, resolve_device, setup_logging, usage_error
from .options import (
    DryRun, FailOnReject, FailOnSkip, HtmlOut, JsonOut, KeepUnreadable, MoveTo, OverwriteReport, Quiet, ReportOut,
    ReviewSample, Verbose,
    config_option, scan_method_help,
)
from .runs import (  # noqa: F401  (StopFlag, check_move_target, check_html_output: public names of cli.scan)
    Outcome, Printer, StopFlag, check_html_output, check_move_target, feed, finish, open_run,
)


def show_model_loading(bundle, progress, task) -> None:
    """While the network loads (at the first file to score), the bar says so instead of sitting still."""
    if task is None or not hasattr(bundle, "around_load"):
        return
    bundle.around_load(lambda: progress.update(task, description="loading model"),
                       lambda: progress.update(task, description="scanning"))


def open_file_list(stack: contextlib.ExitStack, files_from: Path, null: bool) -> Iterator:
    """The names --files-from LIST gives (`-`: standard input), read as the scan goes
    (file_list.read_names: bounded, a line too long is an error line). A usage error when LIST
    cannot be opened (the request has checked that the run writes over none of its outputs)."""
    from ..pipeline.scan.file_list import read_names

    if os.fsdecode(files_from) == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise usage_error("--files-from -: there is no standard input to read")
        return read_names(stdin, null)
    try:
        stream = stack.enter_context(open(files_from, "rb"))
    except OSError as exc:
        raise usage_error(f"--files-from {files_from}: {exc.strerror or exc}") from None
    return read_names(stream, null)


def mark_review_sample(summary, sampler, bundle, root: Path, device: str, writer, review) -> None:
    """After the scan: choose the review sample from the candidates `sampler` kept
    (pipeline/scan/sample_pass.py), count it in the summary, mark it in the report this run created
    (`writer`, reports/review_marks.py) and give it to the review page's collector. A sample that
    cannot be chosen or marked is a warning: the scan's own results stand."""
    from ..errors import ImgcleanError
    from ..pipeline.scan.sample_pass import choose_sample

    try:
        sample = choose_sample(bundle, root, sampler, device)
    except (ImgcleanError, OSError, ValueError, RuntimeError, ImportError, MemoryError) as exc:
        log.warning("no review sample: %s", exc)
        return
    summary.review_sample = len(sample)
    if writer is not None and sample:
        from ..reports.review_marks import ReviewMarkError, mark_report

        if not writer.created:
            log.warning("the review sample is not marked in %s: it was an existing file (--overwrite-report), "
                        "which is never replaced; write the report to a new name", writer.path)
        else:
            try:
                mark_report(writer.path, writer.written, {s.path: s.reason for s in sample})
            except ReviewMarkError as exc:
                log.warning("the review sample is not marked in %s: %s", writer.path, exc)
    if review is not None:
        for sampled in sample:
            review.add_sample(sampled.record())


@command()
def scan(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., metavar="PATH", help="Folder of images to check (searched recursively), or one file to check alone (its folder is the scanned folder: lock, cache and --move-to work as for the folder)."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, "-m", "--model", help="Model directory made by `imgclean fit`."),
    move_to: MoveTo = None,
    dry_run: DryRun = False,
    report: ReportOut = None,
    overwrite_report: OverwriteReport = False,
    html: HtmlOut = None,
    json_out: JsonOut = False,
    fail_on_reject: FailOnReject = False,
    fail_on_skip: FailOnSkip = False,
    review_sample: ReviewSample = 20,
    files_from: Optional[Path] = typer.Option(None, "--files-from", metavar="LIST", help="Check only the files LIST names, one per line (- reads standard input), inside the folder PATH; relative names are relative to the current folder, as find prints them. Any other name (outside PATH, missing, a link, a folder, hidden, in a quarantine) is a skipped record."),
    null: bool = typer.Option(False, "-0", "--null", help="--files-from LIST separates names with NUL bytes, as find -print0 writes them (names may hold newlines)."),
    allow_unlisted: bool = typer.Option(False, "--allow-unlisted", help="Exit 0 even when a folder inside the scan could not be listed (its files are not scanned; the report has a skipped record for it)."),
    keep_unreadable: KeepUnreadable = False,
    batch_size: int = typer.Option(256, min=1, help="Images scored per batch."),
    method: Optional[Method] = typer.Option(None, "--method", help=scan_method_help()),
    device: Device = typer.Option(Device.auto, help="Where to run the model (auto: a GPU when there is one)."),
    quiet: Quiet = False,
    verbose: Verbose = False,
    no_cache: bool = typer.Option(False, "--no-cache", help="Decode and score every file, ignoring results cached by earlier scans."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where the scan cache lives [default: $XDG_CACHE_HOME/imgclean or ~/.cache/imgclean]."),
    workers: int = typer.Option(0, "--workers", min=0, help="Decode workers: processes for many small images, threads for large photos (chosen automatically; IMGCLEAN_DECODE=threads|processes forces it) [default: 0 = one per CPU core]."),
    engine: Engine = typer.Option(Engine.local, "--engine", help="Where files are decoded and scored: local (this process) or ray (the workers of a Ray cluster; the walk, cache, report and moves stay in this process). ray needs `pip install 'imgclean[ray]'`."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --engine ray: the cluster to join, host:port or auto (the one `ray start` runs on this machine) [default: start a local Ray for this scan]."),
    ray_workers: int = typer.Option(0, "--ray-workers", min=0, help="With --engine ray: workers, one CPU each [default: 0 = one per CPU of the cluster, or one per GPU share]."),
    ray_gpus_per_worker: float = typer.Option(0.0, "--ray-gpus-per-worker", min=0.0, help="With --engine ray: the share of a GPU each worker takes (0.25: four per GPU); above 0 the workers score on CUDA."),
    config_file: Optional[Path] = config_option(),
) -> None:
    """Score every image in a folder (or one file, or the files --files-from lists); report, and with --move-to quarantine, the ones that do not belong."""
    from ..jobs.results import ExitRules
    from ..jobs.scan import ScanRequest

    setup_logging(quiet, verbose)
    request = ScanRequest(
        folder, model, move_to=move_to, dry_run=dry_run, report=report, overwrite_report=overwrite_report, html=html,
        files_from=files_from, null=null, method=method.value if method is not None else None, use_cache=not no_cache,
        cache_dir=cache_dir, keep_unreadable=keep_unreadable, batch_size=batch_size, workers=workers,
        device=device.value, engine=engine.value, ray_address=ray_address, ray_workers=ray_workers,
        ray_gpus_per_worker=ray_gpus_per_worker, review_sample=review_sample,
        rules=ExitRules(fail_on_reject, fail_on_skip, allow_unlisted),
    )
    run_scan_request(request, ScanView(str(folder), json_out, quiet, verbose))


@dataclass
class ScanView:
    """How the terminal shows a scan: the folder as given (titles), --json, -q, -v."""

    label: str
    json_out: bool
    quiet: bool
    verbose: bool


def run_scan_request(request, view: ScanView) -> None:
    """Check the request, load the model, scan with the run's resources open, then print and exit
    with the result's exit code."""
    from ..pipeline.scan.scanner import run_scan
    from ..reports.records import RecordWriter

    plan = request.check()
    # With Ray the workers choose their device (--ray-gpus-per-worker); this process never runs the model.
    dev = "cpu" if plan.ray is not None else resolve_device(request.device)
    try:
        bundle, method = request.load_model(dev)  # the network loads (torch too) when the first file needs scoring
    except ValueError as exc:
        raise fail(str(exc)) from None
    review = None
    if request.html is not None:
        from ..reports.review import ReviewCollector

        review = ReviewCollector(root=plan.root, quarantine=request.move_to)
    printer = Printer(request.dry_run, view.json_out, view.verbose, request.keep_unreadable,
                      progress=make_progress(view.quiet or view.json_out))
    with contextlib.ExitStack() as stack:
        files = None
        if request.files_from is not None:
            files = open_file_list(stack, request.files_from, request.null)
        options = request.options(plan, method, files)
        run = stack.enter_context(open_run(plan.root, plan.base, request.move_to, request.dry_run, request.report,
                                           review, printer, request.overwrite_report))
        writer = next((sink for sink in run.sinks if isinstance(sink, RecordWriter)), None)
        sampler = add_sampler(run, request.review_sample, bundle)
        show_progress(run, printer, bundle, plan, options.files, request.files_from)
        from ..pipeline.scan import move_features

        moved_before = move_features.moves_now(run.quarantine)
        try:
            summary = run_scan(plan.root, bundle, options, run.quarantine, request.dry_run, dev, feed(run.sinks),
                               run.stop)
        except ValueError as exc:  # a method the model cannot serve, found when it loads (pipeline.engines.scoring)
            raise fail(str(exc)) from None
        if run.quarantine is not None and not request.dry_run and not summary.interrupted and not run.stop():
            for line in move_features.record_moves(run.quarantine, bundle, moved_before, dev, run.stop).warnings:
                log.warning("%s", line)
    # A rescan the cache answered whole picks none: it loads no network (a warm nightly rescan stays
    # fast), and its files were offered for review by the scan that scored them.
    if sampler is not None and not summary.interrupted and summary.decoded:
        mark_review_sample(summary, sampler, bundle, plan.root, dev, writer, review)
    from ..jobs.results import ScanResult

    result = ScanResult(summary, rules=request.rules, stop_code=run.stop.exit_code)
    outcome = Outcome(title=f"scan of {view.label}", review_title=f"imgclean review: {view.label}")
    finish(result, outcome, printer, run.stop, json_out=view.json_out, quiet=view.quiet, review=review,
           html=request.html)


def add_sampler(run, review_sample: int, bundle):
    """The review sample's candidates, kept as the records go by (pipeline/scan/sample_pass.py); None for none."""
    if not review_sample:
        return None
    from ..pipeline.scan.sample_pass import SampleCandidates

    sampler = SampleCandidates(review_sample, len(bundle.class_names))
    run.sinks.append(sampler)
    return sampler


def show_progress(run, printer, bundle, plan, files, files_from) -> None:
    """The progress bar's task, counting to the folder's images (from its listings alone: no stat
    per file; the walk itself happens once, in the scan), to the files named, or to nothing
    known while --files-from is read as the scan goes."""
    progress = run.progress
    if progress.disable:
        return
    from ..walk import count_images

    printer.total = count_images(plan.root, plan.exclude) if files is None else len(files) if files_from is None else None
    printer.task = progress.add_task("scanning", total=printer.total, info="")
    show_model_loading(bundle, progress, printer.task)
