"""imgclean as a library: the command line's jobs as functions, for notebooks and pipelines.

    from imgclean import api

    model = api.fit("train/", "model/", epochs=5)          # train, calibrate, save
    result = api.scan("incoming/", "model/")                # score only: result.records, result.summary
    result = api.scan("incoming/", model, move_to="rejected/")   # quarantine the rejects
    api.apply("report.jsonl", move_to="rejected/")          # carry out a saved `scan --report`
    metrics = api.evaluate("model/", "labelled/", "known-junk/").results
    found = api.audit("train/")                             # wrong labels, foreign pictures, duplicates
    api.restore("rejected/")                                # put everything back
    api.accept(["incoming/img_006.png"])                    # a person's decision: it belongs

Nothing here prints or exits: progress goes to optional callbacks, problems are raised as
`imgclean.errors.ImgcleanError` subclasses with one-line messages, and moves take the same lock,
quarantine journal and per-file checks as the CLI. A `model` argument is a model directory or a
loaded model (`load`).

Longer than 400 lines: one thin wrapper per job, each with the checks the CLI makes, in one front door.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable

from .config import FitConfig, TrainSettings
from .errors import ImgcleanError

# A library says nothing unless its caller configures logging (the standard NullHandler): without
# it Python's last-resort handler writes imgclean's warnings to stderr. What a caller should hear
# is returned as data (fit: model.config["fit_warnings"], ["calibration"], ["training"]).
logging.getLogger("imgclean").addHandler(logging.NullHandler())

__all__ = ["ApiError", "ApplyResult", "ScanResult", "accept", "apply", "audit", "decisions", "evaluate", "fit", "load",
           "reject", "restore", "scan", "withdraw"]


class ApiError(ImgcleanError, ValueError):
    """An argument the API cannot use (the message names it)."""


@dataclass
class ScanResult:
    """What a scan found. `records`: one ScanRecord per file, in walk order (empty when the scan
    was asked not to keep them); `summary`: the counts the CLI prints (`summary.to_dict()`)."""

    summary: object
    records: list = field(default_factory=list)
    review_sample: list = field(default_factory=list)  # (path, reason) of the files chosen for review


@dataclass
class ApplyResult:
    summary: object
    records: list = field(default_factory=list)
    invalid: list = field(default_factory=list)  # reports.records.ReportRow of rows never acted on


def _fit_config(config: FitConfig | None, settings: dict) -> FitConfig:
    config = config or FitConfig()
    fit_keys = {f.name for f in fields(FitConfig)} - {"train"}
    train_keys = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(settings) - fit_keys - train_keys)
    if unknown:
        raise ApiError(
            f"unknown setting(s) {', '.join(unknown)}; fit takes {', '.join(sorted(fit_keys | train_keys))}"
        )
    train = TrainSettings(**{**vars(config.train), **{k: v for k, v in settings.items() if k in train_keys}})
    return FitConfig(**{**vars(config), **{k: v for k, v in settings.items() if k in fit_keys}, "train": train})


def fit(
    train_dir, output=None, *, config: FitConfig | None = None, reject_dir=None, force: bool = False,
    progress: Callable[[str, int, int, dict], None] | None = None, **settings,
):
    """Train a model on `train_dir` (one sub-folder per class) and calibrate its detectors.

    `settings` are FitConfig / TrainSettings fields (arch, epochs, center_weight, device, ...).
    With `output`, the model is saved there (atomically; an existing directory only with
    force=True). Returns the model (store.artifact.ModelBundle); its config holds what `imgclean
    fit` prints: `["training"]` (epochs asked for and `epochs_trained`, raised by min_steps),
    `["metrics"]`, `["calibration"]` (the false-reject rate the thresholds promise, its interval,
    and `warning` when too few images carry it), `["fit_warnings"]` (one line each; nothing is
    printed) and `["weights_mapping"]` (how `weights=` was matched to the backbone).
    """
    from .pipeline.fit.fit_model import fit_model
    from .store.artifact import check_replaceable, save_model

    config = _fit_config(config, settings)
    if not Path(train_dir).is_dir():
        raise ApiError(f"training folder {os.fsdecode(train_dir)} does not exist or is not a folder")
    if output is not None:
        check_replaceable(Path(output), force)  # before training, not after it
    bundle, _report = fit_model(Path(train_dir), config, progress, Path(reject_dir) if reject_dir is not None else None)
    if output is not None:
        bundle.path = save_model(bundle, Path(output), force=force)
    return bundle


def load(model_dir, device: str = "cpu"):
    """A saved model, checked against its fingerprint (store.artifact.load_model)."""
    from .store.artifact import load_model

    return load_model(Path(model_dir), device=device)


def _model(model, device: str, lazy: bool = False):
    if isinstance(model, (str, os.PathLike)):
        from .store.artifact import load_model

        return load_model(Path(model), device=device, lazy=lazy)
    return model


def _device(device: str) -> str:
    if device != "auto":
        return device
    from .nn.runtime import pick_device

    return str(pick_device("auto"))


@contextlib.contextmanager
def _moving(root: Path, move_to, dry_run: bool):
    """The folder's lock and the opened quarantine, as `scan --move-to` holds them."""
    from .quarantine.locking import ScanLock
    from .quarantine.moves import Quarantine

    with contextlib.ExitStack() as stack:
        quarantine = None
        if move_to is not None:
            if not dry_run:
                stack.enter_context(ScanLock(root))
            quarantine = Quarantine(Path(move_to))
            if not dry_run:
                stack.enter_context(quarantine)
        yield quarantine


def _collector(keep_records: bool, on_record: Callable | None, records: list, sampler=None) -> Callable:
    def collect(record) -> None:
        if keep_records:
            records.append(record)
        if on_record is not None:
            on_record(record)
        if sampler is not None:
            sampler(record)

    return collect


def scan(
    folder, model, *, move_to=None, dry_run: bool = False, method: str | None = None,
    keep_unreadable: bool = False, use_cache: bool = False, cache_dir=None, batch_size: int = 256,
    workers: int = 0, device: str = "auto", on_record: Callable | None = None, keep_records: bool = True,
    should_stop: Callable[[], bool] = lambda: False, engine: str = "local", ray_address: str | None = None,
    ray_workers: int = 0, ray_gpus_per_worker: float = 0.0, files: Iterable | None = None, review_sample: int = 0,
) -> ScanResult:
    """Score every image below `folder`; with `move_to`, quarantine the rejected ones.

    `method` None: the model's default (mahalanobis, or what `imgclean learn` chose).
    `review_sample` N > 0: after the scan, choose N of the accepted files for a person to review
    (`scan --review-sample`, pipeline/scan/sample_pass.py; off by default here): their kept records
    get their `review` cell, and `result.review_sample` lists them ((path, reason) pairs, in the
    order to show them). Records already given to `on_record` are not changed.

    `folder` may be one file: it is scanned alone, its folder being the scanned one. `files`:
    scan only these (str, bytes or path-like; relative ones relative to the current folder),
    each inside `folder`, as `scan --files-from` does: a name that is not an image file there
    is a skipped record (pipeline/scan/file_list.py); one named twice is scanned once.

    Records are kept in `result.records` unless keep_records=False (for huge folders: use
    `on_record` to stream them). `dry_run` plans the moves (record.action "would move") and
    changes nothing. The cache is off by default here (the CLI's is on). engine="ray" decodes
    and scores on Ray workers (`scan --engine ray`): a program that already called ray.init()
    has its Ray used and left running; otherwise the scan joins `ray_address` or starts a local Ray.
    """
    from .pipeline.apply.applier import quarantine_exclusion
    from .pipeline.scan.file_list import scan_target
    from .pipeline.scan.scanner import ScanOptions, run_scan
    from .pipeline.engines.scoring import check_method

    if isinstance(files, (str, bytes, os.PathLike)):
        raise ApiError("files is a list of paths, not one path")
    try:
        target = scan_target(folder, files)
    except ValueError as exc:  # (file_list.FileListError)
        raise ApiError(str(exc)) from None
    root = target.root
    from .fileops import quarantine_holding

    if quarantine_holding(root) is not None:  # before a quarantine is made (run_scan says it too)
        raise ApiError(f"{os.fsdecode(root)} is inside the imgclean quarantine {quarantine_holding(root)}; scans never read one")
    if dry_run and move_to is None:
        raise ApiError("dry_run plans moves; give move_to too")
    exclude = quarantine_exclusion(root, Path(move_to)) if move_to is not None else ()
    if use_cache and cache_dir is not None and Path(os.path.realpath(cache_dir)).is_relative_to(root):
        raise ApiError(f"cache_dir {os.fsdecode(cache_dir)} is inside the scanned folder; choose a folder outside "
                       f"{os.fsdecode(root)}")  # as the CLI: the cache never lives in the scanned folder
    device = _device(device)
    bundle = _model(model, device, lazy=True)
    if isinstance(review_sample, bool) or not isinstance(review_sample, int) or review_sample < 0:
        raise ApiError("review_sample is a number of files, 0 or more")
    try:
        if method is None:
            from .detectors import registry

            method = registry.default_method(bundle.config)
        check_method(bundle, method)
    except ValueError as exc:
        raise ApiError(str(exc)) from None
    options = ScanOptions(
        batch_size=batch_size, workers=workers, keep_unreadable=keep_unreadable, exclude=exclude,
        method=method, use_cache=use_cache, cache_dir=Path(cache_dir) if cache_dir is not None else None,
        engine=engine, engine_options=_ray_options(engine, ray_address, ray_workers, ray_gpus_per_worker), files=target.files,
    )
    records: list = []
    sampler = None
    if review_sample:
        from .pipeline.scan.sample_pass import SampleCandidates

        sampler = SampleCandidates(review_sample, len(bundle.class_names))
    with _moving(root, move_to, dry_run) as quarantine:
        summary = run_scan(root, bundle, options, quarantine, dry_run, device,
                           _collector(keep_records, on_record, records, sampler), should_stop)
    result = ScanResult(summary, records)
    if sampler is not None and not summary.interrupted:
        _mark_sample(result, bundle, root, device, sampler)
    return result


def _mark_sample(result: ScanResult, bundle, root, device: str, sampler) -> None:
    from .pipeline.scan.sample_pass import choose_sample

    sample = choose_sample(bundle, root, sampler, device)
    result.summary.review_sample = len(sample)
    result.review_sample = [(s.path, s.reason) for s in sample]
    reasons = dict(result.review_sample)
    for record in result.records:
        if record.status == "ok" and record.path in reasons:
            record.review = reasons[record.path]


def _ray_options(engine: str, address, workers: int, gpus: float):
    from .pipeline.scan.scanner import ENGINES

    if engine not in ENGINES:
        raise ApiError(f"unknown engine {engine!r}; use {' or '.join(ENGINES)}")
    if engine != "ray":
        return None
    from .pipeline.engines.ray_engine import RayOptions

    return RayOptions(address=address, workers=workers, gpus_per_worker=gpus)


def apply(
    report, move_to, *, root=None, dry_run: bool = False, keep_unreadable: bool = False,
    on_record: Callable | None = None, keep_records: bool = True, move_issues: Iterable[str] | None = None,
) -> ApplyResult:
    """Carry out a saved `scan --report` file: move its rejected files into `move_to`, each
    checked against its record first (a changed or replaced file stays; so does a file a person
    accepted). `root`: where the report's folder is mounted here, when not where it was made.

    An `audit --report` file is carried out the same way (its findings whose issue is in
    `move_issues`, default all; of duplicates only the copies, while their original stays):
    `records` are then the AuditRecords acted on, `summary` a pipeline.audit.apply_findings.AuditApplySummary."""
    from .pipeline.apply.applier import ApplySummary, quarantine_exclusion
    from .pipeline.apply.report import check_report, run_apply
    from .pipeline.apply.sources import resolve_folder
    from .reports.records import AUDIT, ReportError, ReportFile, report_root

    report = Path(report)
    if not report.is_file():
        raise ApiError(f"{os.fsdecode(report)} does not exist or is not a file")
    records: list = []
    invalid: list = []
    with ReportFile(report) as source:  # checked whole first: a report with a bad row moves nothing
        if source.kind() == AUDIT:
            return _apply_audit(source, move_to, root, dry_run, keep_unreadable, move_issues,
                                _collector(keep_records, on_record, records), records, invalid)
        if move_issues is not None:
            raise ApiError(f"move_issues is for audit reports; {os.fsdecode(report)} is a scan report")
        recorded = report_root(source)
        folder, same = resolve_folder(report, source.stat, None if root is None else Path(root), recorded)
        excluded = quarantine_exclusion(folder, Path(move_to))
        checked = check_report(source, folder, recorded, keep_unreadable, invalid.append, excluded=excluded)
        if checked.error:
            raise ReportError(checked.error)
        summary = ApplySummary(root=os.fsdecode(folder), model="", report=os.fsdecode(report))
        with _moving(folder, move_to, dry_run) if not checked.invalid else contextlib.nullcontext() as quarantine:
            run_apply(source, folder, summary, quarantine, checked=checked, dry_run=dry_run,
                      keep_unreadable=keep_unreadable, recorded_root=recorded, check_device=same,
                      on_record=_collector(keep_records, on_record, records))
    return ApplyResult(summary, records, invalid)


def _apply_audit(source, move_to, root, dry_run: bool, keep_unreadable: bool, move_issues, collect: Callable,
                 records: list, invalid: list) -> ApplyResult:
    from .pipeline.apply.applier import quarantine_exclusion
    from .pipeline.apply.sources import resolve_folder
    from .pipeline.audit.apply_findings import MOVABLE, AuditApplySummary, check_audit_report, run_audit_apply
    from .reports.audit_records import AUDIT_COLUMNS, audit_row
    from .reports.records import ReportError, report_root

    issues = tuple(MOVABLE if move_issues is None else move_issues)
    unknown = sorted(set(issues) - set(MOVABLE))
    if unknown or not issues:
        raise ApiError(f"move_issues takes some of {', '.join(MOVABLE)}; got {list(issues)!r}")
    recorded = report_root(source, audit_row, AUDIT_COLUMNS)
    folder, same = resolve_folder(source.path, source.stat, None if root is None else Path(root), recorded)
    excluded = quarantine_exclusion(folder, Path(move_to))
    checked = check_audit_report(source, folder, recorded, issues, keep_unreadable, invalid.append, excluded=excluded)
    if checked.error:
        raise ReportError(checked.error)
    summary = AuditApplySummary(root=os.fsdecode(folder), report=os.fsdecode(source.path), move_issues=issues)
    with _moving(folder, move_to, dry_run) if not checked.invalid else contextlib.nullcontext() as quarantine:
        run_audit_apply(folder, summary, checked, quarantine, dry_run=dry_run, keep_unreadable=keep_unreadable,
                        check_device=same, on_record=collect)
    return ApplyResult(summary, records, invalid)


def evaluate(model, in_dir, ood_dir, *, methods: Iterable[str] | None = None, batch_size: int = 256,
             device: str = "auto", progress: Callable[[int, int], None] | None = None):
    """Classification and out-of-distribution metrics on a labelled folder and a folder of
    known out-of-distribution images (pipeline.evaluate.Evaluation: .results, .curves)."""
    from .pipeline.evaluate import evaluate as run_evaluate

    device = _device(device)
    bundle = _model(model, device)
    return run_evaluate(bundle, Path(in_dir), Path(ood_dir), list(methods) if methods else None, batch_size,
                        device, progress)


def audit(train_dir, model=None, *, move_to=None, dry_run: bool = False, device: str = "auto",
          progress: Callable[[str, int, int, dict], None] | None = None, **options):
    """Audit a training folder: wrong labels (out-of-sample confident learning), foreign pictures,
    duplicates, unreadable files (pipeline.audit.auditor.AuditResult: .records, .summary). `options` are
    pipeline.audit.auditor.AuditOptions fields (folds, method, epochs, near_threshold, ...). With
    `move_to`, the flagged files (later copies only, for duplicates) are quarantined like scan's."""
    from .pipeline.apply.applier import quarantine_exclusion
    from .pipeline.audit.auditor import AuditOptions, apply_audit, run_audit

    root = Path(os.path.realpath(train_dir))
    if not root.is_dir():
        raise ApiError(f"training folder {os.fsdecode(train_dir)} does not exist or is not a folder")
    if dry_run and move_to is None:
        raise ApiError("dry_run plans moves; give move_to too")
    known = {f.name for f in fields(AuditOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ApiError(f"unknown option(s) {', '.join(unknown)}; audit takes {', '.join(sorted(known))}")
    if move_to is not None:
        quarantine_exclusion(root, Path(move_to))
    device = _device(device)
    bundle = _model(model, device) if model is not None else None
    with _moving(root, move_to, dry_run) as quarantine:  # the lock is held from the walk to the last move
        result = run_audit(root, AuditOptions(**options), bundle=bundle, device=device, progress=progress)
        if quarantine is not None:
            apply_audit(result.records, root, result.summary, quarantine, dry_run)
    return result


def restore(quarantine_dir, *, paths: Iterable | None = None, dry_run: bool = False) -> list:
    """Put quarantined files back (quarantine.restore: never overwrites); one result per record."""
    from .quarantine.moves import restore as restore_files

    only = {"only": [os.fspath(p) for p in paths]} if paths else {}
    return restore_files(Path(quarantine_dir), dry_run=dry_run, **only)


def accept(paths: Iterable, root=None, *, dry_run: bool = False) -> list:
    """Record that a person accepted each file: every later scan leaves it in place (status
    `accepted`) while its content is unchanged. One decision_ops.Outcome per path; a path that
    cannot be decided (inside a quarantine, outside `root`, missing, a link) raises first."""
    from .quarantine.decision_ops import accept as accept_files

    return accept_files([os.fspath(p) for p in paths], root, dry_run=dry_run)


def reject(paths: Iterable, move_to, root=None, *, dry_run: bool = False) -> list:
    """Record each file as a confirmed reject and move it into the quarantine `move_to`
    (journaled; `restore` puts it back)."""
    from .quarantine.decision_reject import reject as reject_files

    return reject_files([os.fspath(p) for p in paths], move_to, root, dry_run=dry_run)


def withdraw(paths: Iterable, *, dry_run: bool = False) -> list:
    """Withdraw the decisions in force about each file; later scans score it afresh."""
    from .quarantine.decision_ops import withdraw as withdraw_decisions

    return withdraw_decisions([os.fspath(p) for p in paths], dry_run=dry_run)


def decisions(folder):
    """The decisions of a scanned folder, or of every folder a quarantine took files from
    (quarantine.decision_views.LabelledDecisions)."""
    from .quarantine.decision_views import decisions_of

    return decisions_of(folder)
