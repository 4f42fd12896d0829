"""`imgclean apply` of an audit report: the reviewed findings move through the quarantine as
`audit --move-to` moves them (journaled, restorable), a copy only while its original stays, and
a report with a bad row moves nothing. Reports here are written with the audit's own writer from
a small hand-made training folder (no training needed)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tree_snapshot
from imgclean import api
from imgclean.cli import app
from imgclean.quarantine.moves import read_manifest
from imgclean.reports.audit_records import AuditRecord, AuditWriter

runner = CliRunner()
OLD, NEW = 1_600_000_000 * 10**9, 1_700_000_000 * 10**9


def invoke(*args):
    return runner.invoke(app, [os.fspath(a) for a in args])


def make(path: Path, data: bytes, mtime: int = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime, mtime))
    return path


def finding(root: Path, path: str, issue: str, **kw) -> AuditRecord:
    st = os.stat(root / path)
    return AuditRecord(path, issue, label=path.split("/")[0], size=st.st_size, mtime_ns=st.st_mtime_ns, dev=st.st_dev,
                       ino=st.st_ino, **kw)


@pytest.fixture
def train(tmp_path) -> Path:
    """cat/orig.png and its newer copy cat/a_copy.png (named first), cat/wrong.png (a dog filed
    as a cat), dog/fine.png, dog/blob.png (foreign)."""
    root = tmp_path / "train"
    make(root / "cat" / "orig.png", b"same picture")
    make(root / "cat" / "a_copy.png", b"same picture", NEW)
    make(root / "cat" / "wrong.png", b"a dog")
    make(root / "dog" / "fine.png", b"a fine dog")
    make(root / "dog" / "blob.png", b"a blob")
    return root


def write_report(path: Path, root: Path, records: list[AuditRecord]) -> Path:
    with AuditWriter(path, root) as writer:
        for rec in records:
            writer.write(rec)
    return path


def standard(root: Path) -> list[AuditRecord]:
    return [
        finding(root, "cat/a_copy.png", "duplicate", duplicate_of="cat/orig.png", score=1.0, message="same bytes as cat/orig.png"),
        finding(root, "cat/orig.png", "ok"),
        finding(root, "cat/wrong.png", "label_issue", suggested="dog", score=0.9),
        finding(root, "dog/blob.png", "outlier", score=3.5),
        finding(root, "dog/fine.png", "ok"),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_the_findings_move_journaled_and_restore_puts_them_back(train, tmp_path, fmt):
    before = tree_snapshot(train)
    report = write_report(tmp_path / f"audit.{fmt}", train, standard(train))
    q = tmp_path / "q"
    result = invoke("apply", report, "--move-to", q, "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["kind"] == "audit" and got["moved"] == 3 and got["rows"] == 5, got
    assert (got["label_issues"], got["outliers"], got["duplicates"]) == (1, 1, 1)
    assert sorted(os.listdir(train / "cat")) == ["orig.png"] and os.listdir(train / "dog") == ["fine.png"]
    reasons = {Path(r["source"]).name: r["reason"] for r in read_manifest(q) if r["state"] == "started"}
    assert reasons == {"a_copy.png": "duplicate", "wrong.png": "label_issue", "blob.png": "outlier"}
    moved = [r for r in read_manifest(q) if r["state"] == "started"]
    assert {r["details"]["suggested"] for r in moved if r["reason"] == "label_issue"} == {"dog"}
    assert invoke("restore", q).exit_code == 0
    assert tree_snapshot(train) == before


def test_a_dry_run_plans_and_touches_nothing(train, tmp_path):
    before = tree_snapshot(train)
    report = write_report(tmp_path / "audit.jsonl", train, standard(train))
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["would_move"] == 3 and got["moved"] == 0
    assert {p["source"] for p in got["plan"]} == {"cat/a_copy.png", "cat/wrong.png", "dog/blob.png"}
    assert tree_snapshot(train) == before and not (tmp_path / "q").exists()


def test_move_issues_chooses_the_findings(train, tmp_path):
    report = write_report(tmp_path / "audit.jsonl", train, standard(train))
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--move-issues", "duplicate", "--json",
                    "--fail-on-reject")
    assert result.exit_code == 3, result.output  # something moved, and --fail-on-reject asked to say so
    assert json.loads(result.stdout)["moved"] == 1
    assert not (train / "cat" / "a_copy.png").exists() and (train / "cat" / "wrong.png").exists()
    bad = invoke("apply", report, "--move-to", tmp_path / "q", "--move-issues", "typo")
    assert bad.exit_code == 2 and "--move-issues" in bad.output


def test_a_copy_stays_when_its_original_moves_too_or_is_gone(train, tmp_path):
    records = standard(train)
    records[1] = finding(train, "cat/orig.png", "outlier", score=2.0)  # the original is foreign too
    report = write_report(tmp_path / "audit.jsonl", train, records)
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["kept"] == 1 and got["moved"] == 3
    assert (train / "cat" / "a_copy.png").exists() and not (train / "cat" / "orig.png").exists()


def test_a_copy_whose_original_is_gone_is_kept(train, tmp_path):
    report = write_report(tmp_path / "audit.jsonl", train, standard(train))
    os.unlink(train / "cat" / "orig.png")  # deleted by hand after the audit
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json", "--report", tmp_path / "done.jsonl")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kept"] == 1 and (train / "cat" / "a_copy.png").exists()
    from imgclean.reports.audit_records import read_audit

    rows = {r["path"]: r for r in read_audit(tmp_path / "done.jsonl")}
    assert rows["cat/a_copy.png"]["action"] == "kept" and "not in the folder" in rows["cat/a_copy.png"]["message"]
    assert rows["cat/wrong.png"]["action"] == "moved"


def test_two_copies_naming_each_other_both_stay(train, tmp_path):
    records = [finding(train, "cat/a_copy.png", "duplicate", duplicate_of="cat/orig.png"),
               finding(train, "cat/orig.png", "duplicate", duplicate_of="cat/a_copy.png")]
    report = write_report(tmp_path / "audit.jsonl", train, records)
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kept"] == 2
    assert (train / "cat" / "a_copy.png").exists() and (train / "cat" / "orig.png").exists()


def test_a_file_changed_since_the_audit_or_accepted_stays(train, tmp_path):
    report = write_report(tmp_path / "audit.jsonl", train, standard(train))
    make(train / "dog" / "blob.png", b"edited since")
    accepted = invoke("accept", train / "cat" / "wrong.png", "--root", train)
    assert accepted.exit_code == 0, accepted.output
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert (got["moved"], got["changed"], got["accepted"]) == (1, 1, 1), got
    assert (train / "dog" / "blob.png").read_bytes() == b"edited since" and (train / "cat" / "wrong.png").exists()


@pytest.mark.parametrize("bad, says", [
    ({"issue": "wrong_issue"}, "unknown issue"),
    ({"issue": "duplicate", "duplicate_of": None}, "without duplicate_of"),
    ({"issue": "duplicate", "duplicate_of": "/etc/passwd"}, "absolute"),
    ({"issue": "duplicate", "duplicate_of": "../x.png"}, "climbs out"),
    ({"issue": "duplicate", "duplicate_of": "cat/wrong.png", "path": "cat/wrong.png"}, "names the file itself"),
    ({"status": "exploded"}, "unknown status"),
    ({"path": "../../etc/passwd"}, "climbs out"),
    ({"size": -1}, "size"),
    ({"root": "/somewhere/else"}, "another folder"),
    ({"issue": "outlier", "path": "dog/.hidden.png"}, "hidden"),
])  # fmt: skip
def test_a_report_with_a_bad_row_moves_nothing(train, tmp_path, bad, says):
    rows = [{**r.to_dict(), "root": str(train)} for r in standard(train)]
    rows[2].update(bad)
    report = tmp_path / "audit.jsonl"
    report.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = tree_snapshot(train)
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == 1, result.output
    assert says in result.output and json.loads(result.stdout)["refused"] is True
    assert tree_snapshot(train) == before and not (tmp_path / "q").exists()


def test_an_original_behind_a_symbolic_link_is_refused(train, tmp_path):
    (train / "linked").symlink_to(train / "cat")
    records = [finding(train, "cat/a_copy.png", "duplicate", duplicate_of="linked/orig.png")]
    report = write_report(tmp_path / "audit.jsonl", train, records)
    result = invoke("apply", report, "--move-to", tmp_path / "q")
    assert result.exit_code == 1 and "its original" in result.output and "symbolic link" in result.output
    assert (train / "cat" / "a_copy.png").exists()


def test_move_issues_is_for_audit_reports_only(train, tmp_path, model_dir):
    scan_report = tmp_path / "scan.csv"
    assert invoke("scan", train / "dog", "-m", model_dir, "--report", scan_report, "-q").exit_code == 0
    result = invoke("apply", scan_report, "--move-to", tmp_path / "q", "--move-issues", "outlier")
    assert result.exit_code == 2 and "audit reports" in result.output


def test_the_api_applies_an_audit_report(train, tmp_path):
    report = write_report(tmp_path / "audit.csv", train, standard(train))
    result = api.apply(report, tmp_path / "q", move_issues=["outlier"])
    assert result.summary.moved == 1 and [r.path for r in result.records] == ["dog/blob.png"]
    assert not (train / "dog" / "blob.png").exists()
    with pytest.raises(api.ApiError):
        api.apply(report, tmp_path / "q", move_issues=["nonsense"])
