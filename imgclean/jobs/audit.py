"""An audit request: a training folder to check, and what to do with what is found."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from .apply import ISSUE_NAMES, check_issues
from .base import (
    RequestError, check_outputs, check_ranges, need_folder, need_move_to_for_dry_run, optional_path,
    quarantine_placement, refuse_quarantine_input,
)

RANGES = {  # pipeline.audit.auditor.AuditOptions field: (option, low, high, integer)
    "folds": ("--folds", 2, None, True),
    "percentile": ("--percentile", 50.0, 99.99, False),
    "trim": ("--trim", 0.0, 0.2, False),
    "near_threshold": ("--near-threshold", 0.5, 1.0, False),
    "epochs": ("--epochs", 1, None, True),
    "min_steps": ("--min-steps", 0, None, True),
    "batch_size": ("--batch-size", 1, None, True),
    "seed": ("--seed", None, None, True),
}


@dataclass
class AuditRequest:
    train_dir: Path
    options: dict = field(default_factory=dict)  # pipeline.audit.auditor.AuditOptions fields by name
    model: object = None  # a model directory or a loaded model whose settings the folds train with
    move_to: Optional[Path] = None
    move_issues: tuple = ISSUE_NAMES
    dry_run: bool = False
    keep_unreadable: bool = False
    report: Optional[Path] = None
    overwrite_report: bool = False
    html: Optional[Path] = None

    def __post_init__(self):
        self.move_to, self.report, self.html = optional_path(self.move_to), optional_path(self.report), \
            optional_path(self.html)

    def check(self):
        """Every check before the audit trains anything; returns its pipeline.audit.auditor.AuditOptions."""
        from ..detectors.registry import unsupervised
        from ..pipeline.audit.auditor import AuditOptions

        need_folder(self.train_dir, "folder")
        refuse_quarantine_input(Path(self.train_dir), self.train_dir, "audit the training folder")
        need_move_to_for_dry_run(self.dry_run, self.move_to)
        self.move_issues = check_issues(self.move_issues)
        if self.move_to is not None:
            quarantine_placement(Path(self.train_dir), self.move_to)
        check_outputs(self.report, self.html, self.move_to, self.overwrite_report)
        known = {f.name for f in fields(AuditOptions)}
        unknown = sorted(set(self.options) - known)
        if unknown:
            raise RequestError(f"unknown option(s) {', '.join(unknown)}; audit takes {', '.join(sorted(known))}")
        check_ranges(self.options, RANGES)
        methods = [cls.name for cls in unsupervised()]
        if "method" in self.options and self.options["method"] not in methods:
            raise RequestError(f"--method of an audit takes one of {', '.join(methods)}; got {self.options['method']!r}")
        return AuditOptions(**self.options)

    @property
    def root(self) -> Path:
        return Path(os.path.realpath(self.train_dir))
