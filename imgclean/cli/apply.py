"""apply: carry out a saved scan report's rejections (or an audit report's findings:
cli/apply_audit.py), without scoring anything again."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from .common import command, err, fail, make_progress, print_json, setup_logging, usage_error
from .options import (
    REPORT_EXTENSIONS, DryRun, FailOnReject, FailOnSkip, HtmlOut, JsonOut, KeepUnreadable, OverwriteReport, Quiet, ReportOut, Verbose,
    config_option,
)
from .apply_audit import AuditApplyRequest, apply_audit_report, bad_row_printer, parse_issues
from .runs import Outcome, Printer, StopFlag, check_move_target, feed, finish, open_run


# At most this many bad rows are named one by one on stderr (the count is in the summary).


@dataclass
class Plan:
    """What checking a report before anything moves settled: the folder (None when the report
    was refused before one could be chosen), the root every row must record, whether device
    numbers are compared, the check's result (pipeline.apply.applier.ReportCheck) and its stop flag."""

    folder: Optional[Path]
    recorded: Optional[str]
    same_folder: bool
    checked: object
    stop: StopFlag

    @property
    def refused(self) -> bool:
        return bool(self.checked.invalid or self.checked.error or self.checked.interrupted)


def _plan(source, given: Optional[Path], move_to: Path, keep_unreadable: bool, said) -> Plan:
    """Choose the folder (pipeline/apply/sources.resolve_folder has the rule) and check the whole
    report against it. A report that names no folder is checked first all the same: one with a
    bad row is refused as such (exit 1, with its summary), a sound one is a usage error."""
    from ..pipeline.apply.report import check_report
    from ..pipeline.apply.sources import resolve_folder
    from ..reports.records import report_root

    recorded = report_root(source)
    folder, same, excluded = None, False, ()
    if given is not None or recorded is not None:  # (ApplyFolderError, QuarantinePlacementError: refusals, exit 2)
        folder, same = resolve_folder(source.path, source.stat, given, recorded)
        excluded = check_move_target(folder, move_to)
    with StopFlag() as stop:  # the whole report is checked before anything is locked or moved
        checked = check_report(source, folder, recorded, keep_unreadable, said, stop, excluded)
    plan = Plan(folder, recorded, same, checked, stop)
    if folder is None and not plan.refused:
        raise usage_error(f"{source.path} names no scanned folder (a report from an older imgclean, or no valid row); "
                          "give --root FOLDER")
    return plan


def _refuse(summary, message: str, json_out: bool) -> typer.Exit:
    """A report that cannot be read at all: the summary (--json) and one error line."""
    summary.refused, summary.error, summary.invalid = True, message, max(summary.invalid, 1)
    if json_out:
        print_json(summary.to_dict())
    return fail(message)


@command()
def apply(
    ctx: typer.Context,
    report_in: Path = typer.Argument(..., metavar="REPORT", help=f"A `scan --report` or `audit --report` file ({REPORT_EXTENSIONS}) to carry out."),
    move_to: Path = typer.Option(..., "--move-to", help="Move the report's rejected files here (keeping their relative paths)."),
    move_issues: Optional[str] = typer.Option(None, "--move-issues", help="Audit reports: which findings to move (comma-separated: label_issue, outlier, duplicate, unreadable) [default: all]."),
    root: Optional[Path] = typer.Option(None, "--root", help="The folder whose files the report names [default: the folder the report records, if the report is yours and no other user can write it]; e.g. where that folder is mounted here."),
    dry_run: DryRun = False,
    keep_unreadable: KeepUnreadable = False,
    report: ReportOut = None,
    overwrite_report: OverwriteReport = False,
    html: HtmlOut = None,
    json_out: JsonOut = False,
    fail_on_reject: FailOnReject = False,
    fail_on_skip: FailOnSkip = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    config_file: Optional[Path] = config_option(),
) -> None:
    """Move the files a saved scan report rejected (or an audit report flagged) into a quarantine.

    The whole report is checked before anything moves: if any row is not sound (unreadable, a
    bad field, another folder than the other rows, or a path no scan reports: through a symbolic
    link, inside a quarantine, hidden, not an image), each bad row is named and nothing moves
    (exit 1), whatever the output options. Then each file is checked against its record (size,
    mtime, inode; and device when the folder is the one the report records), exactly as a scan
    checks before moving: a file changed or replaced since the report was written is left in
    place and counted as changed, one that is gone as changed (missing). Takes the same lock and
    journal as `scan --move-to`; exit codes as for scan. A file a person accepted stays.

    An `audit --report` file (reviewed: delete the rows you disagree with) is carried out the
    same way, each finding moved with its issue as the reason: of duplicates only the copies,
    never the original (the oldest file), and a copy only while its original stays. Wrong
    labels go to the quarantine too, never into another class folder.
    """
    from ..jobs.apply import ApplyRequest
    from ..jobs.results import ExitRules

    setup_logging(quiet, verbose)
    request = ApplyRequest(
        report_in, move_to, root=root, move_issues=parse_issues(move_issues), dry_run=dry_run,
        keep_unreadable=keep_unreadable, report=report, overwrite_report=overwrite_report, html=html,
        rules=ExitRules(fail_on_reject, fail_on_skip),
    )
    request.check()
    run_apply_request(request, ApplyView(json_out, quiet, verbose))


@dataclass
class ApplyView:
    json_out: bool
    quiet: bool
    verbose: bool


def run_apply_request(request, view: ApplyView) -> None:
    """Open the report: an audit report goes to cli/apply_audit.py; a scan report is checked
    whole, then carried out (or refused), and the result printed with its exit code."""
    from ..pipeline.apply.applier import ApplySummary
    from ..reports.records import AUDIT, ReportError, ReportFile

    report_in = request.report_in
    summary = ApplySummary(root="", model="", report=os.fsdecode(report_in))
    printer = Printer(request.dry_run, view.json_out, view.verbose, request.keep_unreadable,
                      progress=make_progress(view.quiet or view.json_out))
    with contextlib.ExitStack() as held:
        try:
            source = held.enter_context(ReportFile(report_in))
            kind = source.kind()
            request.check_kind(kind)
            if kind == AUDIT:
                apply_audit_report(source, AuditApplyRequest(
                    report_in, request.move_to, request.root, request.issues, request.dry_run,
                    request.keep_unreadable, request.report, request.html, view.json_out, request.rules.fail_on_reject,
                    request.rules.fail_on_skip, view.quiet, view.verbose, request.overwrite_report))
            plan = _plan(source, request.root, request.move_to, request.keep_unreadable, bad_row_printer(report_in))
        except ReportError as exc:
            raise _refuse(summary, str(exc), view.json_out) from None
        if plan.checked.error:
            raise _refuse(summary, plan.checked.error, view.json_out)
        review, stop = _carry_out(request, source, plan, summary, printer)
    if summary.error:
        err.print(summary.error, highlight=False, markup=False)
    from ..jobs.results import ApplyResult

    outcome = Outcome(
        title=f"apply of {report_in}", review_title=f"imgclean review: {report_in}", unit="records",
        not_done="the rest were not applied",
        page_note="The apply was interrupted: this page covers the records applied before it stopped.",
        extra_columns=("invalid", "duplicates"),
    )
    result = ApplyResult(summary, rules=request.rules, stop_code=stop.exit_code)
    finish(result, outcome, printer, stop, json_out=view.json_out, quiet=view.quiet, review=review,
           html=request.html if review else None)


def _carry_out(request, source, plan: Plan, summary, printer: Printer):
    """Move the report's files (a refused or stopped plan moves nothing); (review collector, stop flag)."""
    from ..pipeline.apply.report import run_apply

    if plan.refused:
        run_apply(source, plan.folder, summary, checked=plan.checked)  # refused or stopped: moves nothing
        return None, plan.stop
    summary.root = os.fsdecode(plan.folder)
    review = None
    if request.html is not None:
        from ..reports.review import ReviewCollector

        review = ReviewCollector(root=plan.folder, quarantine=request.move_to)
    with open_run(plan.folder, plan.folder, request.move_to, request.dry_run, request.report, review, printer,
                  request.overwrite_report) as run:
        printer.total = plan.checked.rows
        if not run.progress.disable:
            printer.task = run.progress.add_task("applying", total=printer.total, info="")
        run_apply(source, plan.folder, summary, run.quarantine, checked=plan.checked, dry_run=request.dry_run,
                  keep_unreadable=request.keep_unreadable, recorded_root=plan.recorded,
                  check_device=plan.same_folder, on_record=feed(run.sinks), should_stop=run.stop)
    return review, run.stop
