"""Crash recovery: finish or undo every journaled op that was started and never finished.

Runs under the quarantine lock (so no live run's op is mistaken for a crashed one). A source is
removed only when it is proven to be the journaled file: the very inode the destination holds,
with the journaled size and mtime, or (a copy across filesystems, or any other doubt) the
journaled size, mtime and sha256. Otherwise both are kept (state ``kept_both``) and a warning
is logged. Each op is handled on its own: a failure or an odd state leaves it unfinished for
the next run and never stops the others.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from ..fileops import ROOT_MARKER, Abort, discard, is_scanned_root, lstat_or_none, resolved_inside, same_file, sha256_path
from .journal import UNFINISHED, capture_name, copy_tmp_name
from .transfer import capture, put_back

log = logging.getLogger("imgclean.quarantine.moves")

Finish = Callable[[str, str, str], None]  # (op kind, id, state) -> journal it


def _holds_journaled(path: Path, st: os.stat_result, op: dict) -> bool:
    """``path`` (a destination) is the complete journaled file: its inode or its content."""
    if not stat.S_ISREG(st.st_mode) or st.st_size != op["size"]:
        return False
    if "ino" in op and (st.st_dev, st.st_ino) == (op["dev"], op["ino"]):
        return True
    return sha256_path(path) == op["sha256"]


def _source_proven(path: Path, st: os.stat_result, dst: os.stat_result | None, op: dict) -> bool:
    """``path`` (the source) is the journaled file, unchanged, so removing it loses nothing."""
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (op["size"], op["mtime_ns"]):
        return False
    journaled_inode = "ino" not in op or (st.st_dev, st.st_ino) == (op["dev"], op["ino"])
    if dst is not None and same_file(st, dst) and journaled_inode:
        return True  # one inode, two names: dropping the source name keeps the data at dst
    return sha256_path(path) == op["sha256"]


def recover_op(op: dict) -> str | None:
    """Bring one unfinished op to a final state on disk; returns that state, or None to leave it
    unfinished (logged). Raises OSError/Abort on a failed step (the caller logs and moves on)."""
    jid = op["id"]
    src, dst = Path(op["source"]), Path(op["destination"])
    tmp, cap = copy_tmp_name(dst, jid), capture_name(src, jid)
    s, c, d = lstat_or_none(src), lstat_or_none(cap), lstat_or_none(dst)
    ours = d is not None and _holds_journaled(dst, d, op)
    if c is not None:  # died with the source taken away to its capture name
        if ours and _source_proven(cap, c, d, op):
            os.unlink(cap)
            state = "done"
        else:
            put_back(cap, src)
            if d is not None and same_file(c, d):  # our link to a file edited since: one name is enough
                state = "changed" if discard(dst) else None
            else:
                state = "kept_both" if ours else "rolled_back"
    elif s is not None:
        if not ours:  # our link (if any) is to a file that is not, or no longer, the journaled one
            linked = d is not None and same_file(s, d)
            state = ("changed" if discard(dst) else None) if linked else "rolled_back"
        elif _source_proven(src, s, d, op):
            if not capture(src, cap):
                state = "done"  # gone meanwhile; dst holds it
            elif _source_proven(cap, os.lstat(cap), lstat_or_none(dst), op):
                os.unlink(cap)
                state = "done"
            else:
                put_back(cap, src)
                state = "kept_both"
        elif same_file(s, d):  # the journaled inode, edited since: keep it in place only
            state = "changed" if discard(dst) else None
        else:
            state = "kept_both"
    elif ours:
        state = "done"
    elif os.path.lexists(tmp):  # the temp copy may be the only one left: keep it
        log.error("recovery: %s and %s are both gone; keeping %s", src, dst, tmp)
        return None
    else:
        log.warning("recovery: %s and %s are both gone", src, dst)
        state = "missing"
    if state is None or not discard(tmp):
        return None
    if state == "kept_both":
        log.warning("recovery: %s is not the file journaled for %s; keeping both", src, dst)
    return state


def recover(ops: dict[str, dict], quarantine_root: Path, finish: Finish) -> list[dict]:
    """Recover every unfinished op of a validated journal; returns what was done."""
    actions = []
    for op in ops.values():
        if op["state"] not in UNFINISHED:
            continue
        kind, jid = op["op"], op["id"]
        src, dst = Path(op["source"]), Path(op["destination"])
        here, there = (op["scan_root"], quarantine_root) if kind == "move" else (quarantine_root, op["scan_root"])
        if not (resolved_inside(src, here) and resolved_inside(dst, there)):
            log.error("recovery of %s %s: %s or %s now resolves outside its folder; not touched", kind, jid, src, dst)
            continue
        if not is_scanned_root(op["scan_root"]):
            log.error("recovery of %s %s: %s holds no %s, so no imgclean run moved files out of it; not touched",
                      kind, jid, op["scan_root"], ROOT_MARKER)
            continue
        try:
            state = recover_op(op)
        except (OSError, Abort) as e:
            log.error("recovery of %s %s -> %s failed (%s); the next run retries", kind, src, dst, e)
            continue
        if state is None:
            continue
        finish(kind, jid, state)
        log.warning("recovered interrupted %s %s -> %s: %s", kind, src, dst, state)
        actions.append({"op": kind, "id": jid, "source": src, "destination": dst, "state": state})
    return actions
