"""One front door (issue 26): the CLI and imgclean.api build the same request objects
(imgclean/jobs/), so every bad request is refused by both, before anything is read, written or
moved: the CLI with its exit code (2 for a request refused as asked, 1 for a model that cannot
serve it) and one error line, never a traceback; the API with the same ImgcleanError subclass and,
where click does not refuse the value first, the very same message."""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from conftest import make_incoming_folder, tree_snapshot
from imgclean import api
from imgclean.cli import EXIT_ERROR, EXIT_USAGE, app
from imgclean.errors import ImgcleanError
from imgclean.fileops import MANIFEST_NAME
from imgclean.jobs.base import MethodError, RequestError
from imgclean.pipeline.apply.applier import QuarantinePlacementError


@dataclass
class Case:
    cli: list  # the command line's arguments
    call: Callable[[], object]  # the same request through the library door
    error: type  # the ImgcleanError subclass the library raises
    code: int = EXIT_USAGE  # the CLI's exit code
    same_message: bool = True  # False where click refuses the value before any request is made
    fragment: str = ""  # a part of both messages when they are not the same


def quarantine_at(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST_NAME).write_text("")
    return path


def scan_report(folder: Path, model_dir, report: Path) -> Path:
    from imgclean.reports.records import RecordWriter

    with RecordWriter(report, folder) as writer:
        api.scan(folder, model_dir, device="cpu", keep_records=False, on_record=writer)
    return report


def scan_cases(t: Path, m, train: Path) -> dict:
    f = t / "in"
    return {
        "scan: cache dir inside the folder": Case(
            ["scan", f, "-m", m, "--cache-dir", f / "cache"],
            lambda: api.scan(f, m, use_cache=True, cache_dir=f / "cache", device="cpu"), RequestError),
        "scan: quarantine is the folder": Case(
            ["scan", f, "-m", m, "--move-to", f], lambda: api.scan(f, m, move_to=f, device="cpu"),
            QuarantinePlacementError),
        "scan: quarantine above the folder": Case(
            ["scan", f, "-m", m, "--move-to", t], lambda: api.scan(f, m, move_to=t, device="cpu"),
            QuarantinePlacementError),
        "scan: the folder inside a quarantine": Case(
            ["scan", t / "q" / "sub", "-m", m], lambda: api.scan(t / "q" / "sub", m, device="cpu"), RequestError),
        "scan: missing folder": Case(
            ["scan", t / "nowhere", "-m", m], lambda: api.scan(t / "nowhere", m, device="cpu"), RequestError),
        "scan: dry run without a quarantine": Case(
            ["scan", f, "-m", m, "--dry-run"], lambda: api.scan(f, m, dry_run=True, device="cpu"), RequestError),
        "scan: method the model lacks": Case(
            ["scan", f, "-m", m, "--method", "head"], lambda: api.scan(f, m, method="head", device="cpu"),
            MethodError, code=EXIT_ERROR),
        "scan: unknown method": Case(
            ["scan", f, "-m", m, "--method", "nope"], lambda: api.scan(f, m, method="nope", device="cpu"),
            RequestError, same_message=False, fragment="nope"),
        "scan: batch size 0": Case(
            ["scan", f, "-m", m, "--batch-size", "0"], lambda: api.scan(f, m, batch_size=0, device="cpu"),
            RequestError, same_message=False, fragment="batch-size"),
        "scan: ray options without the ray engine": Case(
            ["scan", f, "-m", m, "--ray-workers", "2"], lambda: api.scan(f, m, ray_workers=2, device="cpu"),
            RequestError),
    }


def scan_request_cases(t: Path, m, train: Path) -> dict:
    """Requests only the CLI can word (a file list read from a file): the library door is the request itself."""
    from imgclean.jobs.scan import ScanRequest

    f = t / "in"
    return {
        "scan: --files-from is the --report file": Case(
            ["scan", f, "-m", m, "--files-from", t / "list.csv", "--report", t / "list.csv"],
            lambda: ScanRequest(f, m, files_from=t / "list.csv", report=t / "list.csv").check(), RequestError),
        "scan: --files-from with a file, not a folder": Case(
            ["scan", f / "a.png", "-m", m, "--files-from", t / "names.txt"],
            lambda: ScanRequest(f / "a.png", m, files_from=t / "names.txt").check(), RequestError),
        "scan: report exists, no --overwrite-report": Case(
            ["scan", f, "-m", m, "--report", t / "old.csv"],
            lambda: ScanRequest(f, m, report=t / "old.csv").check(), RequestError),
    }


def apply_cases(t: Path, m, train: Path) -> dict:
    f, r = t / "in", t / "scan.jsonl"
    return {
        "apply: missing report": Case(
            ["apply", t / "none.jsonl", "--move-to", t / "q2"], lambda: api.apply(t / "none.jsonl", t / "q2"),
            RequestError),
        "apply: quarantine is the report's folder": Case(
            ["apply", r, "--move-to", f], lambda: api.apply(r, f), QuarantinePlacementError),
        "apply: --move-issues of a scan report": Case(
            ["apply", r, "--move-to", t / "q2", "--move-issues", "outlier"],
            lambda: api.apply(r, t / "q2", move_issues=["outlier"]), RequestError),
        "apply: unknown issue": Case(
            ["apply", r, "--move-to", t / "q2", "--move-issues", "typo"],
            lambda: api.apply(r, t / "q2", move_issues=["typo"]), RequestError),
    }


def fit_cases(t: Path, m, train: Path) -> dict:
    fit = ["fit", train, "--epochs", "1"]
    return {
        "fit: missing training folder": Case(
            ["fit", t / "nowhere", "-o", t / "m"], lambda: api.fit(t / "nowhere", t / "m"), RequestError),
        "fit: model exists, no --force": Case(
            [*fit, "-o", t / "old-model"], lambda: api.fit(train, t / "old-model", epochs=1), RequestError),
        "fit: model inside a quarantine": Case(
            [*fit, "-o", t / "q" / "model"], lambda: api.fit(train, t / "q" / "model", epochs=1), RequestError),
        "fit: channels 2": Case(
            [*fit, "-o", t / "m", "--channels", "2"], lambda: api.fit(train, t / "m", channels=2), RequestError),
        "fit: two means": Case(
            [*fit, "-o", t / "m", "--mean", "0.5,0.5"], lambda: api.fit(train, t / "m", mean=[0.5, 0.5]),
            RequestError),
        "fit: missing reject folder": Case(
            [*fit, "-o", t / "m", "--reject-dir", t / "nowhere"],
            lambda: api.fit(train, t / "m", reject_dir=t / "nowhere"), RequestError),
        "fit: val fraction out of range": Case(
            [*fit, "-o", t / "m", "--val-fraction", "0.95"], lambda: api.fit(train, t / "m", val_fraction=0.95),
            RequestError, same_message=False, fragment="val-fraction"),
    }


def audit_cases(t: Path, m, train: Path) -> dict:
    f = t / "in"
    return {
        "audit: missing folder": Case(["audit", t / "nowhere"], lambda: api.audit(t / "nowhere"), RequestError),
        "audit: quarantine is the folder": Case(
            ["audit", f, "--move-to", f], lambda: api.audit(f, move_to=f), QuarantinePlacementError),
        "audit: dry run without a quarantine": Case(
            ["audit", f, "--dry-run"], lambda: api.audit(f, dry_run=True), RequestError),
        "audit: the folder inside a quarantine": Case(
            ["audit", t / "q" / "sub"], lambda: api.audit(t / "q" / "sub"), RequestError),
        "audit: one fold": Case(
            ["audit", f, "--folds", "1"], lambda: api.audit(f, folds=1), RequestError, same_message=False,
            fragment="folds"),
    }


def evaluate_and_learn_cases(t: Path, m, train: Path) -> dict:
    return {
        "evaluate: missing --in": Case(
            ["evaluate", "--in", t / "nowhere", "--ood", t / "in", "-m", m],
            lambda: api.evaluate(m, t / "nowhere", t / "in", device="cpu"), RequestError),
        "evaluate: missing --ood": Case(
            ["evaluate", "--in", train, "--ood", t / "nowhere", "-m", m],
            lambda: api.evaluate(m, train, t / "nowhere", device="cpu"), RequestError),
        "evaluate: batch size 0": Case(
            ["evaluate", "--in", train, "--ood", t / "in", "-m", m, "--batch-size", "0"],
            lambda: api.evaluate(m, train, t / "in", batch_size=0, device="cpu"), RequestError, same_message=False,
            fragment="batch-size"),
        "learn: missing quarantine": Case(
            ["learn", t / "nowhere", "-m", t / "model-copy"], lambda: api.learn(t / "nowhere", t / "model-copy"),
            RequestError),
        "learn: missing training folder": Case(
            ["learn", t / "q", "-m", t / "model-copy", "--train-dir", t / "nowhere"],
            lambda: api.learn(t / "q", t / "model-copy", train_dir=t / "nowhere"), RequestError),
    }


BUILDERS = (scan_cases, scan_request_cases, apply_cases, fit_cases, audit_cases, evaluate_and_learn_cases)
NAMES = [name for build in BUILDERS for name in build(Path("t"), "m", Path("train"))]


@pytest.fixture
def world(tmp_path, model_dir, train_dir):
    """A scanned folder `in` (one picture per file), a quarantine `q` with a folder `sub` in it,
    a scan report of `in`, an old report, an old model folder and a file list."""
    make_incoming_folder(tmp_path / "in", normal=2, ood=1)
    (tmp_path / "in" / "a.png").write_bytes((tmp_path / "in" / sorted(os.listdir(tmp_path / "in"))[0]).read_bytes())
    (quarantine_at(tmp_path / "q") / "sub").mkdir()
    scan_report(tmp_path / "in", model_dir, tmp_path / "scan.jsonl")
    (tmp_path / "old.csv").write_text("path,status\n")
    (tmp_path / "old-model").mkdir()
    (tmp_path / "names.txt").write_text("a.png\n")
    cases = {name: case for build in BUILDERS for name, case in build(tmp_path, model_dir, train_dir).items()}
    return tmp_path, cases


def cli_error(output: str) -> tuple[str, int]:
    """The message of the error line (a usage error's `imgclean CMD: error: ...` or `error: ...`)
    and how many error lines there were."""
    lines = [line for line in output.splitlines() if "error: " in line]
    return (lines[0].split("error: ", 1)[1] if lines else ""), len(lines)


@pytest.mark.parametrize("name", NAMES)
def test_both_doors_refuse_the_same_bad_request(world, name):
    tmp_path, cases = world
    case = cases[name]
    before = tree_snapshot(tmp_path)
    result = CliRunner().invoke(app, [str(a) for a in case.cli])
    assert result.exit_code == case.code, (name, result.output)
    assert "Traceback" not in result.output and not isinstance(result.exception, (AssertionError, TypeError)), result.output
    said, lines = cli_error(result.output)
    assert lines == 1 and said, (name, result.output)
    assert tree_snapshot(tmp_path) == before, name  # nothing moved, nothing written

    with pytest.raises(ImgcleanError) as raised:
        case.call()
    assert type(raised.value) is case.error, (name, type(raised.value), raised.value)
    message = str(raised.value)
    assert "\n" not in message
    if case.same_message:
        assert message == said, name
    else:
        assert case.fragment in message and case.fragment in said, (name, message, said)
    assert tree_snapshot(tmp_path) == before, name


def test_every_job_has_cases_and_at_least_a_dozen_kinds():
    jobs = {name.split(":")[0] for name in NAMES}
    assert jobs == {"scan", "apply", "fit", "audit", "evaluate", "learn"}
    assert len(NAMES) >= 12


def test_a_result_owns_its_exit_code():
    from imgclean.jobs.results import ExitRules, ScanResult
    from imgclean.pipeline.apply.applier import ScanSummary

    summary = ScanSummary(root="/r", model="m")
    summary.counts["ood"] = 2
    assert ScanResult(summary).exit_code == 0
    assert ScanResult(summary, rules=ExitRules(fail_on_reject=True)).exit_code == 3
    summary.unlisted = 1
    flagged = ScanResult(summary, rules=ExitRules(fail_on_reject=True))
    assert flagged.exit_code == 5 and "could not be listed" in flagged.error_line
    summary.interrupted = True
    assert ScanResult(summary, stop_code=143).exit_code == 143
    json.dumps(summary.to_dict())
