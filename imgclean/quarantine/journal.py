"""The quarantine journal: reading, validating and appending records of ``imgclean-manifest.jsonl``.

Record kinds (one JSON object per line, in order):
  {"op": "move"|"restore", "id", "state": "started", "source", "destination", "size", "mtime_ns",
   "sha256", "dev", "ino", "time", ...}  ("move" also has reason, details, scan_root; "restore" has
                                         move_id and scan_root; dev/ino are absent in old journals)
  {"op", "id", "state": "retarget", "destination"}   name was taken, trying the next free one
  {"op", "id", "state": "done"|"rolled_back"|"changed"|"missing"|"kept_both", "time", ...}
Temp names derive from the id: ``.imgclean-tmp-<id>`` beside the destination (a copy across
filesystems) and ``.imgclean-tmp-<id>-src`` beside the source (the source, taken away atomically
before it is removed). ``kept_both``: recovery could not prove the source is the journaled file,
so both it and the quarantined file were kept.

Every record is validated before anyone acts on it (types; ``id`` a plain token; destinations
inside the quarantine; sources inside the record's absolute ``scan_root``): a record that fails is
reported as :class:`Invalid` and ignored, and never stops the others.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..fileops import MANIFEST_NAME, inside, is_quarantine, resolved_inside, write_all  # noqa: F401  (is_quarantine: re-exported)
from ..structured import Limits, StructuredInputError, json_lines

log = logging.getLogger("imgclean.quarantine.moves")

LOCK_NAME = ".imgclean.lock"  # imgclean.quarantine.locking.LOCK_NAME (not imported: journal stays a leaf)
TMP_PREFIX = ".imgclean-tmp-"
PROBE_PREFIX = ".imgclean-probe-"
FEATURES_NAME = "imgclean-features.bin"  # quarantine.features_log.FEATURES_NAME (journal stays a leaf)
RESERVED = (MANIFEST_NAME, LOCK_NAME, FEATURES_NAME)  # names the quarantine root keeps for itself
UNFINISHED = ("started", "retarget")
FINAL_STATES = ("done", "rolled_back", "changed", "missing", "kept_both")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SHA = re.compile(r"[0-9a-f]{64}")


def capture_name(source: Path, jid: str) -> Path:
    """Where a source is taken away to (atomically, by rename) before it is removed."""
    return source.parent / f"{TMP_PREFIX}{jid}-src"


def copy_tmp_name(destination: Path, jid: str) -> Path:
    """Where a copy across filesystems is written before it gets its final name."""
    return destination.parent / f"{TMP_PREFIX}{jid}"


# ----------------------------------------------------------------------------- reading


# A journal line is at most this long: a record holds two paths the kernel could open (each at
# most PATH_MAX bytes, six characters per escaped byte) and a record's short details.
JOURNAL_LIMITS = Limits(line_bytes=4 << 20)


class UnreadableLine(ValueError):
    """A journal line the bounded reader refused; str() says why ("not JSON (...)", "nested
    deeper than ...", "longer than ...")."""


def iter_lines(manifest: Path, follow_links: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value, or a ValueError saying what is wrong) per non-empty line of a
    journal file (any name), read through the bounded reader (structured.json_lines): a line too
    long, too deep, not UTF-8 or with a NUL is a ValueError like one that is not JSON, reported
    and never acted on. A torn last line (no newline: a crash mid-append) is dropped. A
    quarantine's own manifest is never a link (`follow_links` False: OSError); a file named by
    the user for the review page may be."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:  # O_NONBLOCK: a FIFO fails below instead of hanging the open
        fd = os.open(manifest, flags)
    except FileNotFoundError:
        return
    with open(fd, "rb", buffering=1 << 20) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "the journal is not a regular file", os.fspath(manifest))
        for n, value in json_lines(fh, manifest, JOURNAL_LIMITS):
            if isinstance(value, StructuredInputError):
                if value.torn:
                    continue
                value = UnreadableLine(value.problem)
            yield n, value


def read_lines(manifest: Path, follow_links: bool = False) -> list[tuple[int, Any]]:
    """iter_lines as a list."""
    return list(iter_lines(manifest, follow_links))


def _lines(quarantine_root: Path) -> Iterator[tuple[int, Any]]:
    return iter_lines(Path(quarantine_root) / MANIFEST_NAME)


def read_manifest(quarantine_root: Path) -> list[dict]:
    """Every JSON-object line of the journal, in order, unvalidated. A torn last line is skipped."""
    return _objects(_lines(quarantine_root), Path(quarantine_root) / MANIFEST_NAME)


def _objects(lines: Iterable[tuple[int, Any]], where: Path) -> list[dict]:
    records = []
    for n, value in lines:
        if isinstance(value, dict):
            records.append(value)
        else:
            log.warning("%s line %d is not a journal record; ignored", where, n)
    return records


@dataclass(frozen=True)
class Invalid:
    """A journal line that failed validation; never acted on."""

    line: int
    reason: str
    source: str | None = None  # the record's paths when they are strings, for the report
    destination: str | None = None

    @property
    def message(self) -> str:
        return f"{MANIFEST_NAME} line {self.line}: {self.reason}; record ignored"


class _Bad(ValueError):
    pass


def _int(rec: dict, key: str, optional: bool = False) -> None:
    value = rec.get(key)
    if value is None and optional and key not in rec:
        return
    if type(value) is not int or value < 0:
        raise _Bad(f"{key} is not a non-negative integer")


def _str(rec: dict, key: str) -> str:
    value = rec.get(key)
    if not isinstance(value, str) or not value:
        raise _Bad(f"{key} is missing or not a string")
    return value


def _token(rec: dict, key: str) -> str:
    value = _str(rec, key)
    if not _TOKEN.fullmatch(value):
        raise _Bad(f"{key} {value!r} is not a plain token")
    return value


def _abs_clean(rec: dict, key: str) -> str:
    value = _str(rec, key)
    if "\x00" in value or not os.path.isabs(value) or os.path.normpath(value) != value:
        raise _Bad(f"{key} {value!r} is not a normalised absolute path")
    return value


def _in_quarantine(rec: dict, key: str, qroot: str | None) -> str:
    value = _abs_clean(rec, key)
    if qroot is not None:
        # Lexically inside (no ".." is allowed), or inside once resolved (the quarantine reached by
        # another path than when journaled). Acting on it re-checks the resolved path.
        if value == qroot or not (inside(value, qroot) or resolved_inside(value, qroot)):
            raise _Bad(f"{key} {value!r} is outside the quarantine {qroot}")
        if os.path.basename(value) in RESERVED and os.path.dirname(value) in (qroot, os.path.realpath(qroot)):
            raise _Bad(f"{key} {value!r} names the quarantine's own bookkeeping file")
    return value


def _in_scan_root(rec: dict, key: str, scan_root: str, qroot: str | None) -> str:
    """Lexically inside ``scan_root``; whoever acts on it checks the resolved folder again."""
    value = _abs_clean(rec, key)
    if value == scan_root or not inside(value, scan_root):
        raise _Bad(f"{key} {value!r} is outside the scanned folder {scan_root!r}")
    if qroot is not None and value != qroot and inside(value, qroot):
        raise _Bad(f"{key} {value!r} lies inside the quarantine")
    return value


def _validate(rec: Any, ops: dict[str, dict], qroot: str | None, strict: bool = True) -> dict | None:
    """The op ``rec`` updates (a new one for "started"), or None for a record about an unknown op
    (its started record was invalid or lost); raises _Bad for an invalid record. ``strict``
    False checks only the shape (op, id, state, a restore's move): for showing, never acting."""
    if not isinstance(rec, dict):
        raise _Bad("not a JSON object")
    jid, kind = (_token(rec, "id") if strict else _str(rec, "id")), rec.get("op")
    if kind not in ("move", "restore"):
        raise _Bad(f"op {kind!r} is neither 'move' nor 'restore'")
    state = rec.get("state")
    if state not in UNFINISHED + FINAL_STATES:
        raise _Bad(f"state {state!r} is not a journal state")
    if state != "started":
        op = ops.get(jid)
        if op is None:
            return None
        if op["op"] != kind:
            raise _Bad(f"id {jid} is a {op['op']}, not a {kind}")
        if "destination" in rec and strict:
            dest = _in_quarantine(rec, "destination", qroot) if kind == "move" else _abs_clean(rec, "destination")
            if os.path.dirname(dest) != os.path.dirname(op["destination"]):
                raise _Bad(f"destination {dest!r} is not in the folder the move started in")
        return op
    if jid in ops:
        raise _Bad(f"id {jid} is started twice")
    if not strict:
        if kind == "restore" and _restored_move(rec, ops, rec.get("move_id")) is None:
            return None  # a restore of a move this fold does not know: nothing to show
        return {**rec}
    for key in ("size", "mtime_ns"):
        _int(rec, key)
    if ("dev" in rec) != ("ino" in rec):
        raise _Bad("dev and ino come together")
    for key in ("dev", "ino"):
        _int(rec, key, optional=True)
    if not isinstance(rec.get("sha256"), str) or not _SHA.fullmatch(rec["sha256"]):
        raise _Bad("sha256 is not a hex digest")
    if kind == "move":
        scan_root = _abs_clean(rec, "scan_root")
        _in_scan_root(rec, "source", scan_root, qroot)
        _in_quarantine(rec, "destination", qroot)
    else:
        move = _restored_move(rec, ops, _token(rec, "move_id"))
        if move is None:
            raise _Bad(f"move_id {rec['move_id']} names no valid move")
        scan_root = _abs_clean(rec, "scan_root") if "scan_root" in rec else move["scan_root"]
        _in_quarantine(rec, "source", qroot)
        _in_scan_root(rec, "destination", scan_root, qroot)
        rec = {**rec, "scan_root": scan_root}
    return {**rec}


def _restored_move(rec: dict, ops: dict[str, dict], move_id: Any) -> dict | None:
    move = ops.get(move_id) if isinstance(move_id, str) else None
    return move if move is not None and move["op"] == "move" else None


class Fold:
    """The journal folded into its ops: THE one reading of a journal, shared by recovery, restore
    and the review page.

    ``ops``: {id: merged op} in start order; a merged op is its started record with the latest
    ``state`` and ``destination`` and its ``line``. ``invalid``: the lines that failed
    validation (never acted on). A quarantine keeps its fold current with ``add`` as it appends
    (it holds the lock, so nobody else writes the journal), instead of reading it again.
    ``quarantine_root`` None skips the checks that need it; ``strict`` False checks only the
    shape of each record (the review page shows journals it will never act on).
    """

    def __init__(self, quarantine_root: Path | None, strict: bool = True):
        self.qroot = None if quarantine_root is None else os.path.abspath(quarantine_root)
        self.strict = strict
        self.ops: dict[str, dict] = {}
        self.invalid: list[Invalid] = []
        self.lines = 0

    def add(self, n: int, rec: Any) -> None:
        """Fold in line ``n`` (a parsed value, or the ValueError of a line that is not JSON)."""
        self.lines = max(self.lines, n)
        try:
            if isinstance(rec, UnreadableLine):
                raise _Bad(str(rec))
            if isinstance(rec, ValueError):
                raise _Bad(f"not JSON ({rec})")
            op = _validate(rec, self.ops, self.qroot, self.strict)
        except _Bad as e:
            fields = rec if isinstance(rec, dict) else {}
            paths = [v if isinstance(v, str) else None for v in (fields.get("source"), fields.get("destination"))]
            bad = Invalid(n, str(e), *paths)
            if self.strict:
                log.warning("%s", bad.message)
            self.invalid.append(bad)
            return
        if op is None:
            return
        if rec["state"] == "started":
            self.ops[rec["id"]] = {**op, "line": n}
        else:
            op["state"] = rec["state"]
            if isinstance(rec.get("destination"), str):
                op["destination"] = rec["destination"]

    def append(self, rec: dict) -> None:
        """Fold in a record just appended to the journal."""
        self.add(self.lines + 1, rec)

    def unfinished(self) -> list[dict]:
        return [op for op in self.ops.values() if op["state"] in UNFINISHED]

    def moves(self) -> list[tuple[dict, str | None]]:
        """Every move in start order with the state of its latest restore (None: never restored)."""
        last_restore: dict[str, str] = {}
        for op in self.ops.values():
            if op["op"] == "restore":
                done = last_restore.get(op["move_id"]) == "done"
                last_restore[op["move_id"]] = "done" if done else op["state"]  # a done restore stays done
        return [(op, last_restore.get(op["id"])) for op in self.ops.values() if op["op"] == "move"]


def fold(quarantine_root: Path | None, records: Iterable[tuple[int, Any]] | None = None, strict: bool = True) -> Fold:
    """Read (or take ``records``: (line, value) pairs) and fold a journal; see :class:`Fold`."""
    journal = Fold(quarantine_root, strict)
    if records is None:
        records = _lines(Path(journal.qroot)) if journal.qroot is not None else []
    for n, rec in records:
        journal.add(n, rec)
    return journal


def load_ops(quarantine_root: Path | None, records: list[tuple[int, Any]] | None = None) -> tuple[dict[str, dict], list[Invalid]]:
    """Validated journal: ({id: merged op} in start order, the invalid lines); see :class:`Fold`."""
    journal = fold(quarantine_root, records)
    return journal.ops, journal.invalid


def unfinished(records: list[dict], quarantine_root: Path | None = None) -> list[dict]:
    """Merged view of every valid op whose last state is unfinished (crashed or in flight)."""
    return fold(quarantine_root, list(enumerate(records, 1))).unfinished()


# ----------------------------------------------------------------------------- writing


class JournalWriter:
    """Appends records: one write per record, fsynced; a torn last line is closed first."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None
        self._torn = False

    def open(self) -> None:
        # O_NOFOLLOW: no symlinked manifest; O_NONBLOCK: a FIFO there fails instead of hanging.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o644)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(f"manifest {self.path} is not a regular file")
            if st.st_size:  # a crash mid-append leaves no trailing newline
                rfd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    self._torn = os.pread(rfd, 1, st.st_size - 1) != b"\n"
                finally:
                    os.close(rfd)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def append(self, line: bytes, step: Any) -> None:
        assert self.fd is not None
        data = (b"\n" if self._torn else b"") + line
        step("journal")
        self._torn = True
        write_all(self.fd, data)  # O_APPEND: one write per record
        os.fsync(self.fd)
        self._torn = False

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
