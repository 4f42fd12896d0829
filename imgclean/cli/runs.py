"""What the commands that move files (scan, apply) share: the checks on their paths, the stop
flag, the resources of a run (lock, quarantine, report writer, stop flag, progress) in one
ExitStack, the record sinks the run feeds, and the summary they print."""
from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import typer

from ..jobs.base import check_html_output, check_report_output  # noqa: F401  (public names of cli.runs)
from .common import EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_TERMINATED, err, fail, os_error, out, print_json, rich_console


class StopFlag:
    """SIGINT, SIGTERM and SIGHUP (a closed terminal, a cron session ending) set a flag; the run
    finishes the file in flight, then stops with the signal's exit code (130, 143, 129)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
        for sig in self.SIGNALS:
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
        if self.signum == getattr(signal, "SIGHUP", None):
            return EXIT_HANGUP
        return EXIT_INTERRUPTED if self.signum == signal.SIGINT else EXIT_TERMINATED

    @property
    def hung_up(self) -> bool:
        """The terminal went away: printing may fail (EIO), and that must not hide the exit code."""
        return self.signum is not None and self.signum == getattr(signal, "SIGHUP", None)


def check_move_target(folder: Path, move_to: Path) -> tuple[Path, ...]:
    """The quarantine's exclusion from a walk of `folder`; one equal to or above it is refused
    (QuarantinePlacementError: the Command says it as a usage error)."""
    from ..jobs.base import quarantine_placement

    return quarantine_placement(folder, move_to)


@dataclass
class Printer:
    """The terminal's record sink: planned moves on stdout in a dry run (kept for --json),
    moves and rejects on stderr with -v, and the progress bar's counts."""

    dry_run: bool
    json_out: bool
    verbose: bool
    keep_unreadable: bool
    progress: object = None
    task: object = None
    total: Optional[int] = None  # what the progress bar counts to, when known
    plan: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "rej": 0, "other": 0})
    _unshown: int = 0  # records counted and not yet shown on the bar
    _shown_at: float = 0.0

    def __call__(self, rec) -> None:
        rejected = _is_rejected(rec, self.keep_unreadable)
        if rec.action in ("would move", "moved"):
            if self.dry_run:
                self.plan.append({"source": rec.path, "destination": rec.destination, "reason": rec.status, "score": rec.score})
                if not self.json_out:
                    out.print(f"would move {rec.path!r} -> {rec.destination!r} ({rec.status})", highlight=False, markup=False)
            elif self.verbose:
                err.print(f"moved {rec.path!r} -> {rec.destination!r} ({rec.status})", highlight=False, markup=False)
        elif self.verbose and rejected:
            err.print(f"{rec.status}: {rec.path!r} {rec.message}", highlight=False, markup=False)
        self.counts["ok" if rec.status == "ok" else "rej" if rejected else "other"] += 1
        if self.task is not None:
            self._unshown += 1
            now = time.monotonic()
            if now - self._shown_at >= PROGRESS_EVERY_S:
                self.flush(now)

    def write_block(self, block) -> None:
        """A block of records (reports.record_blocks.RecordBlock): counted at once, unless a record of
        it is to be shown (a dry run's plan, -v)."""
        if self.dry_run or self.verbose:
            for record in block.records():
                self(record)
            return
        ok = block.status_counts().get("ok", 0)
        rej = block.rejected(self.keep_unreadable)
        self.counts["ok"] += ok
        self.counts["rej"] += rej
        self.counts["other"] += len(block) - ok - rej
        if self.task is not None:
            self._unshown += len(block)
            now = time.monotonic()
            if now - self._shown_at >= PROGRESS_EVERY_S:
                self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Show the counts so far on the bar (records are shown at most every PROGRESS_EVERY_S;
        the run's resources call this once more before the bar closes, so it ends exact)."""
        if self.task is not None and self._unshown:
            self.progress.update(self.task, advance=self._unshown, info=f"ok {self.counts['ok']} rejected {self.counts['rej']}")
            self._unshown = 0
            self._shown_at = time.monotonic() if now is None else now


def _is_rejected(rec, keep_unreadable: bool) -> bool:
    """reports.records.is_rejected, imported at the first record (not at the CLI's start) and
    kept in _REJECTED for the records after it."""
    return (_REJECTED or _load_is_rejected())(rec, keep_unreadable)


_REJECTED: Optional[Callable] = None  # reports.records.is_rejected, once a record has needed it


def _load_is_rejected() -> Callable:
    global _REJECTED
    from ..reports.records import is_rejected

    _REJECTED = is_rejected
    return is_rejected


# How often the progress bar is updated: per record, rich's update costs more than the record.
PROGRESS_EVERY_S = 0.1


def feed(sinks: list[Callable]) -> Callable:
    """One on_record callback that gives each record to every sink, in order. Its `block`
    gives a block of records (reports.record_blocks.RecordBlock) to each sink: whole to a sink with
    a `write_block` method, record by record to the others."""

    def on_record(record) -> None:
        for sink in sinks:
            sink(record)

    def block(records) -> None:
        for sink in sinks:
            write_block = getattr(sink, "write_block", None)
            if write_block is not None:
                write_block(records)
            else:
                for record in records.records():
                    sink(record)

    on_record.block = block
    return on_record


@dataclass
class Resources:
    """What a run holds while it runs (all entered on one ExitStack by :func:`open_run`)."""

    quarantine: object
    stop: StopFlag
    progress: object
    sinks: list[Callable]
    printer: Printer


def enter_quarantine(stack: contextlib.ExitStack, root: Path, label: Path, move_to: Optional[Path], dry_run: bool):
    """For a run that moves files (`move_to`): lock `root` and open the quarantine on `stack`
    (a dry run does neither: it writes nothing), and return the Quarantine; None otherwise. The
    quarantine's modules are imported only then."""
    if move_to is None:
        return None
    from ..quarantine.locking import LockError, LockHeld, ScanLock
    from ..quarantine.moves import Quarantine

    if not dry_run:
        try:
            stack.enter_context(ScanLock(root))
        except LockHeld:
            raise  # (LockUnusable is both) the lock exit code, from the one handler in common.py
        except LockError as exc:
            raise fail(f"cannot lock {label}: {exc}") from None
    quarantine = Quarantine(move_to)
    if not dry_run:
        stack.enter_context(quarantine)
    return quarantine


@contextlib.contextmanager
def open_run(root: Path, label: Path, move_to: Optional[Path], dry_run: bool, report: Optional[Path], review,
             printer: Printer, overwrite_report: bool = False):
    """Lock the folder (runs that move only: reports and dry runs write nothing there), open
    the quarantine, the report writer, the stop flag and the progress bar, in that order, and
    close them in reverse whatever happens. Yields Resources. A report that cannot be finished
    (e.g. its disk is full) becomes one error line once everything else is closed."""
    from ..reports.records import RecordWriter

    stop: StopFlag | None = None
    try:
        with contextlib.ExitStack() as stack:
            quarantine = enter_quarantine(stack, root, label, move_to, dry_run)
            sinks: list[Callable] = []
            if report is not None:
                sinks.append(stack.enter_context(RecordWriter(report, root, overwrite_report)))
            if review is not None:
                sinks.append(review.add)
            sinks.append(printer)
            stop = stack.enter_context(StopFlag())
            printer.progress = stack.enter_context(printer.progress)
            stack.callback(printer.flush)  # before the bar closes: its last update is exact
            yield Resources(quarantine, stop, printer.progress, sinks, printer)
    except OSError as exc:
        if stop is not None and stop.hung_up:  # the terminal is gone (EIO): the exit code still says why
            raise hang_up(stop) from None
        raise os_error(exc) from None


def hang_up(stop: StopFlag) -> typer.Exit:
    """After SIGHUP, output failed (the terminal is gone): what is still buffered, and anything
    later, goes to /dev/null, or the interpreter's last flush would fail and exit 120 instead."""
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        for target in (1, 2):
            os.dup2(fd, target)
    finally:
        os.close(fd)
    return typer.Exit(stop.exit_code)


@dataclass
class Outcome:
    """How a run reports itself: table title, review page title, and what an interruption left."""

    title: str
    review_title: str
    unit: str = "files"  # what the summary's "scanned" counts
    not_done: str = "the rest were not scanned"
    page_note: str = "The scan was interrupted: this page covers the files scanned before it stopped."
    extra_columns: tuple[str, ...] = ()


def finish(result, outcome: Outcome, printer: Printer, stop: StopFlag, *, json_out: bool, quiet: bool,
           review=None, html: Optional[Path] = None) -> None:
    """Print the summary of `result` (jobs.results.RunResult: a table, or JSON), write the review
    page, and exit with the result's exit code. After SIGHUP the terminal may be gone: output
    that fails is dropped."""
    try:
        _finish(result, outcome, printer, json_out=json_out, quiet=quiet, review=review, html=html)
    except OSError:
        if not stop.hung_up:
            raise
        raise hang_up(stop) from None


def _finish(result, outcome: Outcome, printer: Printer, *, json_out: bool, quiet: bool, review,
            html: Optional[Path]) -> None:
    summary = result.summary
    shown = summary.to_dict()
    if printer.dry_run:
        shown["plan"] = printer.plan
    if json_out:
        print_json(shown)
    else:
        from .console import counts_table

        keys = ("scanned", "ok", "ood", "unreadable", "too_large", "unsupported", "skipped", "unlisted", "changed", "accepted",
                "moved", "would_move", "move_errors", *outcome.extra_columns)
        table = {k: shown[k] for k in keys if k in ("scanned", "ok", "ood", "unreadable") or shown.get(k)}
        out.print(counts_table(outcome.title, table, rich_console(out).width))
    if review is not None:
        from ..reports.review import render_html, write_html

        note_text = outcome.page_note if summary.interrupted else ""
        try:
            write_html(html, render_html(review, title=outcome.review_title, summary=shown, note=note_text))
        except OSError as exc:
            raise fail(f"cannot write the review page {html}: {exc.strerror or exc}") from None
        if not json_out and not quiet:
            err.print(f"review page: {html}", highlight=False, markup=False)
    if summary.interrupted and not quiet:
        of = f" of {printer.total}" if printer.total is not None else ""
        err.print(f"interrupted after {shown['scanned']}{of} {outcome.unit}; {outcome.not_done}", highlight=False, markup=False)
    exit_with(result)


def exit_with(result) -> None:
    """Leave with the result's exit code (0 too), saying its error line when it has one."""
    if result.error_line:
        raise fail(result.error_line, result.exit_code)
    raise typer.Exit(result.exit_code)
