"""A person's decisions as records: the lines of ``.imgclean-decisions.jsonl``, read with bounds,
validated one by one and folded into what is decided now.

One JSON object per line, appended, never rewritten:
  {"format": 1, "id", "kind": "accepted"|"rejected"|"withdrawn", "path", "root", "size", "sha256",
   "time", "uid", "user", "source": "restore"|"accept"|"reject"|"review"|"withdraw",
   "journal": {"quarantine", "id"} (optional: the quarantine move it concerns),
   "withdraws": id (a withdrawn record only: the decision it takes back)}
``path`` is relative to the folder that holds the file (``root`` is that folder as it was
reached when the record was written: shown, never used to find files). A decision is about the
picture's content (``size`` + ``sha256``) within that folder's tree; the path says where it was.

Every line is validated before anyone uses it; a line that fails is reported as
:class:`BadRecord` and never acted on, and never stops the others. A torn last line (a crash
mid-append) is dropped. Reading is bounded (:func:`read_decision_lines`): the file's size, each
line's length and nesting depth; NUL bytes and invalid UTF-8 are a bad record, not a traceback.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

DECISIONS_NAME = ".imgclean-decisions.jsonl"  # hidden: no walk ever scans it as a picture
FORMAT = 1
ACCEPTED, REJECTED, WITHDRAWN = "accepted", "rejected", "withdrawn"
KINDS = (ACCEPTED, REJECTED, WITHDRAWN)
SOURCES = ("restore", "accept", "reject", "review", "withdraw")
MAX_FILE_BYTES = 64 << 20  # ~190,000 decisions: years of nightly reviews
MAX_LINE_BYTES = 16 << 10  # a record with a 4 KiB path escaped is well under this
MAX_DEPTH = 3  # a record is an object holding at most one object ("journal")
MAX_PATH_BYTES = 4096
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SHA = re.compile(r"[0-9a-f]{64}")
_SIGNIFICANT = re.compile(rb'["\\\[\]{}]')  # what nesting depth depends on: quotes, escapes, brackets


class DecisionFileError(ValueError):
    """The decisions file as a whole cannot be read (too large); nothing in it is used."""


# ----------------------------------------------------------------------------- reading


def read_decision_lines(fd: int, name: str = DECISIONS_NAME) -> list[tuple[int, Any]]:
    """(line number, parsed value or a ValueError) for each non-empty line of the open file
    ``fd``; a torn last line that does not parse is dropped. THE one reader of decision files:
    every bound is applied here. Raises DecisionFileError for a file over MAX_FILE_BYTES."""
    chunks, total = [], 0
    while chunk := os.pread(fd, min(1 << 20, MAX_FILE_BYTES + 1 - total), total):
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_FILE_BYTES:
            raise DecisionFileError(f"{name} is larger than {MAX_FILE_BYTES >> 20} MiB; not read")
    lines = b"".join(chunks).split(b"\n")
    out: list[tuple[int, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append((i + 1, _parse(line)))
        except (ValueError, RecursionError) as e:
            if i != len(lines) - 1:  # the last line may be torn by a crash; others are damage
                out.append((i + 1, e if isinstance(e, ValueError) else ValueError("nested too deeply")))
    return out


def _parse(line: bytes) -> Any:
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
    if line.count(b"[") + line.count(b"{") > MAX_DEPTH and _depth(line) > MAX_DEPTH:  # else it cannot be
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return json.loads(line.decode("utf-8"))  # strict UTF-8; NUL or a raw control character fails


def _depth(line: bytes) -> int:
    """How deep brackets outside string literals nest: one pass over the quotes, backslashes and
    brackets (linear whatever the line; a regular expression for strings is quadratic on some)."""
    depth = deepest = 0
    in_string, escaped = False, -1  # escaped: the index of the character a backslash escapes
    for m in _SIGNIFICANT.finditer(line):
        i, c = m.start(), line[m.start()]
        if in_string:
            if i == escaped:
                continue
            if c == 0x5C:  # backslash
                escaped = i + 1
            elif c == 0x22:  # quote
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif c in (0x5D, 0x7D):
            depth -= 1
    return deepest


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Decision:
    """One valid record. ``path`` is relative to the folder whose decisions file holds it."""

    id: str
    kind: str
    path: str
    root: str
    size: int
    sha256: str
    time: str
    uid: int
    user: str
    source: str
    journal_quarantine: str | None = None
    journal_id: str | None = None
    withdraws: str | None = None
    line: int = field(default=0, compare=False)

    @property
    def content(self) -> tuple[int, str]:
        return self.size, self.sha256

    @property
    def when(self) -> datetime:
        return datetime.fromisoformat(self.time)

    def to_dict(self) -> dict:
        rec: dict[str, Any] = {
            "format": FORMAT, "id": self.id, "kind": self.kind, "path": self.path, "root": self.root,
            "size": self.size, "sha256": self.sha256, "time": self.time, "uid": self.uid,
            "user": self.user, "source": self.source,
        }  # fmt: skip
        if self.journal_id is not None:
            rec["journal"] = {"quarantine": self.journal_quarantine, "id": self.journal_id}
        if self.withdraws is not None:
            rec["withdraws"] = self.withdraws
        return rec

    def to_line(self) -> bytes:
        """The record as one line: ASCII only (undecodable name bytes as \\udcXX escapes)."""
        return (json.dumps(self.to_dict(), ensure_ascii=True) + "\n").encode("ascii")


@dataclass(frozen=True)
class BadRecord:
    """A line that failed validation; never acted on."""

    line: int
    reason: str

    def message(self, where: str) -> str:
        return f"{where} line {self.line}: {self.reason}; record ignored"


class _Bad(ValueError):
    pass


def _get(rec: dict, key: str, kind: type) -> Any:
    value = rec.get(key)
    if type(value) is not kind:
        raise _Bad(f"{key} is missing or not a {kind.__name__}")
    return value


def _count(rec: dict, key: str) -> int:
    value = _get(rec, key, int)
    if value < 0:
        raise _Bad(f"{key} is negative")
    return value


def _text(rec: dict, key: str, limit: int = 256) -> str:
    value = _get(rec, key, str)
    if not value or len(value) > limit or "\x00" in value:
        raise _Bad(f"{key} is empty, longer than {limit} characters or holds a NUL")
    return value


def _token(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise _Bad(f"{key} {value!r:.80} is not a plain token")
    return value


def _abs_path(value: Any, key: str) -> str:
    if not isinstance(value, str) or "\x00" in value or not os.path.isabs(value) or os.path.normpath(value) != value:
        raise _Bad(f"{key} {value!r:.200} is not a normalised absolute path")
    return value


def check_relative(path: Any) -> str:
    """``path`` if it is a clean relative path inside its folder, else raises ValueError."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise _Bad("path is missing, empty or holds a NUL")
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise _Bad(f"path is longer than {MAX_PATH_BYTES} bytes")
    parts = path.split(os.sep)
    if os.path.isabs(path) or any(p in ("", ".", "..") for p in parts):
        raise _Bad(f"path {path!r:.200} is not a plain relative path inside its folder")
    return path


def _time(rec: dict) -> str:
    value = _text(rec, "time", 64)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise _Bad(f"time {value!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise _Bad(f"time {value!r} has no time zone")
    return value


def validate(rec: Any, line: int = 0) -> Decision:
    """The record as a Decision, or raises ValueError saying what is wrong with it."""
    if not isinstance(rec, dict):
        raise _Bad("not a JSON object")
    if rec.get("format") != FORMAT:
        raise _Bad(f"format {rec.get('format')!r:.40} is not {FORMAT} (a newer imgclean's record?)")
    kind, source = rec.get("kind"), rec.get("source")
    if kind not in KINDS:
        raise _Bad(f"kind {kind!r:.40} is not one of {', '.join(KINDS)}")
    if source not in SOURCES:
        raise _Bad(f"source {source!r:.40} is not one of {', '.join(SOURCES)}")
    sha = rec.get("sha256")
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise _Bad("sha256 is not a hex digest")
    journal = rec.get("journal")
    quarantine = jid = None
    if journal is not None:
        if not isinstance(journal, dict):
            raise _Bad("journal is not an object")
        quarantine = _abs_path(journal.get("quarantine"), "journal quarantine")
        jid = _token(journal.get("id"), "journal id")
    withdraws = rec.get("withdraws")
    if (kind == WITHDRAWN) != (withdraws is not None):
        raise _Bad("withdraws comes with kind withdrawn, and only with it")
    return Decision(
        id=_token(rec.get("id"), "id"), kind=kind, path=check_relative(rec.get("path")),
        root=_abs_path(rec.get("root"), "root"), size=_count(rec, "size"), sha256=sha, time=_time(rec),
        uid=_count(rec, "uid"), user=_text(rec, "user"), source=source, journal_quarantine=quarantine,
        journal_id=jid, withdraws=None if withdraws is None else _token(withdraws, "withdraws"), line=line,
    )  # fmt: skip


# ----------------------------------------------------------------------------- the fold


class DecisionLog:
    """A decisions file folded: every valid record in order (``records``), the invalid lines
    (``invalid``), the decisions not withdrawn (``active``: id -> Decision) and, per content,
    the latest of those (``current``: (size, sha256) -> Decision): what the folder's people
    decided about that picture now."""

    def __init__(self) -> None:
        self.records: list[Decision] = []
        self.invalid: list[BadRecord] = []
        self.active: dict[str, Decision] = {}
        self.current: dict[tuple[int, str], Decision] = {}
        self._ids: set[str] = set()
        self.lines = 0

    def add(self, n: int, value: Any) -> Decision | None:
        """Fold in line ``n`` (a parsed value, or the ValueError of a line that did not parse)."""
        self.lines = max(self.lines, n)
        try:
            decision = self.check(value, n)
        except _Bad as e:
            self.invalid.append(BadRecord(n, str(e)))
            return None
        self._ids.add(decision.id)
        self.records.append(decision)
        if decision.kind == WITHDRAWN:
            taken = self.active.pop(decision.withdraws)  # checked above
            if self.current.get(taken.content) is taken:
                self._recompute(taken.content)
        else:
            self.active[decision.id] = decision
            self.current[decision.content] = decision
        return decision

    def check(self, value: Any, n: int = 0) -> Decision:
        """``value`` as the Decision line ``n`` would fold in, or ValueError; changes nothing."""
        if isinstance(value, ValueError):
            raise _Bad(f"not a JSON record ({value})")
        decision = validate(value, n)
        self._check_against_earlier(decision)
        return decision

    def _check_against_earlier(self, decision: Decision) -> None:
        if decision.id in self._ids:
            raise _Bad(f"id {decision.id} is used twice")
        if decision.kind == WITHDRAWN:
            target = self.active.get(decision.withdraws or "")
            if target is None:
                raise _Bad(f"withdraws {decision.withdraws}, which is no decision in force in this file")
            if (target.path, target.size, target.sha256) != (decision.path, decision.size, decision.sha256):
                raise _Bad(f"withdraws {decision.withdraws} but names another file or content")

    def _recompute(self, content: tuple[int, str]) -> None:
        latest = [d for d in self.active.values() if d.content == content]
        if latest:
            self.current[content] = latest[-1]
        else:
            self.current.pop(content, None)

    def matching(self, path: str | None = None, content: tuple[int, str] | None = None) -> list[Decision]:
        """Decisions in force recorded for ``path`` or about ``content``, oldest first."""
        return [d for d in self.active.values() if d.path == path or d.content == content]

    def accepted_sizes(self) -> set[int]:
        """Sizes of the contents whose current decision is an acceptance (no hashing needed for others)."""
        return {size for (size, _), d in self.current.items() if d.kind == ACCEPTED}


def fold_lines(lines: list[tuple[int, Any]]) -> DecisionLog:
    log = DecisionLog()
    for n, value in lines:
        log.add(n, value)
    return log
