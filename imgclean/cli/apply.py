"""apply: carry out a saved scan report's rejections, without scoring anything again."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import os
from pathlib import Path
from typing import Optional

import typer

from .common import command, err, make_progress, setup_logging, usage_error
from .options import (
    DryRun, FailOnReject, FailOnSkip, HtmlOut, JsonOut, KeepUnreadable, Quiet, ReportOut, Verbose, config_option,
)
from .runs import Outcome, Printer, check_html_output, check_move_target, check_report_output, feed, finish, open_run


def _root(report: Path, given: Optional[Path]) -> tuple[Path, str | None]:
    """The folder the report's paths are relative to (resolved), and the root the report
    records (None when --root was given: then every row is taken as relative to it)."""
    from ..fileops import MANIFEST_NAME, is_quarantine
    from ..reports.records import report_root

    recorded = None
    if given is None:
        recorded = report_root(report)
        if recorded is None:
            raise usage_error(f"{report} names no scanned folder (a report from an older imgclean, or no valid row); "
                              "give --root FOLDER")
        given = Path(recorded)
        if not given.is_dir():
            raise usage_error(f"{report} was made from {recorded}, which is not a folder here; "
                              "give --root FOLDER (where that folder is mounted on this machine)")
    elif not given.is_dir():
        raise usage_error(f"--root {given} does not exist or is not a folder")
    if is_quarantine(given):
        raise usage_error(f"{given} is an imgclean quarantine (it holds {MANIFEST_NAME}); reports never apply to one")
    return Path(os.path.realpath(given)), recorded


@command()
def apply(
    ctx: typer.Context,
    report_in: Path = typer.Argument(..., metavar="REPORT", help="A `scan --report` file (.csv or .jsonl) to carry out."),
    move_to: Path = typer.Option(..., "--move-to", help="Move the report's rejected files here (keeping their relative paths)."),
    root: Optional[Path] = typer.Option(None, "--root", help="The folder the report's paths are relative to [default: the folder the report was made from]; for a folder mounted elsewhere."),
    dry_run: DryRun = False,
    keep_unreadable: KeepUnreadable = False,
    report: ReportOut = None,
    html: HtmlOut = None,
    json_out: JsonOut = False,
    fail_on_reject: FailOnReject = False,
    fail_on_skip: FailOnSkip = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    config_file: Optional[Path] = config_option(),
) -> None:
    """Move the files a saved scan report rejected into a quarantine, without scoring again.

    Each file is checked against its record first (size, mtime, inode; and device unless --root
    is given), exactly as a scan checks before moving: a file changed or replaced since the
    report was written is left in place and counted as changed, one that is gone as changed
    (missing). Rows that are not sound records are reported and never acted on. Takes the same
    lock and journal as `scan --move-to`; exit codes as for scan.
    """
    from ..pipeline.apply import ApplySummary, run_apply
    from ..reports.records import read_report, report_format

    setup_logging(quiet, verbose)
    if not report_in.is_file():
        raise usage_error(f"{report_in} does not exist or is not a file; give a `scan --report` file (.csv/.jsonl)")
    try:
        report_format(report_in)
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    folder, recorded = _root(report_in, root)
    check_move_target(folder, move_to)
    if report is not None:
        check_report_output(report, move_to)
        if os.path.realpath(report) == os.path.realpath(report_in):
            raise usage_error(f"--report {report} would overwrite the report being applied; choose another file name")
    if html is not None:
        check_html_output(html, "--html", move_to)

    review = None
    if html is not None:
        from ..reports.review import ReviewCollector

        review = ReviewCollector(root=folder, quarantine=move_to)
    summary = ApplySummary(root=os.fsdecode(folder), model="", report=os.fsdecode(report_in))
    printer = Printer(dry_run, json_out, verbose, keep_unreadable, progress=make_progress(quiet or json_out))

    def said(row) -> None:
        where = f" ({row.path!r})" if row.path else ""
        err.print(f"{report_in} line {row.line}{where}: {row.error}; not applied", highlight=False, markup=False)

    with open_run(folder, folder, move_to, dry_run, report, review, printer) as run:
        if not run.progress.disable:
            printer.total = sum(1 for _ in read_report(report_in))
            printer.task = run.progress.add_task("applying", total=printer.total, info="")
        run_apply(read_report(report_in), folder, summary, run.quarantine, dry_run, keep_unreadable, recorded,
                  feed(run.sinks), said, run.stop)
    outcome = Outcome(
        title=f"apply of {report_in}", review_title=f"imgclean review: {report_in}", unit="records",
        not_done="the rest were not applied",
        page_note="The apply was interrupted: this page covers the records applied before it stopped.",
        extra_columns=("invalid", "duplicates"),
    )
    finish(summary, outcome, printer, run.stop, json_out=json_out, quiet=quiet, review=review, html=html,
           fail_on_reject=fail_on_reject, fail_on_skip=fail_on_skip)
