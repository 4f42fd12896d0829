"""imgclean as a library: the command line's jobs as functions, for notebooks and pipelines.

    from imgclean import api

    model = api.fit("train/", "model/", epochs=5)          # train, calibrate, save
    result = api.scan("incoming/", "model/")                # score only: result.records, result.summary
    result = api.scan("incoming/", model, move_to="rejected/")   # quarantine the rejects
    api.apply("report.jsonl", move_to="rejected/")          # carry out a saved `scan --report`
    metrics = api.evaluate("model/", "labelled/", "known-junk/").results
    found = api.audit("train/")                             # wrong labels, foreign pictures, duplicates
    api.restore("rejected/")                                # put everything back
    api.learn("rejected/", "model/")                        # a new model version from the review
    api.accept(["incoming/img_006.png"])                    # a person's decision: it belongs

Nothing here prints or exits: progress goes to optional callbacks, problems are raised as
`imgclean.errors.ImgcleanError` subclasses with one-line messages, and moves take the same lock,
quarantine journal and per-file checks as the CLI. A `model` argument is a model directory or a
loaded model (`load`).

Each job builds the request object the CLI builds (imgclean/jobs/) and checks it the same way:
a request the CLI refuses is refused here with the same error class and message (ApiError is
jobs.base.RequestError; messages name options as the CLI spells them: --cache-dir is
cache_dir here). Results carry the CLI's exit code (`result.exit_code`).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterable

from .config import FitConfig
from .jobs.base import RequestError, model_of
from .jobs.results import ApplyResult, AuditRun, ScanResult  # noqa: F401  (public names of api)

# A library says nothing unless its caller configures logging (the standard NullHandler): without
# it Python's last-resort handler writes imgclean's warnings to stderr. What a caller should hear
# is returned as data (fit: model.config["fit_warnings"], ["calibration"], ["training"]).
logging.getLogger("imgclean").addHandler(logging.NullHandler())

__all__ = ["ApiError", "ApplyResult", "AuditRun", "ScanResult", "accept", "apply", "audit", "decisions", "evaluate",
           "fit", "learn", "load", "reject", "restore", "scan", "withdraw"]


ApiError = RequestError  # a request refused as asked (the CLI's usage errors, exit 2)


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
    from .jobs.fit import FitRequest, fit_config
    from .pipeline.fit.fit_model import fit_model
    from .store.artifact import save_model

    request = FitRequest(train_dir, fit_config(config, settings), output=output, force=force, reject_dir=reject_dir)
    request.check()
    bundle, _report = fit_model(request.train_dir, request.config, progress, request.reject_dir)
    if request.output is not None:
        bundle.path = save_model(bundle, request.output, force=force)
    return bundle


def load(model_dir, device: str = "cpu"):
    """A saved model, checked against its fingerprint (store.artifact.load_model)."""
    from .store.artifact import load_model

    return load_model(Path(model_dir), device=device)


def _model(model, device: str, lazy: bool = False):
    return model_of(model, device, lazy)


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
    from .jobs.scan import ScanRequest
    from .pipeline.scan.scanner import run_scan

    request = ScanRequest(
        folder, model, move_to=move_to, dry_run=dry_run, files=files, method=method, use_cache=use_cache,
        cache_dir=cache_dir, keep_unreadable=keep_unreadable, batch_size=batch_size, workers=workers, device=device,
        engine=engine, ray_address=ray_address, ray_workers=ray_workers, ray_gpus_per_worker=ray_gpus_per_worker,
        review_sample=review_sample,
    )
    plan = request.check()
    device = _device(device)
    bundle, method = request.load_model(device)
    records: list = []
    sampler = None
    if review_sample:
        from .pipeline.scan.sample_pass import SampleCandidates

        sampler = SampleCandidates(review_sample, len(bundle.class_names))
    with _moving(plan.root, request.move_to, dry_run) as quarantine:
        summary = run_scan(plan.root, bundle, request.options(plan, method), quarantine, dry_run, device,
                           _collector(keep_records, on_record, records, sampler), should_stop)
    result = ScanResult(summary, records)
    if sampler is not None and not summary.interrupted:
        _mark_sample(result, bundle, plan.root, device, sampler)
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
    from .jobs.apply import ApplyRequest
    from .reports.records import AUDIT, ReportFile

    request = ApplyRequest(report, move_to, root=root, move_issues=move_issues, dry_run=dry_run,
                           keep_unreadable=keep_unreadable)
    request.check()
    records: list = []
    invalid: list = []
    collect = _collector(keep_records, on_record, records)
    with ReportFile(request.report_in) as source:  # checked whole first: a report with a bad row moves nothing
        kind = source.kind()
        request.check_kind(kind)
        carry_out = _apply_audit if kind == AUDIT else _apply_scan
        summary = carry_out(source, request, collect, invalid)
    return ApplyResult(summary, records, invalid)


def _apply_scan(source, request, collect: Callable, invalid: list):
    from .pipeline.apply.applier import ApplySummary, quarantine_exclusion
    from .pipeline.apply.report import check_report, run_apply
    from .pipeline.apply.sources import resolve_folder
    from .reports.records import ReportError, report_root

    recorded = report_root(source)
    folder, same = resolve_folder(request.report_in, source.stat, request.root, recorded)
    excluded = quarantine_exclusion(folder, request.move_to)
    checked = check_report(source, folder, recorded, request.keep_unreadable, invalid.append, excluded=excluded)
    if checked.error:
        raise ReportError(checked.error)
    summary = ApplySummary(root=os.fsdecode(folder), model="", report=os.fsdecode(request.report_in))
    with _moving(folder, request.move_to, request.dry_run) if not checked.invalid else contextlib.nullcontext() as quarantine:
        run_apply(source, folder, summary, quarantine, checked=checked, dry_run=request.dry_run,
                  keep_unreadable=request.keep_unreadable, recorded_root=recorded, check_device=same, on_record=collect)
    return summary


def _apply_audit(source, request, collect: Callable, invalid: list):
    from .pipeline.apply.applier import quarantine_exclusion
    from .pipeline.apply.sources import resolve_folder
    from .pipeline.audit.apply_findings import AuditApplySummary, check_audit_report, run_audit_apply
    from .reports.audit_records import AUDIT_COLUMNS, audit_row
    from .reports.records import ReportError, report_root

    recorded = report_root(source, audit_row, AUDIT_COLUMNS)
    folder, same = resolve_folder(source.path, source.stat, request.root, recorded)
    excluded = quarantine_exclusion(folder, request.move_to)
    checked = check_audit_report(source, folder, recorded, request.issues, request.keep_unreadable, invalid.append,
                                 excluded=excluded)
    if checked.error:
        raise ReportError(checked.error)
    summary = AuditApplySummary(root=os.fsdecode(folder), report=os.fsdecode(source.path), move_issues=request.issues)
    with _moving(folder, request.move_to, request.dry_run) if not checked.invalid else contextlib.nullcontext() as quarantine:
        run_audit_apply(folder, summary, checked, quarantine, dry_run=request.dry_run,
                        keep_unreadable=request.keep_unreadable, check_device=same, on_record=collect)
    return summary


def evaluate(model, in_dir, ood_dir, *, methods: Iterable[str] | None = None, batch_size: int = 256,
             device: str = "auto", progress: Callable[[int, int], None] | None = None):
    """Classification and out-of-distribution metrics on a labelled folder and a folder of
    known out-of-distribution images (pipeline.evaluate.Evaluation: .results, .curves)."""
    from .jobs.evaluate import EvaluateRequest
    from .pipeline.evaluate import evaluate as run_evaluate

    request = EvaluateRequest(in_dir, ood_dir, model, list(methods) if methods else None, batch_size)
    request.check()
    device = _device(device)
    bundle = _model(model, device)
    return run_evaluate(bundle, Path(in_dir), Path(ood_dir), request.methods, batch_size, device, progress)


def audit(train_dir, model=None, *, move_to=None, dry_run: bool = False, device: str = "auto",
          progress: Callable[[str, int, int, dict], None] | None = None, **options):
    """Audit a training folder: wrong labels (out-of-sample confident learning), foreign pictures,
    duplicates, unreadable files (pipeline.audit.auditor.AuditResult: .records, .summary). `options` are
    pipeline.audit.auditor.AuditOptions fields (folds, method, epochs, near_threshold, ...). With
    `move_to`, the flagged files (later copies only, for duplicates) are quarantined like scan's."""
    from .jobs.audit import AuditRequest
    from .pipeline.audit.auditor import apply_audit, run_audit

    request = AuditRequest(train_dir, options, model, move_to=move_to, dry_run=dry_run)
    audit_options = request.check()
    root = request.root
    device = _device(device)
    bundle = _model(model, device) if model is not None else None
    with _moving(root, request.move_to, dry_run) as quarantine:  # the lock is held from the walk to the last move
        result = run_audit(root, audit_options, bundle=bundle, device=device, progress=progress)
        if quarantine is not None:
            apply_audit(result.records, root, result.summary, quarantine, dry_run)
    return AuditRun(result.records, result.summary, result.class_names)


def learn(quarantine, model, *, train_dir=None, device: str = "auto"):
    """Learn from the review of `quarantine` (what was restored, accepted, rejected, deleted)
    and save a new version of `model` when held-out decisions show the learned rule is better
    (pipeline.learn.step.LearnOutcome; `imgclean learn`)."""
    from .jobs.learn import LearnRequest
    from .pipeline.learn.step import run_learn

    request = LearnRequest(quarantine, model, train_dir=train_dir)
    request.check()
    return run_learn(Path(quarantine), Path(model), train_dir=None if train_dir is None else Path(train_dir),
                     device=_device(device))


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
