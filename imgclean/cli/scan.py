"""scan: score every image in a folder; report, and with --move-to quarantine, the rejects."""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..config import DEFAULT_MODEL_DIR
from .common import (
    EXIT_INTERRUPTED, EXIT_REJECTED, EXIT_SKIPPED, EXIT_TERMINATED, Device, Method, check_output_path, command, err,
    fail, locked, log, make_progress, os_error, out, print_json, resolve_device, setup_logging, usage_error,
)
from .options import config_option


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


def check_html_output(path: Path, option: str = "--html", move_to: Optional[Path] = None) -> None:
    """A review page must go to a file in an existing folder, outside any quarantine; say so
    before any long work."""
    if path.is_dir():
        raise usage_error(f"{option} {path} is a folder; give a file name such as review.html")
    if not path.absolute().parent.is_dir():
        raise usage_error(f"{option} {path}: folder {path.absolute().parent} does not exist")
    check_output_path(option, path, move_to)


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


@command()
def scan(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., help="Folder of images to check (searched recursively)."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, "-m", "--model", help="Model directory made by `imgclean fit`."),
    move_to: Optional[Path] = typer.Option(None, "--move-to", help="Move rejected files here (keeping their relative paths); without it, only report."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would move and change nothing."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write every record to this .csv or .jsonl (JSON lines) file."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML review page (thumbnails, scores, histograms) to this file."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary on stdout (warnings still go to stderr)."),
    fail_on_reject: bool = typer.Option(False, "--fail-on-reject", help=f"Exit with code {EXIT_REJECTED} when anything was rejected (for cron alerts)."),
    fail_on_skip: bool = typer.Option(False, "--fail-on-skip", help=f"Exit with code {EXIT_SKIPPED} when any file was skipped or changed during the scan (links, FIFOs, edited files)."),
    keep_unreadable: bool = typer.Option(False, "--keep-unreadable", help="Report unreadable, too large and unsupported files but leave them in place."),
    batch_size: int = typer.Option(256, min=1, help="Images scored per batch."),
    method: Method = typer.Option(Method.mahalanobis, "--method", help="Who decides: the Mahalanobis thresholds, the supervised head (needs `fit-head`), or both (rejected when either rejects)."),
    device: Device = typer.Option(Device.auto, help="Where to run the model (auto: a GPU when there is one)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Print every rejected file on stderr."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Decode and score every file, ignoring results cached by earlier scans."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where the scan cache lives [default: $XDG_CACHE_HOME/imgclean or ~/.cache/imgclean]."),
    workers: int = typer.Option(0, "--workers", min=0, help="Decode threads [default: 0 = one per CPU core]."),
    config_file: Optional[Path] = config_option(),
) -> None:
    """Score every image in a folder; report, and with --move-to quarantine, the ones that do not belong."""
    from ..store.artifact import ModelError, load_model
    from ..quarantine.locking import LockError, LockHeld, ScanLock
    from ..quarantine.moves import MANIFEST_NAME, Quarantine, QuarantineError, is_quarantine
    from ..reports.records import RecordWriter, report_format
    from ..pipeline.scan import ScanOptions, is_rejected, run_scan
    from ..pipeline.scoring import check_method

    setup_logging(quiet, verbose)
    if not folder.is_dir():
        raise usage_error(f"folder {folder} does not exist or is not a folder")
    if is_quarantine(folder):
        raise usage_error(
            f"{folder} is an imgclean quarantine (it holds {MANIFEST_NAME}); review it with `imgclean report`, "
            "put files back with `imgclean restore`"
        )
    # Resolved once: the walk, the lock, the moves and the review page all act on this folder.
    root = Path(os.path.realpath(folder))
    if dry_run and move_to is None:
        raise usage_error("--dry-run shows planned moves; give --move-to DIR too")
    exclude: tuple[Path, ...] = ()
    if move_to is not None:
        exclude = check_move_target(folder, move_to)
    use_cache = not no_cache
    if use_cache:
        from ..store.cache import default_cache_dir

        cache_real = Path(os.path.realpath(cache_dir or default_cache_dir()))
        if cache_real.is_relative_to(os.path.realpath(folder)):
            if cache_dir is not None:
                raise usage_error(f"--cache-dir {cache_dir} is inside the scanned folder; choose a folder outside {folder}")
            log.warning("the scan cache %s is inside the scanned folder; scanning without it", cache_real)
            use_cache = False
    if report is not None:
        try:
            report_format(report, write=True)
        except ValueError as exc:
            raise usage_error(str(exc)) from None
        check_output_path("--report", report, move_to)
    if html is not None:
        check_html_output(html, "--html", move_to)
    try:
        dev = resolve_device(device.value)
        # The network is loaded (and torch imported) when the first file needs scoring.
        bundle = load_model(model, device=dev, lazy=True)
        check_method(bundle, method.value)
    except (ModelError, ValueError) as exc:
        raise fail(str(exc)) from None

    plan: list[dict] = []
    counts = {"ok": 0, "rej": 0, "other": 0}
    review = None
    if html is not None:
        from ..reports.review import ReviewCollector

        review = ReviewCollector(root=root, quarantine=move_to)
    options = ScanOptions(
        batch_size=batch_size, workers=workers, keep_unreadable=keep_unreadable, exclude=exclude,
        use_cache=use_cache, cache_dir=cache_dir, method=method.value,
    )
    progress = make_progress(quiet or json_out)
    progress_task = None
    total: Optional[int] = None
    writer = None

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
        counts["ok" if rec.status == "ok" else "rej" if is_rejected(rec, keep_unreadable) else "other"] += 1
        if progress_task is not None:  # after counting, so the last update shows the exact totals
            progress.update(progress_task, advance=1, info=f"ok {counts['ok']} rejected {counts['rej']}")

    moving = move_to is not None and not dry_run
    # Only runs that move files take the folder's lock: reports and dry runs write nothing there.
    lock = ScanLock(root) if moving else None
    quarantine = None
    stop = None
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
                from ..data import walk_images

                total = sum(1 for _ in walk_images(root, exclude))
                progress_task = progress.add_task("scanning", total=total, info="")
                show_model_loading(bundle, progress, progress_task)
            summary = run_scan(root, bundle, options, quarantine, dry_run, dev, on_record, stop)
    except LockHeld as exc:
        raise locked(exc) from None
    except (QuarantineError, ModelError, ValueError, LockError) as exc:
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
        from ..reports.review import render_html, write_html

        note_text = "The scan was interrupted: this page covers the files scanned before it stopped." if summary.interrupted else ""
        try:
            write_html(html, render_html(review, title=f"imgclean review: {folder}", summary=result, note=note_text))
        except OSError as exc:
            raise fail(f"cannot write the review page {html}: {exc.strerror or exc}") from None
        if not json_out and not quiet:
            err.print(f"review page: {html}", highlight=False, markup=False)
    if summary.interrupted:
        if not quiet:
            of = f" of {total}" if total is not None else ""
            err.print(f"interrupted after {result['scanned']}{of} files; the rest were not scanned", highlight=False, markup=False)
        raise typer.Exit(stop.exit_code)
    if summary.move_errors:
        raise fail(f"{summary.move_errors} file(s) could not be moved; see the report or run with --verbose")
    if fail_on_reject and summary.rejected:
        raise typer.Exit(EXIT_REJECTED)
    if fail_on_skip and (summary.counts["skipped"] or summary.counts["changed"]):
        raise typer.Exit(EXIT_SKIPPED)
