"""Issue 10 item 17: names that cannot take a suffix, and names the quarantine keeps for itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_moves import _no_hook, make, qroot, scan, user_files  # noqa: F401  (fixtures)

from imgclean.fileops import numbered
from imgclean.quarantine.moves import MANIFEST_NAME, MoveRequest, Quarantine, is_quarantine, read_manifest, restore


def names(base: str, limit: int, n: int = 3) -> list[bytes]:
    it = numbered(Path("/q") / base, limit)
    return [os.fsencode(next(it).name) for _ in range(n)]


def test_numbered_names_fit_the_limit_and_keep_the_extension() -> None:
    assert names("abcdefgh.jpg", 14) == [b"abcdefgh.jpg", b"abcdef (1).jpg", b"abcdef (2).jpg"]
    assert names("short.jpg", 255) == [b"short.jpg", b"short (1).jpg", b"short (2).jpg"]
    assert names("abcdefghijklmnop.jpg", 12)[0] == b"abcdefgh.jpg"  # the base too, if too long here


@pytest.mark.parametrize("stem", ["\u00e9" * 10, "\U0001f600" * 5, os.fsdecode(b"\xff\xfe" * 10)])
def test_shortening_never_splits_a_character_or_an_escaped_byte(stem: str) -> None:
    for raw in names(stem + ".png", 17, 4)[1:]:
        assert len(raw) <= 17 and raw.endswith(b".png")
        assert os.fsencode(os.fsdecode(raw)) == raw
        if not stem.startswith("\udcff"):
            raw.decode("utf-8")  # valid UTF-8 stays valid
        assert raw.startswith(os.fsencode(os.fsdecode(raw)[: -len(" (1).png")]))


def test_absurd_extension_is_shortened_with_the_name() -> None:
    raw = names("x." + "e" * 40, 20)[1]
    assert len(raw) <= 20 and raw.endswith(b" (1)")


@pytest.mark.parametrize("kind", ["ascii", "utf8"])
def test_255_byte_name_taken_twice_gets_shortened_unique_names(scan: Path, qroot: Path, kind: str) -> None:
    stem = "a" * 251 if kind == "ascii" else "\u00e9" * 125 + "a"  # 251 bytes either way
    name = stem + ".jpg"
    assert len(os.fsencode(name)) == 255
    roots = [scan / f"r{i}" for i in range(3)]
    reqs = []
    for i, root in enumerate(roots):
        r = make(root, name, b"version %d" % i)
        reqs.append(MoveRequest(r.source, root, "ood", r.size, r.mtime_ns, {}))
    with Quarantine(qroot) as q:
        results = [q.move(r) for r in reqs]
    assert [r.status for r in results] == ["moved"] * 3, [r.message for r in results]
    dests = [r.destination for r in results]
    assert len(set(dests)) == 3 and all(len(os.fsencode(d.name)) <= 255 and d.suffix == ".jpg" for d in dests)
    assert [d.read_bytes() for d in dests] == [b"version 0", b"version 1", b"version 2"]
    assert {r.status for r in restore(qroot)} == {"restored"}
    assert [r.source.read_bytes() for r in reqs] == [b"version 0", b"version 1", b"version 2"]


def test_top_level_names_of_the_quarantines_own_files(scan: Path, qroot: Path) -> None:
    folder = make(scan, f"{MANIFEST_NAME}/inside.jpg", b"in a folder named like the manifest")
    as_file = make(scan / "other", MANIFEST_NAME, b"a file named like the manifest")
    lock = make(scan / "other", ".imgclean.lock", b"a file named like the lock")
    reqs = [folder, MoveRequest(as_file.source, scan / "other", "ood", as_file.size, as_file.mtime_ns, {}),
            MoveRequest(lock.source, scan / "other", "ood", lock.size, lock.mtime_ns, {})]  # fmt: skip
    with Quarantine(qroot) as q:
        assert q.plan_destination(reqs[0]) == qroot / f"_{MANIFEST_NAME}" / "inside.jpg"
        assert q.plan_destination(reqs[2]) == qroot / "_.imgclean.lock"
        results = [q.move(r) for r in reqs]
        # The scan root's own .imgclean.lock marks it as a folder imgclean moved from (a walk never
        # yields it, being hidden): it is never moved.
        assert [r.status for r in results] == ["moved", "moved", "error"], [r.message for r in results]
    results = results[:2]
    assert [r.destination for r in results] == [qroot / f"_{MANIFEST_NAME}" / "inside.jpg", qroot / "_imgclean-manifest (1).jsonl"]
    assert len(read_manifest(qroot)) == 4  # the journal is intact
    assert all(r.destination == Path(rec["destination"]) for r, rec in zip(results, read_manifest(qroot)[1::2]))
    back = restore(qroot)
    assert sorted(r.status for r in back) == ["restored"] * 2
    assert folder.source.read_bytes() == b"in a folder named like the manifest"
    assert as_file.source.read_bytes() == b"a file named like the manifest"
    assert lock.source.read_bytes() == b"a file named like the lock"
    assert user_files(qroot) == []


def test_a_folder_named_like_the_manifest_does_not_make_a_quarantine(scan: Path, qroot: Path) -> None:
    (scan / MANIFEST_NAME).mkdir()
    assert not is_quarantine(scan)
    with Quarantine(qroot):
        pass
    assert is_quarantine(qroot)
