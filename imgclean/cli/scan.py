"""scan: score every image in a folder (or one file, or the files a list names); report, and with
--move-to quarantine, the rejects."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer

from ..config import DEFAULT_MODEL_DIR
from .common import Device, Engine, Method, command, fail, log, make_progress, resolve_device, setup_logging, usage_error
from .options import (
    DryRun, FailOnReject, FailOnSkip, HtmlOut, JsonOut, KeepUnreadable, MoveTo, OverwriteReport, Quiet, ReportOut,
    ReviewSample, Verbose,
    config_option,
)
from .runs import (  # noqa: F401  (StopFlag, check_move_target, check_html_output: public names of cli.scan)
    Outcome, Printer, StopFlag, check_html_output, check_move_target, check_report_output, feed, finish, open_run,
)


def show_model_loading(bundle, progress, task) -> None:
    """While the network loads (at the first file to score), the bar says so instead of sitting still."""
    loader = getattr(bundle, "_loader", None)
    if loader is None or task is None:
        return

    def load():
        progress.update(task, description="loading model")
        try:
            return loader()
        finally:
            progress.update(task, description="scanning")

    bundle._loader = load


def check_engine(engine: Engine, address: Optional[str], workers: int, gpus: float, device: Device = Device.auto):
    """The Ray options (pipeline/engines/ray_engine.RayOptions) for --engine ray, None for local; a usage
    error for Ray options without it, one line on how to install Ray when it is missing."""
    given = [name for name, value in (("--ray-address", address), ("--ray-workers", workers),
                                      ("--ray-gpus-per-worker", gpus)) if value]
    if engine is not Engine.ray:
        if given:
            raise usage_error(f"{given[0]} needs --engine ray")
        return None
    if device not in (Device.auto, Device.cpu):
        raise usage_error(f"--device {device.value} is for the local engine; Ray workers use CUDA with --ray-gpus-per-worker")
    import importlib.util

    from ..pipeline.engines.ray_engine import INSTALL_HINT, RayOptions

    if importlib.util.find_spec("ray") is None:
        raise fail(INSTALL_HINT)
    if address is not None and not address.strip():
        raise usage_error("--ray-address is empty; give host:port or auto")
    return RayOptions(address=address.strip() if address else None, workers=workers, gpus_per_worker=gpus)


def scan_target(folder: Path, files_from: Optional[Path], null: bool):
    """What to scan (pipeline/scan/file_list.ScanTarget): FOLDER walked, one FILE alone, or (files
    given: [] until the list is opened) the names --files-from lists; usage errors for the rest."""
    from ..pipeline.scan.file_list import FileListError, scan_target as target_of

    if null and files_from is None:
        raise usage_error("--null says how --files-from LIST separates names; give --files-from too")
    try:
        return target_of(folder, [] if files_from is not None else None)
    except FileListError as exc:
        raise usage_error(f"{exc}" if files_from is None else f"{exc} (--files-from)") from None


def open_file_list(stack: contextlib.ExitStack, files_from: Path, null: bool, outputs: dict) -> Iterator:
    """The names --files-from LIST gives (`-`: standard input), read as the scan goes
    (file_list.read_names: bounded, a line too long is an error line). A usage error when LIST
    cannot be opened, or is one of this run's `outputs` ({option: path}) that writing would wipe."""
    from ..pipeline.scan.file_list import read_names

    if os.fsdecode(files_from) == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise usage_error("--files-from -: there is no standard input to read")
        return read_names(stdin, null)
    for option, path in outputs.items():
        if path is not None and os.path.realpath(path) == os.path.realpath(files_from):
            raise usage_error(f"--files-from {files_from} is also the {option} file, which the scan writes over")
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
    method: Optional[Method] = typer.Option(None, "--method", help="Who decides: the Mahalanobis thresholds (the paper), the energy score of the logits, the k-nearest-neighbour distance of the features, the supervised head (needs `fit-head`), both (Mahalanobis or head rejects), or the rule learned from reviews (needs `imgclean learn`) [default: the model's default method: mahalanobis, or what `imgclean learn` chose]."),
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
    from ..store.artifact import load_model
    from ..fileops import MANIFEST_NAME, quarantine_holding
    from ..pipeline.scan.scanner import ScanOptions, run_scan
    from ..pipeline.engines.scoring import check_method
    from ..detectors import registry
    from ..reports.records import RecordWriter

    setup_logging(quiet, verbose)
    target = scan_target(folder, files_from, null)
    # Resolved once: the walk, the lock, the moves and the review page all act on this folder.
    root = target.root
    base = folder if files_from is not None or target.files is None else root  # the folder as given
    holding = quarantine_holding(root)
    if holding is not None:
        what = "an imgclean quarantine" if holding == root else f"inside the imgclean quarantine {holding}"
        raise usage_error(
            f"{base} is {what} (it holds {MANIFEST_NAME}); review it with `imgclean report`, "
            "put files back with `imgclean restore`"
        )
    if dry_run and move_to is None:
        raise usage_error("--dry-run shows planned moves; give --move-to DIR too")
    ray_options = check_engine(engine, ray_address, ray_workers, ray_gpus_per_worker, device)
    exclude: tuple[Path, ...] = ()
    if move_to is not None:
        exclude = check_move_target(base, move_to)
    use_cache = not no_cache
    if use_cache:
        from ..store.cache import default_cache_dir

        cache_real = Path(os.path.realpath(cache_dir or default_cache_dir()))
        if cache_real.is_relative_to(root):
            if cache_dir is not None:
                raise usage_error(f"--cache-dir {cache_dir} is inside the scanned folder; choose a folder outside {base}")
            log.warning("the scan cache %s is inside the scanned folder; scanning without it", cache_real)
            use_cache = False
    if report is not None:
        check_report_output(report, move_to, overwrite_report)
    if html is not None:
        check_html_output(html, "--html", move_to)
    try:
        # With Ray the workers choose their device (--ray-gpus-per-worker); this process never runs the model.
        dev = "cpu" if ray_options is not None else resolve_device(device.value)
        # The network is loaded (and torch imported) when the first file needs scoring.
        bundle = load_model(model, device=dev, lazy=True)
        chosen = method.value if method is not None else registry.default_method(bundle.config)
        check_method(bundle, chosen)  # a ModelError is an ImgcleanError: the Command says it
    except ValueError as exc:
        raise fail(str(exc)) from None

    review = None
    if html is not None:
        from ..reports.review import ReviewCollector

        review = ReviewCollector(root=root, quarantine=move_to)
    printer = Printer(dry_run, json_out, verbose, keep_unreadable, progress=make_progress(quiet or json_out))
    with contextlib.ExitStack() as stack:
        files = target.files
        if files_from is not None:
            files = open_file_list(stack, files_from, null, {"--report": report, "--html": html})
        options = ScanOptions(
            batch_size=batch_size, workers=workers, keep_unreadable=keep_unreadable, exclude=exclude,
            use_cache=use_cache, cache_dir=cache_dir, method=chosen, engine=engine.value, engine_options=ray_options, files=files,
        )
        run = stack.enter_context(open_run(root, base, move_to, dry_run, report, review, printer, overwrite_report))
        writer = next((sink for sink in run.sinks if isinstance(sink, RecordWriter)), None)
        sampler = None
        if review_sample:
            from ..pipeline.scan.sample_pass import SampleCandidates

            sampler = SampleCandidates(review_sample, len(bundle.class_names))
            run.sinks.append(sampler)
        progress = run.progress
        if not progress.disable:
            from ..walk import count_images

            # From the folder listings alone (no stat per file): the walk itself happens once, in the scan.
            printer.total = count_images(root, exclude) if files is None else len(files) if files_from is None else None
            printer.task = progress.add_task("scanning", total=printer.total, info="")
            show_model_loading(bundle, progress, printer.task)
        from ..pipeline.scan import move_features

        moved_before = move_features.moves_now(run.quarantine)
        try:
            summary = run_scan(root, bundle, options, run.quarantine, dry_run, dev, feed(run.sinks), run.stop)
        except ValueError as exc:  # e.g. a method the model cannot serve (pipeline.scoring)
            raise fail(str(exc)) from None
        if run.quarantine is not None and not dry_run and not summary.interrupted and not run.stop():
            for line in move_features.record_moves(run.quarantine, bundle, moved_before, dev, run.stop).warnings:
                log.warning("%s", line)
    # A rescan the cache answered whole picks none: it loads no network (a warm nightly rescan stays
    # fast), and its files were offered for review by the scan that scored them.
    if sampler is not None and not summary.interrupted and summary.decoded:
        mark_review_sample(summary, sampler, bundle, root, dev, writer, review)
    outcome = Outcome(title=f"scan of {folder}", review_title=f"imgclean review: {folder}")
    finish(summary, outcome, printer, run.stop, json_out=json_out, quiet=quiet, review=review, html=html,
           fail_on_reject=fail_on_reject, fail_on_skip=fail_on_skip, allow_unlisted=allow_unlisted)
