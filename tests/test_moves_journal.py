"""Issue 10 item 5: every journal record is validated before anything acts on it.

A bad record is reported (logged, returned as "invalid" by restore, kept in Quarantine.invalid)
and never acted on; the others are still recovered and restored; never a traceback.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_moves import _move_all, _no_hook, qroot, scan  # noqa: F401  (fixtures)

from imgclean.quarantine.moves import MANIFEST_NAME, Quarantine, restore


def append(qroot: Path, *records) -> None:
    with open(qroot / MANIFEST_NAME, "a", encoding="ascii") as f:
        for rec in records:
            f.write((rec if isinstance(rec, str) else json.dumps(rec)) + "\n")


def started(scan: Path, qroot: Path, rel: str, **over) -> dict:
    rec = {
        "op": "move", "id": "a" * 32, "state": "started", "source": str(scan / rel),
        "destination": str(qroot / rel), "size": 1, "mtime_ns": 1, "sha256": hashlib.sha256(b"x").hexdigest(),
        "scan_root": str(scan), "time": "t", "reason": "ood", "details": {},
    }  # fmt: skip
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not None}


def check_others_restored(results, reqs, data) -> None:
    ok = [r for r in results if r.status == "restored"]
    assert sorted(r.source for r in ok) == sorted(r.source for r in reqs)
    assert all(r.source.read_bytes() == data[r.source] for r in reqs)


BAD = {
    "source_is_a_number": lambda s, q: started(s, q, "n.jpg", source=5),
    "json_list": lambda s, q: "[1, 2, 3]",
    "missing_sha256": lambda s, q: started(s, q, "m.jpg", sha256=None),
    "missing_destination": lambda s, q: started(s, q, "m.jpg", destination=None),
    "size_is_a_string": lambda s, q: started(s, q, "z.jpg", size="12"),
    "relative_scan_root": lambda s, q: started(s, q, "r.jpg", scan_root="scan"),
    "source_outside_scan_root": lambda s, q: started(s, q, "o.jpg", source=str(s.parent / "o.jpg")),
    "dotdot_in_source": lambda s, q: started(s, q, "o.jpg", source=str(s / ".." / "o.jpg")),
    "unknown_op": lambda s, q: started(s, q, "u.jpg", op="delete"),
    "not_json": lambda s, q: "{not json",
    "ino_without_dev": lambda s, q: started(s, q, "i.jpg", ino=7),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_record_is_reported_and_the_rest_restored(scan: Path, qroot: Path, kind: str) -> None:
    reqs, data = _move_all(scan, qroot, ["a.jpg", "d/b.jpg"])
    append(qroot, BAD[kind](scan, qroot))
    with Quarantine(qroot) as q:  # what scan --move-to does first: no traceback, reported
        assert len(q.invalid) == 1 and q.invalid[0].line == 5
    dry = restore(qroot, dry_run=True)
    assert sorted(r.status for r in dry) == ["invalid", "restored", "restored"]
    results = restore(qroot)
    [bad] = [r for r in results if r.status == "invalid"]
    assert bad.problem and "line 5" in bad.message
    check_others_restored(results, reqs, data)


def test_crafted_id_cannot_delete_a_file_outside(scan: Path, qroot: Path, tmp_path: Path) -> None:
    _move_all(scan, qroot, ["a.jpg"])
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    (qroot / ".imgclean-tmp-x").mkdir()  # makes the crafted path resolve for the kernel
    (scan / "s.jpg").write_bytes(b"x")
    append(qroot, started(scan, qroot, "s.jpg", id="x/../../outside/victim.txt"))
    with Quarantine(qroot) as q:  # recovery runs here
        assert [i.line for i in q.invalid] == [3] and q.recovered == []
    assert victim.read_bytes() == b"precious" and (scan / "s.jpg").read_bytes() == b"x"
    assert [r.status for r in restore(qroot)] == ["restored", "invalid"]
    assert victim.read_bytes() == b"precious"


def test_destination_outside_the_quarantine_is_never_moved_in(scan: Path, qroot: Path, tmp_path: Path) -> None:
    _move_all(scan, qroot, ["a.jpg"])
    outside = tmp_path / "outside" / "secret.txt"
    outside.parent.mkdir()
    outside.write_bytes(b"not yours")
    rec = started(scan, qroot, "secret.txt", id="b" * 32, destination=str(outside))
    append(qroot, rec, {"op": "move", "id": "b" * 32, "state": "done", "time": "t"})
    results = restore(qroot)
    assert sorted(r.status for r in results) == ["invalid", "restored"]
    assert outside.read_bytes() == b"not yours" and not (scan / "secret.txt").exists()


def test_done_record_retargeting_outside_is_ignored(scan: Path, qroot: Path, tmp_path: Path) -> None:
    [req], data = _move_all(scan, qroot, ["a.jpg"])
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"not yours")
    move_id = json.loads((qroot / MANIFEST_NAME).read_text().splitlines()[0])["id"]
    append(qroot, {"op": "move", "id": move_id, "state": "done", "destination": str(outside)})
    results = restore(qroot)
    assert sorted(r.status for r in results) == ["invalid", "restored"]
    assert req.source.read_bytes() == data[req.source] and outside.read_bytes() == b"not yours"


def test_id_started_twice_is_invalid(scan: Path, qroot: Path) -> None:
    _move_all(scan, qroot, ["a.jpg"])
    first = json.loads((qroot / MANIFEST_NAME).read_text().splitlines()[0])
    append(qroot, {**first, "source": str(scan / "other.jpg")})
    results = restore(qroot)
    assert sorted(r.status for r in results) == ["invalid", "restored"]
    assert (scan / "a.jpg").exists() and not (scan / "other.jpg").exists()


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**20), st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from(["move", "restore", "started", "done", "retarget", "kept_both", "a" * 32, "/", "..", "/tmp"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_keys = ["op", "id", "state", "source", "destination", "size", "mtime_ns", "sha256", "dev", "ino",
         "scan_root", "move_id"]  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.dictionaries(st.sampled_from(_keys), _values, max_size=12), _values), max_size=4))
def test_any_damaged_journal_gives_results_never_a_traceback(tmp_path_factory, records) -> None:
    base = tmp_path_factory.mktemp("fuzz")
    scan, qroot = base / "scan", base / "q"
    scan.mkdir()
    _, data = _move_all(scan, qroot, ["a.jpg"])
    append(qroot, *[json.dumps(r) for r in records])
    with Quarantine(qroot):
        pass
    for dry_run in (True, False):
        results = restore(qroot, dry_run=dry_run)
        assert {r.status for r in results} <= {"restored", "invalid", "discarded", "exists", "unaccounted"}
    assert (scan / "a.jpg").read_bytes() == data[scan / "a.jpg"]


# A forged record may name any folder as its scan root. A folder imgclean moved files out of
# holds its .imgclean.lock; records naming any other folder are never acted on.
def test_forged_scan_root_cannot_make_recovery_delete_a_file_outside(scan: Path, qroot: Path, tmp_path: Path) -> None:
    _move_all(scan, qroot, ["a.jpg"])
    outside = tmp_path / "outside"
    victim = outside / "victim.png"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    (qroot / "copy.png").write_bytes(b"precious")  # a "complete copy", so the victim looks provable
    st = victim.stat()
    rec = started(outside, qroot, "victim.png", id="c" * 32, destination=str(qroot / "copy.png"), size=st.st_size,
                  mtime_ns=st.st_mtime_ns, sha256=hashlib.sha256(b"precious").hexdigest())
    append(qroot, rec)
    with Quarantine(qroot) as q:  # recovery runs here
        assert q.recovered == []
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.png"]


def test_forged_scan_root_cannot_make_restore_create_a_file_outside(scan: Path, qroot: Path, tmp_path: Path) -> None:
    _move_all(scan, qroot, ["a.jpg"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (qroot / "planted.png").write_bytes(b"x")
    rec = started(outside, qroot, "planted.png", id="d" * 32)
    append(qroot, rec, {"op": "move", "id": "d" * 32, "state": "done", "time": "t"})
    for dry_run in (True, False):
        results = {r.destination.name: r for r in restore(qroot, dry_run=dry_run)}
        assert results["planted.png"].status == "error" and results["planted.png"].problem
        assert ".imgclean.lock" in results["planted.png"].message
        assert results["a.jpg"].status == "restored"
    assert list(outside.iterdir()) == [] and (qroot / "planted.png").read_bytes() == b"x"
