"""An apply request: a saved scan or audit report to carry out (`imgclean apply`, `api.apply`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .base import RequestError, check_outputs, optional_path
from .results import ExitRules

from . import ISSUE_NAMES  # noqa: F401  (a public name of jobs.apply)


def check_issues(issues, option: str = "--move-issues") -> tuple[str, ...]:
    """The audit issues to move: some of ISSUE_NAMES, each once, in the order given."""
    if isinstance(issues, str):
        issues = issues.split(",")
    issues = tuple(dict.fromkeys(str(i).strip() for i in issues if str(i).strip()))
    unknown = [i for i in issues if i not in ISSUE_NAMES]
    if unknown or not issues:
        raise RequestError(f"{option} takes a comma-separated list of {', '.join(ISSUE_NAMES)}; "
                           f"got {','.join(issues)!r}")
    return issues


@dataclass
class ApplyRequest:
    report_in: Path
    move_to: Path
    root: Optional[Path] = None  # where the report's folder is here [default: the one it records]
    move_issues: Optional[tuple] = None  # audit reports: which findings move [default: all]
    dry_run: bool = False
    keep_unreadable: bool = False
    report: Optional[Path] = None
    overwrite_report: bool = False
    html: Optional[Path] = None
    rules: ExitRules = field(default_factory=ExitRules)

    def __post_init__(self):
        self.report_in, self.move_to = Path(self.report_in), optional_path(self.move_to)
        self.root, self.report, self.html = optional_path(self.root), optional_path(self.report), optional_path(self.html)

    def check(self) -> None:
        """What can be checked before the report is opened."""
        from ..reports.formats import extensions_text
        from ..reports.records import report_format

        if not self.report_in.is_file():
            raise RequestError(f"{os.fsdecode(self.report_in)} does not exist or is not a file; give a `scan --report` "
                               f"file ({extensions_text()})")
        try:
            report_format(self.report_in)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        if self.move_to is None:
            raise RequestError("apply moves a report's files into a quarantine; give --move-to DIR")
        if self.report is not None and os.path.realpath(self.report) == os.path.realpath(self.report_in):
            raise RequestError(f"--report {self.report} would overwrite the report being applied; choose another file name")
        check_outputs(self.report, self.html, self.move_to, self.overwrite_report)
        if self.move_issues is not None:
            self.move_issues = check_issues(self.move_issues)

    def check_kind(self, kind: str) -> None:
        """Once the report is open: --move-issues is for audit reports only."""
        from ..reports.records import AUDIT

        if kind != AUDIT and self.move_issues is not None:
            raise RequestError(f"--move-issues is for audit reports; {os.fsdecode(self.report_in)} is a scan report")

    @property
    def issues(self) -> tuple[str, ...]:
        return ISSUE_NAMES if self.move_issues is None else self.move_issues
