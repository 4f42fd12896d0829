"""Recording decisions: accept files, withdraw decisions, and the acceptance a restore records
(rejecting, which moves files, is in decision_reject.py: this module imports nothing that moves
files, so quarantine/restore.py can call record_restore). Library code: never prints.

Where a decision goes: ``root`` given, that folder's decisions file; else the nearest folder
above the file that already holds a decisions file or that a moving run marked as scanned
(``.imgclean.lock``). Every command here validates all its paths before it writes anything
(:class:`DecisionPathError`: a usage error), holds the run lock of the folder it writes to
(``ScanLock``, waiting up to ``lock_wait_s`` for another short command to finish), and writes
through :class:`imgclean.quarantine.decisions.DecisionWriter`. A dry run reads and hashes but
takes no lock and writes nothing.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fileops import Abort, hash_unchanged, is_quarantine, is_scanned_root
from .decision_records import ACCEPTED, DECISIONS_NAME, WITHDRAWN, Decision, check_relative
from .decisions import DecisionError, DecisionWriter, chain, new_decision, read_folder, relative_in
from .locking import LockHeld, ScanLock

LOCK_WAIT_S = 15.0  # how long a command waits for another accept/reject/withdraw/restore to finish
PROBLEMS = frozenset({"changed", "missing", "error"})


class DecisionPathError(DecisionError, ValueError):
    """A PATH that cannot be decided: missing, not a file, in a quarantine, outside the root."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one PATH. ``status``: accepted, rejected, withdrawn (or would_accept,
    would_reject, would_withdraw in a dry run), already (decided so before: nothing written),
    nothing (no decision to withdraw), changed, missing, error."""

    path: Path
    status: str
    message: str = ""
    decisions: tuple[Decision, ...] = ()
    destination: Path | None = None  # reject: where the file went (or would go)
    folder: Path | None = None  # the folder whose decisions file holds the decision

    @property
    def problem(self) -> bool:
        return self.status in PROBLEMS


@dataclass(frozen=True)
class Target:
    path: Path  # absolute, its folder resolved (the last component is never followed)
    folder: Path  # the folder whose decisions file it goes to (resolved)
    rel: str  # path relative to folder
    st: os.stat_result  # lstat when checked


# ----------------------------------------------------------------------------- paths


def absolute(path: str | os.PathLike) -> Path:
    """``path`` made absolute with its folder resolved; the last component is not followed."""
    full = os.path.abspath(os.fspath(path))
    return Path(os.path.realpath(os.path.dirname(full)), os.path.basename(full))


def quarantine_above(path: str | os.PathLike) -> Path | None:
    """The quarantine ``path`` lies in (as written or resolved), if any."""
    written = Path(os.path.abspath(os.fspath(path)))
    for folder in dict.fromkeys([*written.parents, *absolute(path).parents]):
        if is_quarantine(folder):
            return folder
    return None


def find_root(folder: Path) -> Path | None:
    """The nearest folder at or above ``folder`` holding a decisions file or a scan's marker."""
    for candidate in chain(folder):
        if os.path.lexists(candidate / DECISIONS_NAME) or is_scanned_root(candidate):
            return candidate
    return None


def resolve(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None) -> list[Target]:
    """Check every PATH before anything is written; raises DecisionPathError at the first bad one."""
    given_root = None
    if root is not None:
        given_root = Path(os.path.realpath(root))
        if not given_root.is_dir():
            raise DecisionPathError(f"--root {os.fsdecode(root)} is not a folder")
        if is_quarantine(given_root) or quarantine_above(given_root) is not None:
            raise DecisionPathError(f"--root {os.fsdecode(root)} is a quarantine or inside one; "
                                    "give the folder your scans run on")
    targets: list[Target] = []
    seen: set[Path] = set()
    for given in paths:
        name = os.fsdecode(given)
        full = absolute(given)
        if full in seen:
            continue  # the same file named twice: decided once
        seen.add(full)
        q = quarantine_above(given)
        if q is not None:
            raise DecisionPathError(f"{name} is inside the quarantine {os.fsdecode(q)}; give the file's original path "
                                    "(`imgclean restore` puts it back and records it as accepted)")
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            raise DecisionPathError(f"{name} does not exist") from None
        except OSError as e:
            raise DecisionPathError(f"{name}: {e.strerror or e}") from None
        if not stat.S_ISREG(st.st_mode):
            raise DecisionPathError(f"{name} is not a regular file (a link, a folder...); decisions are about files")
        folder = given_root or find_root(full.parent)
        if folder is None:
            raise DecisionPathError(f"no folder above {name} holds decisions or was scanned with --move-to; "
                                    "give --root FOLDER (the folder your scans run on)")
        rel = relative_in(folder, full)
        if rel is None:
            raise DecisionPathError(f"{name} is outside --root {os.fsdecode(folder)}")
        if any(part.startswith(".") for part in Path(rel).parts):
            raise DecisionPathError(f"{name} is hidden or in a hidden folder: scans never look at it")
        try:
            targets.append(Target(full, folder, check_relative(rel), st))
        except ValueError as e:  # e.g. a path too long to record
            raise DecisionPathError(f"{name}: {e}") from None
    return targets


def by_folder(targets: list[Target]) -> dict[Path, list[Target]]:
    groups: dict[Path, list[Target]] = {}
    for t in targets:
        groups.setdefault(t.folder, []).append(t)
    return groups


@contextlib.contextmanager
def run_lock(folder: Path, wait_s: float | None = None):
    """The folder's run lock (ScanLock), waiting up to ``wait_s`` (None: LOCK_WAIT_S) while
    another run holds it; then LockHeld, naming the holder."""
    deadline = time.monotonic() + (LOCK_WAIT_S if wait_s is None else wait_s)
    with contextlib.ExitStack() as stack:
        while True:
            try:
                stack.enter_context(ScanLock(folder))
                break
            except LockHeld:  # only entering is retried: the body's own errors pass through
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.1)
        yield


def _content(t: Target) -> tuple[int, str] | Outcome:
    """(size, sha256) of the target, checked against its lstat; an Outcome when it changed."""
    try:
        return t.st.st_size, hash_unchanged(t.path, t.st)
    except Abort as a:
        return Outcome(t.path, a.state, a.message)
    except FileNotFoundError:
        return Outcome(t.path, "missing", f"{t.path} no longer exists")
    except OSError as e:
        return Outcome(t.path, "error", f"cannot read {t.path}: {e.strerror or e}")


# ----------------------------------------------------------------------------- accept


def accept(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None, *, source: str = "accept",
           dry_run: bool = False, lock_wait_s: float | None = None) -> list[Outcome]:
    """Record that a person accepted each file (its current content); one Outcome per PATH."""
    outcomes: dict[Path, Outcome] = {}
    targets = resolve(paths, root)
    for folder, group in by_folder(targets).items():
        if dry_run:
            log = read_folder(folder).log
            for t in group:
                outcomes[t.path] = _accept_one(t, log.current, None, source)
            continue
        with run_lock(folder, lock_wait_s), DecisionWriter(folder) as writer:
            for t in group:
                outcomes[t.path] = _accept_one(t, writer.log.current, writer, source)
    return [outcomes[t.path] for t in targets]


def _accept_one(t: Target, current: Mapping, writer: DecisionWriter | None, source: str) -> Outcome:
    content = _content(t)
    if isinstance(content, Outcome):
        return content
    now = current.get(content)
    if now is not None and now.kind == ACCEPTED and now.path == t.rel:
        return Outcome(t.path, "already", f"accepted by {now.user} on {now.time[:10]}", (now,), folder=t.folder)
    decision = new_decision(ACCEPTED, t.folder, t.rel, content[0], content[1], source)
    if writer is None:
        return Outcome(t.path, "would_accept", "dry run", (decision,), folder=t.folder)
    try:
        return Outcome(t.path, "accepted", "", (writer.append(decision),), folder=t.folder)
    except DecisionError as e:  # e.g. the disk is full: this file is not recorded, the others are said
        return Outcome(t.path, "error", str(e), folder=t.folder)


# ----------------------------------------------------------------------------- withdraw


def withdraw(paths: Iterable[str | os.PathLike], *, dry_run: bool = False,
             lock_wait_s: float | None = None) -> list[Outcome]:
    """Withdraw every decision in force about each PATH: those recorded for its path, and those
    about its current content when it exists. The file itself is not touched."""
    paths = list(paths)
    for given in paths:
        q = quarantine_above(given)
        if q is not None:
            raise DecisionPathError(f"{os.fsdecode(given)} is inside the quarantine {os.fsdecode(q)}; give the "
                                    "file's original path (`imgclean decisions` lists them)")
    return [_withdraw_one(absolute(given), dry_run, lock_wait_s) for given in paths]


def _withdraw_one(full: Path, dry_run: bool, lock_wait_s: float) -> Outcome:
    content = None
    try:
        st = os.lstat(full)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        got = _content(Target(full, full.parent, full.name, st))
        if isinstance(got, Outcome):
            return got
        content = got
    found = {f: read_folder(f).log.matching(relative_in(f, full), content) for f in chain(full.parent)}
    holders = [f for f, matches in found.items() if matches]
    if not holders:
        return Outcome(full, "nothing", "no decision in force names this file or its content")
    if dry_run:
        planned = tuple(d for f in holders for d in found[f])
        return Outcome(full, "would_withdraw", "dry run", planned, folder=holders[0])
    done: list[Decision] = []
    with run_lock(holders[-1], lock_wait_s):  # the outermost: its lock covers every folder below
        for folder in holders:
            with DecisionWriter(folder) as writer:
                for d in writer.log.matching(relative_in(folder, full), content):
                    done.append(writer.append(new_decision(WITHDRAWN, folder, d.path, d.size, d.sha256, "withdraw",
                                                           withdraws=d.id)))
    status = "withdrawn" if done else "nothing"
    return Outcome(full, status, "" if done else "withdrawn meanwhile by another run", tuple(done), folder=holders[0])


# ----------------------------------------------------------------------------- restore


def record_restore(move: Mapping[str, Any], quarantine_root: str | os.PathLike, sha256: str | None = None,
                   size: int | None = None) -> Outcome:
    """Record that a person accepted a file ``restore`` just put back. ``move`` is the journal's
    (validated) move op: source, scan_root, sha256, size, id; ``sha256``/``size``: what the
    restore actually put back, when known (a file edited in the quarantine differs from the
    move's). The caller holds the scan root's run lock (restore does). Never raises: a failure
    is an Outcome with status error, for the restore to report beside "restored"."""
    source, scan_root = move.get("source"), move.get("scan_root")
    path = Path(os.fsdecode(source)) if isinstance(source, str) else Path("?")
    try:
        if not (isinstance(scan_root, str) and isinstance(source, str) and os.path.isabs(scan_root)):
            raise ValueError("the move record names no absolute source and scan_root")
        folder = Path(os.path.realpath(scan_root))
        rel = check_relative(os.path.relpath(source, scan_root))
        sha = sha256 if sha256 is not None else move.get("sha256")
        size = size if size is not None else move.get("size")
        jid = move.get("id")
        if not isinstance(jid, str):
            raise ValueError("the move record has no id")
        decision = new_decision(ACCEPTED, folder, rel, size, sha, "restore", journal=(os.path.abspath(quarantine_root), jid))
        with DecisionWriter(folder) as writer:
            now = writer.log.current.get(decision.content)
            if now is not None and now.kind == ACCEPTED and now.path == rel:
                return Outcome(path, "already", f"accepted by {now.user} on {now.time[:10]}", (now,), folder=folder)
            return Outcome(path, "accepted", "", (writer.append(decision),), folder=folder)
    except (DecisionError, ValueError, OSError) as e:
        return Outcome(path, "error", f"restored, but its acceptance was not recorded: {e}")
