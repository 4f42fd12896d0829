"""Putting quarantined files back (``imgclean restore``), and accounting for every file there.

Works on a :class:`imgclean.quarantine.moves.Quarantine` (passed in, so this module does not import it):
opened (locked, recovered) for a real restore, unopened for a dry run, which writes nothing.
"""

from __future__ import annotations

import logging
import os
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..fileops import ROOT_MARKER, Abort, hash_unchanged, inside, is_scanned_root, resolved_inside
from .decision_ops import record_restore
from .folders import make_below, prune_empty, too_long, walk
from .journal import MANIFEST_NAME, PROBE_PREFIX, RESERVED, TMP_PREFIX, UNFINISHED, Fold, Invalid, fold
from .locking import check_below
from .transfer import transfer

log = logging.getLogger("imgclean.quarantine.moves")

PROBLEMS = frozenset({"exists", "error", "unaccounted", "invalid", "not_found"})
_HELD = ("done", "kept_both") + UNFINISHED  # move states that leave (or may leave) a file in the quarantine


@dataclass(frozen=True)
class RestoreResult:
    source: Path  # the original path the file goes back to (for unaccounted/not_found: the path itself)
    destination: Path  # where it lies in the quarantine
    status: str  # restored | discarded | exists | error | unaccounted | invalid | not_found
    message: str = ""

    @property
    def problem(self) -> bool:
        """True when this result should make the run fail (everything but restored/discarded)."""
        return self.status in PROBLEMS


def _key(path: str | os.PathLike) -> str:
    """A path with its folder resolved (the last component is not followed): for matching."""
    path = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _unaccounted(root: Path, held: set[str]) -> list[Path]:
    """Files (or links) in the quarantine that are neither our bookkeeping nor a held file."""
    out = []
    for dirpath, _, names in walk(root):  # no recursion: a quarantine may be 1,100 folders deep
        for name in sorted(names):
            if name.startswith((TMP_PREFIX, PROBE_PREFIX)) or (name in RESERVED and dirpath == os.fspath(root)):
                continue
            path = Path(dirpath, name)
            if _key(path) not in held:
                out.append(path)
    return out


def restore_all(q: Any, dry_run: bool, only: Iterable[str | os.PathLike] | None) -> list[RestoreResult]:
    journal = q.journal if q.journal is not None else fold(q.root)  # open: its live fold; dry run: read once
    ops, invalid = journal.ops, journal.invalid
    history = journal.moves()
    restored = {op["id"] for op, restore in history if restore == "done"}
    moves = [op for op, restore in history if restore != "done"]
    waiting = [m for m in reversed(moves) if m["state"] in ("done", "kept_both")]  # newest first
    held = {_key(m["destination"]) for m in moves if m["state"] in _HELD}
    loose = _unaccounted(q.root, held)

    def bad(inv: Invalid) -> RestoreResult:
        where = Path(inv.destination or q.root / MANIFEST_NAME)
        return RestoreResult(Path(inv.source or where), where, "invalid", inv.message)

    def stray(path: Path) -> RestoreResult:
        return RestoreResult(path, path, "unaccounted", "no journal record accounts for this file; left in the quarantine")

    if only is None:
        chosen, strays, bads = waiting, loose, invalid
    else:
        chosen, strays, bads, missing = [], [], [], []
        loose_keys = {_key(p): p for p in loose}
        for given in only:
            k = _key(given)
            hits = [m for m in waiting if k in (_key(m["destination"]), _key(m["source"]))]
            chosen += [m for m in hits if m not in chosen]
            if hits:
                continue
            if k in loose_keys:
                strays.append(loose_keys[k])
            elif (b := [i for i in invalid if k in {_key(p) for p in (i.source, i.destination) if p}]):
                bads += [i for i in b if i not in bads]
            elif any(k in (_key(m["destination"]), _key(m["source"])) for m in moves + [ops[i] for i in restored if i in ops]):
                log.info("%s: nothing left to restore (already restored or never moved)", given)
            else:
                missing.append(RestoreResult(Path(given), Path(given), "not_found", "no journal record names this file"))
        chosen.sort(key=waiting.index)
    results = [restore_one(q, m, dry_run) for m in chosen]
    results += [stray(p) for p in strays] + [bad(i) for i in bads]
    if only is not None:
        results += missing
    return results


def restore_one(q: Any, move: dict, dry_run: bool) -> RestoreResult:
    original, held = Path(move["source"]), Path(move["destination"])

    def result(status: str, message: str = "") -> RestoreResult:
        return RestoreResult(original, held, status, message)

    try:
        st = os.lstat(held)
    except FileNotFoundError:
        return result("discarded", f"{held} was deleted from the quarantine; nothing to restore")
    except OSError as e:
        return result("error", f"cannot stat {held}: {e.strerror or e}")
    if not stat.S_ISREG(st.st_mode):
        return result("error", f"{held} is not a regular file; left in quarantine")
    if not resolved_inside(held, q.root):
        return result("error", f"{held} now resolves outside the quarantine; left alone")
    if os.path.lexists(original):
        return result("exists", f"{original} exists again; {held} left in quarantine")
    scan_root = move["scan_root"]
    if not resolved_inside(original, scan_root):
        return result("error", f"{original.parent} now resolves outside {scan_root}; left in quarantine")
    if not is_scanned_root(scan_root):
        return result("error", f"{scan_root} holds no {ROOT_MARKER}, so no imgclean run moved files out of it; "
                      f"left in quarantine (if you deleted that file, create it again to restore)")
    if dry_run:
        return result("restored", "dry run")
    if too_long(original, slack=16):
        return result("error", f"{original} is longer than the system allows (PATH_MAX); left in quarantine")
    try:
        # another run on a folder the file leaves or enters (one that started before ours) stops the restore
        check_below(q.root, held.parent)
        check_below(_locked_root(q, scan_root), original.parent)
        sha = hash_unchanged(held, st)
        make_below(scan_root, original.parent)  # iterative, no link followed below the scanned folder
        if not resolved_inside(original, scan_root):
            return result("error", f"{original.parent} now resolves outside {scan_root}; left in quarantine")
    except Abort as a:
        return result("error", a.message)
    except OSError as e:
        return result("error", f"cannot prepare restore of {held}: {e.strerror or e}")
    jid = uuid.uuid4().hex
    try:
        q.write_journal({
            "op": "restore", "id": jid, "move_id": move["id"], "state": "started",
            "source": os.fsdecode(held), "destination": os.fsdecode(original), "scan_root": scan_root,
            "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha, "dev": st.st_dev, "ino": st.st_ino,
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        })  # fmt: skip
    except OSError as e:
        return result("error", f"cannot journal the restore of {held}: {e}")
    q.inflight.add(jid)
    try:
        transfer(jid, held, original, st, sha, retarget=None)
    except Abort as a:
        if a.clean:
            q.finish_quiet("restore", jid, a.state, message=a.message)
        if a.state == "missing":
            return result("discarded", a.message)
        return result("exists" if a.state == "rolled_back" and os.path.lexists(original) else "error", a.message)
    q.finish_quiet("restore", jid, "done")
    prune_empty(q.root, held.parent)
    log.info("restored %s", original)
    # A restore is a person's decision that the file belongs: later scans leave it in place.
    accepted = record_restore(move, q.root, sha256=sha, size=st.st_size)
    if accepted.status == "error":
        log.warning("%s", accepted.message)
        return result("restored", accepted.message)
    return result("restored")


def _locked_root(q: Any, scan_root: str) -> Path:
    """The folder this restore locked that holds ``scan_root`` (restore_targets keeps the outermost
    only), from which the folders on the way are tested; ``scan_root`` itself if none."""
    real = os.path.realpath(scan_root)
    for root in getattr(q, "locked_roots", ()):
        if inside(real, os.fspath(root)):
            return Path(root)
    return Path(scan_root)


def restore_targets(journal: Fold) -> list[Path]:
    """The existing folders the journal's moves came from, outermost only (a folder inside
    another is covered by its lock, and a second lock on it would meet our own)."""
    roots = set()
    for rec, _ in journal.moves():
        value = rec.get("scan_root")
        if isinstance(value, str) and os.path.isabs(value) and os.path.isdir(value) and is_scanned_root(value):
            roots.add(os.path.realpath(value))
    return [Path(r) for r in sorted(roots) if not any(r != o and inside(r, o) for o in roots)]
