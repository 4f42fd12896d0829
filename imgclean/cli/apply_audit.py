"""apply of an audit report (`imgclean audit --report F`, reviewed): its findings moved into the
quarantine as `audit --move-to` moves them (pipeline/audit/apply_findings.py). The `apply` command
(cli/apply.py) hands an audit report here."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from ..jobs import ISSUE_NAMES  # noqa: F401  (a public name of cli.apply_audit)
from .common import err, fail, os_error, out, print_json, rich_console, usage_error
from .console import counts_table
from .runs import StopFlag, check_move_target, enter_quarantine, exit_with

SHOWN_BAD_ROWS = 20


def parse_issues(value: Optional[str]) -> Optional[tuple]:
    """--move-issues: the comma-separated names (None: not given; the request checks them)."""
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(","))


@dataclass
class AuditApplyRequest:
    """What `imgclean apply` was asked to do with an audit report."""

    report_in: Path
    move_to: Path
    root: Optional[Path]
    issues: tuple
    dry_run: bool
    keep_unreadable: bool
    report: Optional[Path]
    html: Optional[Path]
    json_out: bool
    fail_on_reject: bool
    fail_on_skip: bool
    quiet: bool
    verbose: bool
    overwrite_report: bool = False


def apply_audit_report(source, req: AuditApplyRequest) -> None:
    """Check the whole audit report, then move its findings (or refuse it); exits as scan does."""
    from ..pipeline.apply.sources import resolve_folder
    from ..pipeline.audit.apply_findings import AuditApplySummary, check_audit_report, run_audit_apply
    from ..reports.audit_records import AUDIT_COLUMNS, audit_row
    from ..reports.records import ReportError, report_root

    summary = AuditApplySummary(report=os.fsdecode(req.report_in), move_issues=req.issues)
    try:
        recorded = report_root(source, audit_row, AUDIT_COLUMNS)
    except ReportError as exc:
        raise _refused(summary, str(exc), req.json_out) from None
    folder, same, excluded = None, False, ()
    if req.root is not None or recorded is not None:  # (ApplyFolderError, QuarantinePlacementError: refusals, exit 2)
        folder, same = resolve_folder(source.path, source.stat, req.root, recorded)
        excluded = check_move_target(folder, req.move_to)
    with StopFlag() as stop:
        checked = check_audit_report(source, folder, recorded, req.issues, req.keep_unreadable,
                                     bad_row_printer(req.report_in), stop, excluded)
    if checked.error:
        raise _refused(summary, checked.error, req.json_out)
    refused = checked.invalid or checked.interrupted
    if folder is None and not refused:
        raise usage_error(f"{source.path} names no audited folder (no valid row); give --root FOLDER")
    plan: list = []
    if refused:
        run_audit_apply(folder, summary, checked)  # moves nothing
    else:
        summary.root = os.fsdecode(folder)
        try:
            with contextlib.ExitStack() as stack:
                quarantine = enter_quarantine(stack, folder, folder, req.move_to, req.dry_run)
                stop = stack.enter_context(StopFlag())
                run_audit_apply(folder, summary, checked, quarantine, dry_run=req.dry_run,
                                keep_unreadable=req.keep_unreadable, check_device=same,
                                on_record=_shower(req, plan), should_stop=stop)
        except OSError as exc:
            raise os_error(exc) from None
        _write_outputs(req, checked.flagged, summary, folder)
    _finish(req, summary, plan, stop)


def _refused(summary, message: str, json_out: bool) -> typer.Exit:
    summary.refused, summary.error, summary.invalid = True, message, max(summary.invalid, 1)
    if json_out:
        print_json(summary.to_dict())
    return fail(message)


def bad_row_printer(report_in: Path):
    """on_invalid for a report (scan or audit): each bad row on stderr, the first SHOWN_BAD_ROWS of them."""
    shown = [0]

    def said(row) -> None:
        shown[0] += 1
        if shown[0] <= SHOWN_BAD_ROWS:
            where = f" ({row.path!r})" if row.path else ""
            err.print(f"{report_in} line {row.line}{where}: {row.error}; not applied", highlight=False, markup=False)
        elif shown[0] == SHOWN_BAD_ROWS + 1:
            err.print(f"{report_in}: more bad rows (the summary counts them)", highlight=False, markup=False)

    return said


def _shower(req: AuditApplyRequest, plan: list):
    """on_record: a dry run's plan (stdout, kept for --json); -v: each finding acted on (stderr)."""

    def show(rec) -> None:
        if rec.action == "would move":
            plan.append({"source": rec.path, "destination": rec.destination, "issue": rec.issue})
            if not req.json_out:
                out.print(f"would move {rec.path!r} -> {rec.destination!r} ({rec.issue})", highlight=False,
                          markup=False)
        elif req.verbose:
            where = f" -> {rec.destination!r}" if rec.destination else ""
            err.print(f"{rec.action or 'reported'}: {rec.path!r}{where} ({rec.issue}) {rec.message}", highlight=False,
                      markup=False)

    return show


def _write_outputs(req: AuditApplyRequest, records: list, summary, folder: Path) -> None:
    """--report: the rows acted on, with what this run did; --html: the audit page of them."""
    if req.report is not None:
        from ..reports.audit_records import AuditWriter

        try:
            with AuditWriter(req.report, folder, req.overwrite_report) as writer:
                for rec in records:
                    writer.write(rec)
        except OSError as exc:
            raise os_error(exc) from None
    if req.html is not None:
        from ..reports.review.audit_page import render_audit_html
        from ..reports.review.page import write_html

        counts = {"images": summary.rows, "ok": summary.rows - len(records), "moved": summary.moved,
                  "would_move": summary.would_move, "move_errors": summary.move_errors}
        page = render_audit_html(records, counts, root=folder, quarantine=req.move_to,
                                 title=f"imgclean apply of {req.report_in}")
        try:
            write_html(req.html, page)
        except OSError as exc:
            raise fail(f"cannot write the review page {req.html}: {exc.strerror or exc}") from None


def _finish(req: AuditApplyRequest, summary, plan: list, stop: StopFlag) -> None:
    data = summary.to_dict()
    if req.dry_run:
        data["plan"] = plan
    if summary.error:
        err.print(summary.error, highlight=False, markup=False)
    if req.json_out:
        print_json(data)
    else:
        keys = ["rows", "label_issues", "outliers", "duplicates", "unreadable"]
        keys += [k for k in ("moved", "would_move", "kept", "accepted", "changed", "move_errors", "invalid") if data[k]]
        out.print(counts_table(f"apply of audit report {req.report_in}", {k: data[k] for k in keys},
                               rich_console(out).width))
        if summary.kept and not req.quiet:
            err.print(f"{summary.kept} duplicate(s) kept: their original moves too or is gone (see -v)",
                      highlight=False, markup=False)
    from ..jobs.results import ApplyResult, ExitRules

    exit_with(ApplyResult(summary, rules=ExitRules(req.fail_on_reject, req.fail_on_skip), stop_code=stop.exit_code))
