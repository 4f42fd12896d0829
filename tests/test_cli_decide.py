"""imgclean accept / reject / withdraw / decisions, through the CLI with real files."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tree_snapshot
from imgclean.cli import app
from imgclean.quarantine import decision_ops
from imgclean.quarantine.decision_check import AcceptedFiles
from imgclean.quarantine.decision_records import DECISIONS_NAME
from imgclean.quarantine.decisions import read_folder

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    """Run the CLI in-process; the logging it points at CliRunner's (then closed) stream is put back."""
    import logging

    saved = logging.getLogger().handlers[:]
    try:
        return runner.invoke(app, [os.fspath(a) for a in args])
    finally:
        logging.getLogger().handlers[:] = saved


def as_json(result) -> dict:
    assert "Traceback" not in result.output
    return json.loads(result.stdout)


def accepted(root: Path, rel: str) -> bool:
    st = os.stat(root / rel)
    return AcceptedFiles(root).accepted(rel, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino) is not None


@pytest.fixture
def root(tmp_path) -> Path:
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(b"picture a")
    (folder / "b.png").write_bytes(b"picture bb")
    (folder / "sub" / "c.png").write_bytes(b"picture ccc")
    (folder / ".imgclean.lock").write_bytes(b"")  # what a scan --move-to leaves: the folder was scanned
    return folder


def test_accept_list_withdraw_round_trip(root):
    result = invoke("accept", root / "a.png", root / "sub" / "c.png", "--json")
    assert result.exit_code == 0, result.output
    doc = as_json(result)
    assert doc["counts"] == {"accepted": 2} and doc["problems"] == 0
    assert {f["folder"] for f in doc["files"]} == {os.fsdecode(root)}
    assert accepted(root, "a.png") and accepted(root, "sub/c.png") and not accepted(root, "b.png")

    listed = invoke("decisions", root, "--json")
    assert listed.exit_code == 0, listed.output
    doc = as_json(listed)
    assert doc["counts"] == {"accepted": 2, "rejected": 0}
    assert sorted(Path(d["path"]).name for d in doc["decisions"]) == ["a.png", "c.png"]
    assert {d["source"] for d in doc["decisions"]} == {"accept"} and all(d["present"] for d in doc["decisions"])

    again = invoke("accept", root / "a.png")
    assert again.exit_code == 0 and "already decided" in again.stdout

    gone = invoke("withdraw", root / "a.png", "--json")
    assert gone.exit_code == 0, gone.output
    assert as_json(gone)["counts"] == {"withdrawn": 1}
    assert not accepted(root, "a.png") and accepted(root, "sub/c.png")
    text = invoke("decisions", root)
    assert text.exit_code == 0 and "accepted: 'sub/c.png'" in text.stdout and "a.png" not in text.stdout
    assert "1 decision(s): accepted 1, rejected 0" in text.stdout
    nothing = invoke("withdraw", root / "a.png")
    assert nothing.exit_code == 0 and "no decision to withdraw" in nothing.stdout


def test_a_file_changed_after_acceptance_is_not_accepted_until_accepted_again(root):
    assert invoke("accept", root / "b.png").exit_code == 0
    (root / "b.png").write_bytes(b"picture BB")  # same size, new content
    assert not accepted(root, "b.png")
    assert invoke("accept", root / "b.png").exit_code == 0
    assert accepted(root, "b.png")


def test_accept_finds_the_scanned_folder_or_asks_for_root(root, tmp_path):
    assert invoke("accept", root / "sub" / "c.png").exit_code == 0
    assert (root / DECISIONS_NAME).is_file() and not (root / "sub" / DECISIONS_NAME).exists()
    loose = tmp_path / "never-scanned"
    loose.mkdir()
    (loose / "x.png").write_bytes(b"x")
    result = invoke("accept", loose / "x.png")
    assert result.exit_code == 2 and "give --root FOLDER" in result.output
    assert invoke("accept", loose / "x.png", "--root", loose).exit_code == 0
    assert accepted(loose, "x.png")


@pytest.mark.parametrize("bad, says", [
    ("quarantine", "inside the quarantine"),
    ("outside", "outside --root"),
    ("missing", "does not exist"),
    ("symlink", "not a regular file"),
    ("folder", "not a regular file"),
    ("hidden", "hidden"),
])  # fmt: skip
def test_bad_paths_are_refused_before_anything_is_recorded(root, tmp_path, bad, says):
    q = root / "q"
    q.mkdir()
    (q / "imgclean-manifest.jsonl").write_bytes(b"")
    (q / "held.png").write_bytes(b"held")
    (tmp_path / "outside.png").write_bytes(b"out")
    (root / "link.png").symlink_to(root / "a.png")
    (root / ".hidden.png").write_bytes(b"h")
    path = {"quarantine": q / "held.png", "outside": tmp_path / "outside.png", "missing": root / "nope.png",
            "symlink": root / "link.png", "folder": root / "sub", "hidden": root / ".hidden.png"}[bad]
    for command in (["accept"], ["reject", "--move-to", tmp_path / "q2"]):
        result = invoke(*command, root / "a.png", path, "--root", root)
        assert result.exit_code == 2, result.output
        assert says in result.output and "Traceback" not in result.output
    assert not (root / DECISIONS_NAME).exists() and not (tmp_path / "q2").exists()
    assert (root / "a.png").exists()


def test_reject_moves_the_file_journaled_and_restore_puts_it_back(root, tmp_path):
    q = tmp_path / "quarantine"
    result = invoke("reject", root / "sub" / "c.png", "--move-to", q, "--json")
    assert result.exit_code == 0, result.output
    [entry] = as_json(result)["files"]
    assert entry["status"] == "rejected" and entry["destination"] == os.fsdecode(q / "sub" / "c.png")
    assert not (root / "sub" / "c.png").exists() and (q / "sub" / "c.png").read_bytes() == b"picture ccc"
    [started] = [json.loads(line) for line in (q / "imgclean-manifest.jsonl").read_text().splitlines()
                 if json.loads(line)["state"] == "started"]
    assert started["reason"] == "rejected" and started["details"]["decision"] == "rejected by a person"
    decision = read_folder(root).log.records[0]
    assert decision.kind == "rejected" and decision.journal_id == started["id"] and decision.sha256 == started["sha256"]

    listed = as_json(invoke("decisions", q, "--json"))
    [item] = listed["decisions"]
    assert item["label"] == "rejected" and item["quarantined"] == os.fsdecode(q / "sub" / "c.png")

    back = invoke("restore", q)
    assert back.exit_code == 0, back.output
    assert (root / "sub" / "c.png").read_bytes() == b"picture ccc" and not (q / "sub" / "c.png").exists()


def test_reject_refuses_a_quarantine_that_holds_the_folder(root):
    result = invoke("reject", root / "a.png", "--move-to", root.parent)
    assert result.exit_code == 2 and "contains it" in result.output
    assert (root / "a.png").exists() and not (root.parent / "imgclean-manifest.jsonl").exists()


def test_the_review_page_is_recorded_as_the_source(root, tmp_path):
    assert invoke("accept", root / "a.png", "--from-review").exit_code == 0
    assert invoke("reject", root / "b.png", "--move-to", tmp_path / "q", "--from-review").exit_code == 0
    assert [d.source for d in read_folder(root).log.records] == ["review", "review"]


def test_dry_runs_change_nothing(root, tmp_path):
    assert invoke("accept", root / "b.png").exit_code == 0
    before = tree_snapshot(tmp_path)
    dry = [invoke("accept", root / "a.png", "--dry-run"),
           invoke("reject", root / "a.png", "--move-to", tmp_path / "q", "--dry-run"),
           invoke("withdraw", root / "b.png", "--dry-run")]
    assert [r.exit_code for r in dry] == [0, 0, 0], [r.output for r in dry]
    assert "would accept: " in dry[0].stdout
    assert "would reject: " in dry[1].stdout and os.fsdecode(tmp_path / "q" / "a.png") in dry[1].stdout
    assert "would withdraw: " in dry[2].stdout
    assert tree_snapshot(tmp_path) == before and not (tmp_path / "q").exists()
    assert accepted(root, "b.png") and not accepted(root, "a.png")


@pytest.mark.parametrize("content, says", [
    (b"{not json\n", "not a JSON record"),
    (b"[" * 5000 + b"]" * 5000 + b"\n", "nested deeper"),
    (b'{"format": 1, "kind": "accepted", "path": 7}\n', "is not one of"),  # wrong types
    (None, "not a plain relative path"),  # an escaping path, otherwise a sound acceptance
    (b"\xff\xfe\x00garbage\n", "not a JSON record"),
])  # fmt: skip
def test_a_damaged_decisions_file_is_reported_and_never_acted_on(root, content, says):
    assert invoke("accept", root / "a.png", root / "b.png").exit_code == 0
    about_a, about_b = (root / DECISIONS_NAME).read_bytes().splitlines(keepends=True)
    if content is None:
        record = json.loads(about_a)
        record.update(path="../../etc/passwd")
        content = (json.dumps(record) + "\n").encode()
    (root / DECISIONS_NAME).write_bytes(content + about_b)  # a damaged line, then a sound one about b
    result = invoke("decisions", root, "--json")
    assert result.exit_code == 1 and "Traceback" not in result.output
    doc = as_json(result)
    assert len(doc["problems"]) == 1 and says in doc["problems"][0]
    assert [Path(d["path"]).name for d in doc["decisions"]] == ["b.png"]
    assert not accepted(root, "a.png")


def test_a_decisions_file_that_is_not_ours_to_trust_is_refused(root):
    assert invoke("accept", root / "a.png").exit_code == 0
    os.chmod(root / DECISIONS_NAME, 0o646)
    before = (root / DECISIONS_NAME).read_bytes()
    listed = invoke("decisions", root)
    assert listed.exit_code == 1 and "writable by group or others" in listed.output
    assert "0 decision(s)" in listed.stdout
    result = invoke("accept", root / "b.png")
    assert result.exit_code == 1 and "refusing to write decisions" in result.output
    result = invoke("reject", root / "b.png", "--move-to", root.parent / "q")
    assert result.exit_code == 1 and "refusing to write decisions" in result.output
    assert (root / "b.png").exists() and not (root.parent / "q").exists()  # nothing moves undecided
    assert (root / DECISIONS_NAME).read_bytes() == before


def test_a_file_changed_while_being_read_is_not_recorded(root, monkeypatch):
    from imgclean import fileops

    def edit(step):
        if step == "hash":
            (root / "a.png").write_bytes(b"edited meanwhile!")

    monkeypatch.setattr(fileops, "fault_hook", edit)
    result = invoke("accept", root / "a.png", root / "b.png")
    assert result.exit_code == 1 and "changed" in result.stdout
    monkeypatch.setattr(fileops, "fault_hook", None)
    assert [d.path for d in read_folder(root).log.records] == ["b.png"]


def test_accept_waits_for_another_run_then_says_who_holds_the_folder(root, monkeypatch):
    from imgclean.quarantine.locking import ScanLock

    monkeypatch.setattr(decision_ops, "LOCK_WAIT_S", 0.3)
    with ScanLock(root):
        result = invoke("accept", root / "a.png")
    assert result.exit_code == 4 and "in use by another imgclean run" in result.output
    assert not (root / DECISIONS_NAME).exists()
    lock = ScanLock(root).__enter__()
    threading.Timer(0.5, lock.release).start()  # a short run ends; the accept waiting for it goes on
    monkeypatch.setattr(decision_ops, "LOCK_WAIT_S", 30)
    result = invoke("accept", root / "a.png")
    assert result.exit_code == 0, result.output
    assert accepted(root, "a.png")


def test_two_accepts_at_once_are_both_recorded(root):
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "imgclean", "accept", os.fspath(root / name), "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in ("a.png", "b.png")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(d.path for d in read_folder(root).log.records) == ["a.png", "b.png"]
    assert accepted(root, "a.png") and accepted(root, "b.png")


def test_a_file_named_twice_is_decided_once(root, tmp_path):
    result = invoke("reject", root / "a.png", root / "sub" / ".." / "a.png", "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == 0, result.output
    assert as_json(result)["counts"] == {"rejected": 1}
    assert len(read_folder(root).log.records) == 1


def test_decisions_needs_a_folder(tmp_path):
    result = invoke("decisions", tmp_path / "nope")
    assert result.exit_code == 2 and "not a folder" in result.output


def test_a_write_that_fails_is_a_problem_for_that_file_only(root, monkeypatch):
    from imgclean import fileops

    writes = []

    def full_disk(step):
        if step == "decision":
            writes.append(step)
            if len(writes) == 2:
                raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileops, "fault_hook", full_disk)
    result = invoke("accept", root / "a.png", root / "b.png", "--json")
    monkeypatch.setattr(fileops, "fault_hook", None)
    assert result.exit_code == 1
    doc = as_json(result)
    assert [f["status"] for f in doc["files"]] == ["accepted", "error"]
    assert "No space left" in doc["files"][1]["message"]
    assert [d.path for d in read_folder(root).log.records] == ["a.png"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_decisions_file_planted_by_another_user_is_refused(root):
    assert invoke("accept", root / "a.png").exit_code == 0
    os.chown(root / DECISIONS_NAME, 54321, 54321)
    before = (root / DECISIONS_NAME).read_bytes()
    listed = invoke("decisions", root, "--json")
    assert listed.exit_code == 1 and "not by you, root or the folder's owner" in as_json(listed)["problems"][0]
    assert as_json(listed)["decisions"] == [] and not accepted(root, "a.png")
    result = invoke("accept", root / "b.png")
    assert result.exit_code == 1 and "refusing to write decisions" in result.output
    assert (root / DECISIONS_NAME).read_bytes() == before
