"""What the scan, restore and learn call: AcceptedFiles.accepted (did a person accept this exact
file?), record_restore (a restore's acceptance) and decisions_of (decisions with their labels)."""
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from imgclean.quarantine import decision_ops as ops
from imgclean.quarantine.decision_check import AcceptedFiles
from imgclean.quarantine.decision_reject import reject
from imgclean.quarantine.decision_records import DECISIONS_NAME
from imgclean.quarantine.decision_views import decisions_of
from imgclean.quarantine.decisions import read_folder
from imgclean.quarantine.journal import fold
from imgclean.quarantine.moves import MoveRequest, Quarantine, restore


def make(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def ask(files: AcceptedFiles, rel: str, root: Path | None = None):
    st = os.stat((root or files.root) / rel)
    return files.accepted(rel, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)


@pytest.fixture
def root(tmp_path) -> Path:
    folder = tmp_path / "incoming"
    make(folder / "keep.png", b"keep me" * 10)
    make(folder / "other.png", b"other!" * 10)  # another picture of the same size
    make(folder / "sub" / "deep.png", b"deep")
    return folder


# ----------------------------------------------------------------------------- AcceptedFiles


def test_an_accepted_file_is_answered_and_others_are_not(root):
    ops.accept([root / "keep.png"], root)
    files = AcceptedFiles(root)
    found = ask(files, "keep.png")
    assert found is not None and found.decision.path == "keep.png" and found.folder == root
    assert "accepted by" in found.message
    assert ask(files, "other.png") is None  # same size, other content: hashed, not accepted
    assert ask(files, "sub/deep.png") is None


def test_no_file_is_hashed_without_an_acceptance_of_its_size(root):
    files = AcceptedFiles(root)
    assert ask(files, "keep.png") is None and ask(files, "sub/deep.png") is None
    assert files.hashed == 0  # no decisions at all
    ops.accept([root / "sub" / "deep.png"], root)
    files = AcceptedFiles(root)
    assert ask(files, "keep.png") is None and ask(files, "other.png") is None
    assert files.hashed == 0  # decisions, but none about a picture of their size
    assert ask(files, "sub/deep.png") is not None and files.hashed == 1


def test_an_edited_file_with_its_size_and_mtime_kept_is_scored_afresh(root):
    ops.accept([root / "keep.png"], root)
    st = os.stat(root / "keep.png")
    (root / "keep.png").write_bytes(b"KEEP ME" * 10)  # same size, new content
    os.utime(root / "keep.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(root / "keep.png").st_mtime_ns == st.st_mtime_ns
    assert ask(AcceptedFiles(root), "keep.png") is None


def test_a_record_that_no_longer_describes_the_file_gets_no(root):
    ops.accept([root / "keep.png"], root)
    st = os.stat(root / "keep.png")
    files = AcceptedFiles(root)
    assert files.accepted("keep.png", st.st_size, st.st_mtime_ns - 1) is None  # scored as another version
    assert files.accepted("keep.png", st.st_size, st.st_mtime_ns, ino=st.st_ino + 1) is None
    assert files.accepted("gone.png", st.st_size, st.st_mtime_ns) is None
    assert files.accepted("../incoming/keep.png", st.st_size, st.st_mtime_ns) is None
    assert files.accepted("keep.png", st.st_size, st.st_mtime_ns) is not None  # dev/ino unknown: not checked


def test_scans_of_a_folder_above_or_inside_see_the_decision(root):
    ops.accept([root / "sub" / "deep.png"], root)
    parent = AcceptedFiles(root.parent)
    assert ask(parent, "incoming/sub/deep.png") is not None  # the decisions file of a folder inside
    child = AcceptedFiles(root / "sub")
    assert ask(child, "deep.png") is not None  # the decisions file of a folder above
    ops.accept([root / "keep.png"], root / "sub" / ".." )  # root given through ..
    assert ask(AcceptedFiles(root.parent), "incoming/keep.png") is not None


def test_a_renamed_file_stays_accepted_inside_the_tree_but_not_outside_it(root, tmp_path):
    ops.accept([root / "keep.png"], root)
    os.rename(root / "keep.png", root / "sub" / "renamed.png")
    assert ask(AcceptedFiles(root), "sub/renamed.png") is not None
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(root / "sub" / "renamed.png", outside / "renamed.png")
    assert ask(AcceptedFiles(outside), "renamed.png") is None


def test_a_decision_in_a_refused_file_is_never_used(root):
    ops.accept([root / "keep.png"], root)
    os.chmod(root / DECISIONS_NAME, 0o666)
    files = AcceptedFiles(root)
    assert ask(files, "keep.png") is None
    assert any("writable by group or others" in p for p in files.problems())


# ----------------------------------------------------------------------------- restore


def quarantine_one(root: Path, q: Path, name: str) -> None:
    st = os.stat(root / name)
    with Quarantine(q) as quarantine:
        result = quarantine.move(MoveRequest(root / name, root, "ood", st.st_size, st.st_mtime_ns, dev=st.st_dev, ino=st.st_ino))
    assert result.status == "moved", result.message


def restore_and_record(q: Path, only: list[Path]) -> list:
    """`imgclean restore`, which records each restored file as accepted (record_restore)."""
    return [r for r in restore(q, only=only) if r.status == "restored"]


def test_a_restored_file_is_recorded_as_accepted_with_its_journal_link(root, tmp_path):
    q = tmp_path / "q"
    quarantine_one(root, q, "keep.png")
    [result] = restore_and_record(q, [root / "keep.png"])
    assert result.message == ""
    [decision] = read_folder(root).log.records
    assert decision.source == "restore" and decision.journal_quarantine == os.fsdecode(q)
    assert decision.journal_id == next(op["id"] for op, _ in fold(q).moves())
    assert ask(AcceptedFiles(root), "keep.png") is not None
    again = ops.record_restore(next(op for op, _ in fold(q).moves()), q)
    assert again.status == "already" and len(read_folder(root).log.records) == 1


def test_record_restore_never_raises(root, tmp_path):
    q = tmp_path / "q"
    quarantine_one(root, q, "keep.png")
    move = next(op for op, _ in fold(q).moves())
    (root / DECISIONS_NAME).write_bytes(b"")
    os.chmod(root / DECISIONS_NAME, 0o620)
    refused = ops.record_restore(move, q)
    assert refused.status == "error" and "writable by group" in refused.message
    os.chmod(root / DECISIONS_NAME, 0o644)
    for broken in ({**move, "sha256": "xyz"}, {**move, "source": "/elsewhere/a.png"}, {**move, "id": None}, {}):
        outcome = ops.record_restore(broken, q)
        assert outcome.status == "error" and "not recorded" in outcome.message
    assert read_folder(root).log.records == []


# ----------------------------------------------------------------------------- decisions_of (learn)


def test_decisions_of_a_quarantine_carry_labels_and_the_rejects_place(root, tmp_path):
    q = tmp_path / "q"
    make(root / "miss.png", b"a missed one")
    [rejected] = reject([root / "miss.png"], q, root)
    ops.accept([root / "keep.png"], root)
    quarantine_one(root, q, "other.png")
    restore_and_record(q, [root / "other.png"])
    listed = decisions_of(q)
    assert listed.problems == []
    by_name = {item.path.name: item for item in listed}
    assert {n: i.label for n, i in by_name.items()} == {"miss.png": "rejected", "keep.png": "accepted", "other.png": "accepted"}
    assert by_name["miss.png"].quarantined == rejected.destination and not by_name["miss.png"].present
    assert by_name["keep.png"].quarantined is None and by_name["keep.png"].present
    assert listed.counts() == {"accepted": 2, "rejected": 1}
    os.unlink(rejected.destination)  # the reviewer deleted it: the label stays, the file is gone
    item = next(i for i in decisions_of(q) if i.label == "rejected")
    assert item.quarantined is None and item.decision.sha256 == hashlib.sha256(b"a missed one").hexdigest()


def test_decisions_of_a_folder_include_those_below_and_only_the_relevant_ones_above(root):
    ops.accept([root / "sub" / "deep.png"], root / "sub")  # stored below
    ops.accept([root / "keep.png"], root.parent)  # stored above, about a picture inside
    make(root.parent / "beside.png", b"beside")
    ops.accept([root.parent / "beside.png"], root.parent)  # stored above, about a picture elsewhere
    names = sorted(i.path.name for i in decisions_of(root))
    assert names == ["deep.png", "keep.png"]


def test_withdrawn_decisions_are_not_listed(root):
    ops.accept([root / "keep.png"], root)
    ops.withdraw([root / "keep.png"])
    assert decisions_of(root).items == []
    assert len(read_folder(root).log.records) == 2  # the history stays


def test_a_second_acceptance_of_the_same_content_elsewhere_is_one_picture(root):
    shutil.copy(root / "keep.png", root / "sub" / "copy.png")
    ops.accept([root / "keep.png"], root)
    ops.accept([root / "sub" / "copy.png"], root)
    [item] = decisions_of(root).items
    assert item.path == root / "sub" / "copy.png"  # the latest decision about that picture


# ----------------------------------------------------------------------------- the nightly loop


def test_a_restored_file_is_accepted_by_every_later_scan(model_dir, model_with_head, incoming, tmp_path):
    """scan --move-to q1; restore one file (recorded); then scans with and without the cache,
    with another model and method: AcceptedFiles says yes for that file's record, and for no
    other rejected record; moving as a wired scan would, into a second quarantine, leaves it."""
    from imgclean import api

    root, _ = incoming
    q1, q2 = tmp_path / "q1", tmp_path / "q2"
    first = api.scan(root, model_dir, move_to=q1, device="cpu", use_cache=True)
    moved = [r for r in first.records if r.action == "moved" and r.status == "ood"]
    assert moved, "the fixture's odd pictures are rejected"
    chosen = moved[0].path
    [restored] = restore_and_record(q1, [root / chosen])
    assert restored.message == "" and read_folder(root).log.records[-1].source == "restore"
    for model, method, cache in ((model_dir, "mahalanobis", True), (model_dir, "mahalanobis", False),
                                 (model_with_head, "head", False)):
        later = api.scan(root, model, device="cpu", use_cache=cache, method=method)
        files = AcceptedFiles(root)
        rejected = [r for r in later.records if r.status in ("ood", "unreadable", "accepted")]  # (scans say accepted now)
        said = {r.path: files.accepted(r.path, r.size, r.mtime_ns, r.dev, r.ino) is not None for r in rejected}
        if method == "mahalanobis":
            assert said[chosen] is True, (cache, said)  # rejected again by the model, accepted by the person
        else:
            assert said.get(chosen) in (True, None), said  # the head may not reject it at all
        assert [p for p, yes in said.items() if yes and p != chosen] == []
    # A wired scan into another quarantine: every rejected record not accepted is moved.
    later = api.scan(root, model_dir, device="cpu")
    files = AcceptedFiles(root)
    with Quarantine(q2) as quarantine:
        for r in later.records:
            if r.status in ("ood", "unreadable") and files.accepted(r.path, r.size, r.mtime_ns, r.dev, r.ino) is None:
                quarantine.move(MoveRequest(root / r.path, root, r.status, r.size, r.mtime_ns, dev=r.dev, ino=r.ino))
    assert (root / chosen).exists()
    assert not any(p.name == Path(chosen).name for p in q2.rglob("*.png"))


# ----------------------------------------------------------------------------- the call sites


@pytest.mark.parametrize("caller, callee", [
    ("imgclean.quarantine.restore", "imgclean.quarantine.decision_ops"),  # restore records its acceptances
    ("imgclean.pipeline.apply.applier", "imgclean.quarantine.decision_check"),  # scan and apply ask AcceptedFiles
    ("imgclean.reports.records", "imgclean.quarantine.decision_check"),  # the review page may show the decision
    ("imgclean.reports.review", "imgclean.quarantine.decision_views"),
])  # fmt: skip
def test_the_call_sites_can_import_these_modules_without_a_cycle(caller, callee):
    from test_architecture import LAYERS, find_cycle, import_graph, layer_of

    graph = import_graph()
    assert caller in graph and callee in graph
    assert layer_of(callee) in LAYERS[layer_of(caller)] or layer_of(callee) == layer_of(caller)
    graph[caller].add(callee)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
