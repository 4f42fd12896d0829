"""What a job returns, and the exit code it means (as black's Report owns its return code): the
CLI prints a result and exits with `result.exit_code`, saying `result.error_line` when there is one."""
from __future__ import annotations

from dataclasses import dataclass, field

from .base import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_REJECTED, EXIT_SKIPPED


@dataclass(frozen=True)
class ExitRules:
    """What the request asked of the exit code (scan's and apply's flags of the same names)."""

    fail_on_reject: bool = False
    fail_on_skip: bool = False
    allow_unlisted: bool = False


@dataclass(frozen=True)
class Verdict:
    code: int
    message: str = ""  # the error line to say with it ("": none)


def run_verdict(summary, rules: ExitRules = ExitRules(), stop_code: int = EXIT_INTERRUPTED) -> Verdict:
    """The exit code of a run that scanned or applied records. First match wins: interrupted ->
    `stop_code` (130 SIGINT, 143 SIGTERM, 129 SIGHUP); files that could not be moved, or report
    rows that are not sound (apply) -> 1; folders inside the scan that could not be listed
    (summary.unlisted: part of the tree was not scanned) -> 5 with a line saying so, unless
    allow_unlisted; fail_on_reject and anything rejected -> 3; fail_on_skip and anything skipped
    or changed -> 5; else 0. An incomplete scan comes before fail_on_reject: a cron job learns
    that its answer covers only part of the tree even when it also found rejects."""
    if summary.interrupted:
        return Verdict(stop_code)
    if summary.move_errors:
        return Verdict(EXIT_ERROR, f"{summary.move_errors} file(s) could not be moved; see the report or run with --verbose")
    invalid = getattr(summary, "invalid", 0)
    if invalid:
        return Verdict(EXIT_ERROR, f"{invalid} record(s) of {summary.report} are not sound and were not applied (see above)")
    unlisted = getattr(summary, "unlisted", 0) or 0  # summaries from before the walk counted them have none
    if unlisted and not rules.allow_unlisted:
        return Verdict(EXIT_SKIPPED, f"{unlisted} folder(s) in the scan could not be listed, so part of the tree "
                                     "was not scanned (see the skipped records)")
    if rules.fail_on_reject and summary.rejected:
        return Verdict(EXIT_REJECTED)
    if rules.fail_on_skip and (summary.counts["skipped"] or summary.counts["changed"]):
        return Verdict(EXIT_SKIPPED)
    return Verdict(EXIT_OK)


def audit_verdict(summary, stop_code: int = EXIT_INTERRUPTED) -> Verdict:
    """An audit: interrupted -> `stop_code`; files that could not be moved -> 1; anything found -> 3; else 0."""
    if summary.interrupted:
        return Verdict(stop_code)
    if summary.move_errors:
        return Verdict(EXIT_ERROR, f"{summary.move_errors} file(s) could not be moved; see the report or run with --verbose")
    return Verdict(EXIT_REJECTED if summary.issues else EXIT_OK)


@dataclass
class RunResult:
    """A scan's or an apply's outcome: `summary` (the counts; `summary.to_dict()`), the records
    kept, and the exit code they mean under the request's `rules` (`stop_code`: the signal's
    code when the run was stopped)."""

    summary: object
    records: list = field(default_factory=list)
    rules: ExitRules = field(default_factory=ExitRules, repr=False)
    stop_code: int = field(default=EXIT_INTERRUPTED, repr=False)

    @property
    def verdict(self) -> Verdict:
        return run_verdict(self.summary, self.rules, self.stop_code)

    @property
    def exit_code(self) -> int:
        return self.verdict.code

    @property
    def error_line(self) -> str:
        return self.verdict.message


@dataclass
class ScanResult(RunResult):
    """What a scan found. `records`: one ScanRecord per file, in walk order (empty when the scan
    was asked not to keep them); `review_sample`: (path, reason) of the files chosen for review."""

    review_sample: list = field(default_factory=list)


@dataclass
class ApplyResult(RunResult):
    invalid: list = field(default_factory=list)  # reports.records.ReportRow of rows never acted on

    def __init__(self, summary, records=None, invalid=None, rules: ExitRules = ExitRules(),
                 stop_code: int = EXIT_INTERRUPTED):
        # (summary, records, invalid) positionally, as api.ApplyResult always took them
        super().__init__(summary, list(records or []), rules, stop_code)
        self.invalid = list(invalid or [])


@dataclass
class AuditRun:
    """An audit's outcome: `records` and `summary` (pipeline.audit.auditor.AuditResult's), its exit code."""

    records: list
    summary: object
    class_names: list = field(default_factory=list)
    stop_code: int = field(default=EXIT_INTERRUPTED, repr=False)

    @property
    def exit_code(self) -> int:
        return audit_verdict(self.summary, self.stop_code).code

    @property
    def error_line(self) -> str:
        return audit_verdict(self.summary, self.stop_code).message
