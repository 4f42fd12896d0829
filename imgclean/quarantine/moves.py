"""The only code in imgclean that changes user files: journaled, no-overwrite moves and restore.

Guarantees (see docs/reliability.md):

* Nothing is deleted or overwritten, and a file that took the source's name at any instant is
  never removed (see :mod:`imgclean.quarantine.transfer`: link or verified copy, then the source is taken
  away atomically and removed only if it is still the scored file).
* One process per quarantine folder: ``open()`` flocks ``.imgclean.lock`` in it, so recovery
  never mistakes another live run's move for a crashed one. Before each move the lock files of
  the folders the file leaves and enters are tested (:func:`imgclean.quarantine.locking.check_below`).
* Folders are made one descriptor at a time (:mod:`imgclean.quarantine.folders`): any depth, and
  no link inside the quarantine is followed.
* Every move is journaled first (:mod:`imgclean.quarantine.journal`): a ``started`` record (fsynced) before
  the file is touched and a final record after. A crash (kill -9) leaves a ``started`` record
  without a final one; :mod:`imgclean.quarantine.recovery` finishes or undoes it at the next ``open()``.
* Paths are stored with ``os.fsdecode`` and ``json.dumps(ensure_ascii=True)``: undecodable bytes
  survive as escaped surrogates and newlines as ``\\n``, so each record is exactly one line.
* Journal records are validated before anything acts on them; a bad one is reported, never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import fileops
from ..fileops import Abort as _Abort
from ..fileops import ROOT_MARKER, hash_unchanged, log, mark_scanned_root, numbered, resolved_inside, step
from .journal import (
    MANIFEST_NAME,
    RESERVED,
    TMP_PREFIX,
    Fold,
    Invalid,
    JournalWriter,
    unfinished,  # noqa: F401
    fold,
    is_quarantine,
    read_manifest,
)
from .folders import make_below, make_path, too_long, write_problem
from .locking import LockError, LockHeld, ScanLock, check_below, replaced
from .recovery import recover as _recover_ops
from .restore import RestoreResult, restore_all, restore_targets
from .transfer import transfer
from ..errors import ImgcleanError

__all__ = [
    "MANIFEST_NAME", "TMP_PREFIX", "Invalid", "MoveRequest", "MoveResult", "Quarantine", "QuarantineError",
    "RestoreResult", "is_quarantine", "read_manifest", "restore",
]  # fmt: skip
# unfinished is re-exported for tests and benchmarks/fault_campaign.py


class QuarantineError(ImgcleanError):
    """The quarantine folder cannot be used (not writable, manifest unusable...)."""


@dataclass(frozen=True)
class MoveRequest:
    source: Path  # absolute path of the file inside the scanned root
    scan_root: Path  # absolute scanned root; destination keeps source's path relative to it
    reason: str  # "ood", "unreadable", "too_large", ...
    size: int  # st_size seen when the file was scored
    mtime_ns: int  # st_mtime_ns seen when the file was scored
    details: dict = field(default_factory=dict)  # JSON-able extras written into the journal
    dev: int | None = None  # st_dev and st_ino seen when scored (None: not known, not checked;
    ino: int | None = None  # dev None with an ino: the inode alone, for a folder mounted elsewhere)


@dataclass(frozen=True)
class MoveResult:
    request: MoveRequest
    status: str  # "moved" | "changed" | "missing" | "error"
    destination: Path | None
    message: str = ""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and Paths show up in details; keep the journal writable regardless.
    if isinstance(obj, os.PathLike):
        return os.fsdecode(obj)
    for attr in ("item", "tolist"):
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    return str(obj)


_STATUS = {"rolled_back": "error"}  # journal state -> MoveResult status where they differ


class Quarantine:
    """A quarantine folder: journaled, no-overwrite moves into it, and crash recovery.

    ``open()`` takes an exclusive lock on the folder (``.imgclean.lock``), so two runs never share a
    quarantine; a second one gets :class:`imgclean.quarantine.locking.LockHeld`.
    """

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))  # journaled paths must not depend on the cwd
        self.manifest_path = self.root / MANIFEST_NAME
        self._writer = JournalWriter(self.manifest_path)
        self._lock: ScanLock | None = None
        self.inflight: set[str] = set()
        self.recovered: list[dict] = []  # what open() had to finish or undo, for the run report
        self.journal: Fold | None = None  # the journal folded once at open(), kept current as it grows
        self.locked_roots: list[Path] = []  # scanned folders a restore locked (restore.restore_one)

    @property
    def _fd(self) -> int | None:
        return self._writer.fd

    @_fd.setter
    def _fd(self, value: int | None) -> None:  # tests simulating kill -9 drop the fd by hand
        self._writer.fd = value

    # --- lifecycle

    def __enter__(self) -> "Quarantine":
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lock = self._lock
        intact = lock is None or exc_type is not None or lock.intact()
        self.close()
        if not intact:
            raise replaced(self.root)

    def open(self) -> "Quarantine":
        if self._fd is not None:
            return self
        try:
            step("mkdir")
            make_path(self.root)
        except OSError as e:
            raise QuarantineError(f"cannot create quarantine folder {self.root}: {e.strerror or e}") from e
        self._check_writable()
        lock = ScanLock(self.root, kind="quarantine")
        try:
            lock.__enter__()
        except LockHeld:
            raise  # the caller reports contention as such (its own exit code), never wrapped
        except LockError as e:
            raise QuarantineError(str(e)) from e
        try:
            try:
                self._writer.open()
            except OSError as e:
                raise QuarantineError(f"cannot open manifest {self.manifest_path}: {e.strerror or e}") from e
            self._lock = lock
            try:
                self.recovered = self.recover()
            except OSError as e:
                raise QuarantineError(f"cannot recover interrupted moves in {self.root}: {e}") from e
        except BaseException:
            self._writer.close()
            self._lock = None
            lock.release()
            raise
        return self

    def close(self) -> None:
        """Finish or undo a move interrupted in this process (e.g. KeyboardInterrupt), fsync, unlock."""
        if self._fd is None:
            return
        try:
            try:
                if self.inflight:
                    self.recover(refold=False)
                os.fsync(self._fd)
            except OSError as e:
                # e.g. ENOSPC: the files are where the disk says; the next open() journals them.
                log.error("could not finish the journal in %s (%s); the next run will recover it", self.root, e)
        finally:
            self._writer.close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _check_writable(self) -> None:
        problem = write_problem(self.root)
        if problem:
            raise QuarantineError(f"quarantine folder {self.root} is not writable: {problem}")

    def write_journal(self, record: dict) -> None:
        if self._fd is None:
            raise QuarantineError("quarantine is not open; call open() or use it as a context manager")
        line = json.dumps(record, ensure_ascii=True, default=_json_default) + "\n"
        self._writer.append(line.encode("ascii"), step)
        if self.journal is not None:
            self.journal.append(json.loads(line))  # as a reader will see it (Paths as strings)

    def _finish(self, op: str, jid: str, state: str, **extra: Any) -> None:
        self.write_journal({"op": op, "id": jid, "state": state, **extra, "time": _now()})
        self.inflight.discard(jid)

    def finish_quiet(self, op: str, jid: str, state: str, **extra: Any) -> None:
        # The disk is already in its final state; if the record cannot be written, the op stays
        # unfinished and recover() (at close or next open) journals it from what it finds.
        try:
            self._finish(op, jid, state, **extra)
        except OSError as e:
            log.error("could not journal %s %s as %s: %s", op, jid, state, e)

    # --- planning

    def plan_destination(self, req: MoveRequest) -> Path:
        """Where ``req.source`` would go (before any ' (n)' suffix for a taken name). No I/O.

        A first component that names the quarantine's own files (the manifest, the lock) gets
        a leading '_' so it cannot collide with them; the journal records the name used.
        """
        # abspath (lexical, no I/O): the journal must not depend on the current directory.
        rel = Path(os.path.abspath(req.source)).relative_to(os.path.abspath(req.scan_root))
        if not rel.parts or ".." in rel.parts:
            raise ValueError(f"{req.source} is not a file inside {req.scan_root}")
        parts = list(rel.parts)
        if parts[0] in RESERVED:
            parts[0] = "_" + parts[0]
        return self.root.joinpath(*parts)

    # --- moving

    def move(self, req: MoveRequest) -> MoveResult:
        """Move one file into the quarantine; never raises for per-file problems. Raises
        :class:`LockHeld` when another run holds a folder on the way (the run must stop)."""
        src, scan_root = Path(os.path.abspath(req.source)), Path(os.path.abspath(req.scan_root))
        try:
            base = self.plan_destination(req)
        except ValueError as e:
            return MoveResult(req, "error", None, str(e))

        st = self._check_source(req, src, scan_root, base)
        if isinstance(st, MoveResult):
            return st
        try:
            mark_scanned_root(scan_root)  # recovery and restore act only on folders that have it
            sha = hash_unchanged(src, st)
            step("mkdir")
            make_below(self.root, base.parent)  # iterative, no link followed inside the quarantine
            check_below(self.root, base.parent)
            if not resolved_inside(base, self.root):
                return MoveResult(req, "error", None, f"{base.parent} resolves outside the quarantine")
        except _Abort as a:
            return MoveResult(req, a.state, None, a.message)
        except FileNotFoundError:
            return MoveResult(req, "missing", None, f"{src} no longer exists")
        except OSError as e:
            return MoveResult(req, "error", None, f"cannot prepare move of {src}: {e.strerror or e}")

        jid = uuid.uuid4().hex
        names = numbered(base)
        try:
            final = next(n for n in names if not os.path.lexists(n))  # advisory; link() decides
            self.write_journal({
                "op": "move", "id": jid, "state": "started",
                "source": os.fsdecode(src), "destination": os.fsdecode(final),
                "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha,
                "dev": st.st_dev, "ino": st.st_ino,
                "reason": req.reason, "details": req.details,
                "scan_root": os.fsdecode(scan_root), "time": _now(),
            })  # fmt: skip
        except (OSError, TypeError, ValueError) as e:  # TypeError/ValueError: details not JSON-able
            return MoveResult(req, "error", None, f"cannot journal the move of {src}: {e}")
        self.inflight.add(jid)

        def retarget(taken: Path) -> Path:
            nxt = next(n for n in names if not os.path.lexists(n))
            log.info("%s is taken; using %s", taken, nxt)
            self.write_journal({"op": "move", "id": jid, "state": "retarget", "destination": os.fsdecode(nxt)})
            return nxt

        try:
            final = transfer(jid, src, final, st, sha, retarget)
        except _Abort as a:
            if a.clean:
                self.finish_quiet("move", jid, a.state, message=a.message)
            return MoveResult(req, _STATUS.get(a.state, a.state), None, a.message)
        self.finish_quiet("move", jid, "done", destination=os.fsdecode(final))
        log.info("quarantined %s -> %s (%s)", src, final, req.reason)
        return MoveResult(req, "moved", final)

    def _check_source(self, req: MoveRequest, src: Path, scan_root: Path, base: Path) -> "os.stat_result | MoveResult":
        """The checks before anything is journaled (each refusal leaves the file alone): the
        source's stat, or the MoveResult that refuses it. Raises LockHeld like `move`."""
        if src.parent == scan_root and src.name == ROOT_MARKER:  # never yielded by a walk: it is hidden
            return MoveResult(req, "error", None, f"{src} is imgclean's lock file; it is never moved")
        # Checks before anything is journaled: these leave the file alone. First, another run on a
        # folder between the scanned root and the file (one that started earlier: later ones are
        # refused at their start), or our lock replaced, raises LockHeld: the run stops.
        try:
            check_below(scan_root, src.parent)
        except OSError as e:
            return MoveResult(req, "error", None, f"cannot check the folders above {src}: {e.strerror or e}")
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return MoveResult(req, "missing", None, f"{src} no longer exists")
        except OSError as e:
            return MoveResult(req, "error", None, f"cannot stat {src}: {e.strerror or e}")
        if stat.S_ISLNK(st.st_mode):
            return MoveResult(req, "error", None, f"{src} is a symlink; symlinks are never moved")
        if not resolved_inside(src, scan_root):
            return MoveResult(req, "error", None, f"{src} resolves outside the scanned folder {scan_root}")
        if resolved_inside(src, self.root):
            return MoveResult(req, "error", None, f"{src} is inside the quarantine folder")
        if not stat.S_ISREG(st.st_mode):
            return MoveResult(req, "changed", None, f"{src} is not a regular file")
        scored_inode = req.ino is None or (st.st_ino == req.ino and req.dev in (None, st.st_dev))
        if (st.st_size, st.st_mtime_ns) != (req.size, req.mtime_ns) or not scored_inode:
            return MoveResult(req, "changed", None, f"{src} changed since it was scored; left in place")
        if too_long(base, slack=16):
            return MoveResult(req, "error", None, f"{src} would go to a path longer than the system allows "
                              f"(PATH_MAX) in {self.root}; left in place")
        return st

    # --- recovery and restore

    @property
    def invalid(self) -> list[Invalid]:
        """Journal records that failed validation (logged, never acted on)."""
        return self.journal.invalid if self.journal is not None else []

    def recover(self, refold: bool = True) -> list[dict]:
        """Finish or undo every op journaled as started but never finished; returns what it did.
        ``refold`` reads the journal again (open() does, once); False uses the live fold."""
        if refold or self.journal is None:
            self.journal = fold(self.root)
        actions = _recover_ops(self.journal.ops, self.root, lambda kind, jid, state: self._finish(kind, jid, state, recovered=True))
        self.inflight.clear()
        return actions

    def restore_all(self, dry_run: bool, only: Iterable[str | os.PathLike] | None = None) -> list[RestoreResult]:
        return restore_all(self, dry_run, only)


def restore(
    quarantine_root: Path, dry_run: bool = False, only: Iterable[str | os.PathLike] | None = None
) -> list[RestoreResult]:
    """Put quarantined files back, newest move first; never overwrites.

    ``only``: paths, each a file in the quarantine or the original path of a moved file (None:
    everything). Each result's ``source`` is the original path, ``destination`` the quarantined
    file; ``status`` is restored (or would be, in a dry run), discarded (deleted from the
    quarantine by the reviewer), exists (original path taken; the file stays quarantined), error,
    unaccounted (a file in the quarantine no record accounts for), invalid (a journal record that
    fails validation; never acted on) or not_found (a path in ``only`` no record names);
    ``RestoreResult.problem`` tells which ones should fail a run. Restored moves are journaled,
    so a second restore does nothing. ``dry_run`` writes nothing (no lock, no recovery, no
    journal). Raises QuarantineError without a manifest, and imgclean.quarantine.locking.LockHeld while
    another run holds the quarantine.
    """
    root = Path(quarantine_root)
    if not is_quarantine(root):
        raise QuarantineError(f"{root} has no {MANIFEST_NAME}; nothing to restore")
    only = None if only is None else list(only)
    if dry_run:
        return Quarantine(root).restore_all(dry_run=True, only=only)
    with contextlib.ExitStack() as stack:
        q = stack.enter_context(Quarantine(root))
        q.locked_roots = restore_targets(q.journal)
        for scan_root in q.locked_roots:  # no scan may move files there meanwhile
            stack.enter_context(ScanLock(scan_root))
        return q.restore_all(dry_run=False, only=only)

