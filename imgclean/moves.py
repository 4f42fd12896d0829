"""The only code in imgclean that changes user files: journaled, no-overwrite moves and restore.

Guarantees (see RELIABILITY.md):

* Nothing is deleted or overwritten. On one filesystem a move is ``link(src, dst)`` then
  ``unlink(src)``; ``link`` fails with EEXIST on a taken name. Across filesystems (or when the
  source cannot be hard-linked) the file is copied to ``.imgclean-tmp-<id>`` beside the
  destination, fsynced, verified (size + sha256), then linked to its final name (again
  no-overwrite) and only then is the source removed. So a final name only ever appears for a
  complete, verified file.
* One process per quarantine folder: ``open()`` flocks ``.imgclean.lock`` in it, so recovery
  never mistakes another live run's move for a crashed one.
* Every move is journaled first. ``imgclean-manifest.jsonl`` in the quarantine root gets a
  ``started`` record (fsynced) before the file is touched and a final record (``done``,
  ``rolled_back``, ``changed`` or ``missing``) after. A crash (kill -9) leaves a ``started`` record
  without a final one; :meth:`Quarantine.recover` finishes or undoes those moves.
* Paths are stored with ``os.fsdecode`` and ``json.dumps(ensure_ascii=True)``: undecodable bytes
  survive as escaped surrogates and newlines as ``\\n``, so each record is exactly one line.

Journal record kinds (one JSON object per line, in order):
  {"op": "move"|"restore", "id", "state": "started", "source", "destination", "size", "mtime_ns",
   "sha256", "time", ...}       ("move" also has reason, details, scan_root; "restore" has move_id)
  {"op", "id", "state": "retarget", "destination"}   name was taken, trying the next free one
  {"op", "id", "state": "done"|"rolled_back"|"changed"|"missing", "time", ...}
A "restore" record moves a file back: its source is the quarantined file, its destination the
original path; a move whose restore reached "done" is not restored again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from .locking import LockError, ScanLock

log = logging.getLogger(__name__)

MANIFEST_NAME = "imgclean-manifest.jsonl"
TMP_PREFIX = ".imgclean-tmp-"
_CHUNK = 1 << 20
_MAX_SUFFIX = 10_000
_UNFINISHED = ("started", "retarget")
_COPY_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}

# Tests set this to a callable taking the step name ("probe", "mkdir", "journal", "hash", "link",
# "copy", "fsync", "verify", "rename", "unlink_tmp", "fsync_dir", "unlink_source") and raise from
# it (an OSError to simulate a failure, or any other exception to simulate a crash mid-move).
_fault_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _fault_hook is not None:
        _fault_hook(name)


class QuarantineError(Exception):
    """The quarantine folder cannot be used (not writable, manifest unusable...)."""


@dataclass(frozen=True)
class MoveRequest:
    source: Path  # absolute path of the file inside the scanned root
    scan_root: Path  # absolute scanned root; destination keeps source's path relative to it
    reason: str  # "ood", "unreadable", "too_large", ...
    size: int  # st_size seen when the file was scored
    mtime_ns: int  # st_mtime_ns seen when the file was scored
    details: dict = field(default_factory=dict)  # JSON-able extras written into the journal


@dataclass(frozen=True)
class MoveResult:
    request: MoveRequest
    status: str  # "moved" | "changed" | "missing" | "error"
    destination: Path | None
    message: str = ""


@dataclass(frozen=True)
class RestoreResult:
    source: Path  # the original path the file goes back to
    destination: Path  # where it lies in the quarantine
    status: str  # "restored" (or would be, in a dry run) | "exists" | "missing" | "error"
    message: str = ""


class _Abort(Exception):
    """A transfer stopped; ``state`` is the journal state to record, ``clean`` whether the undo
    succeeded (if not, the record stays unfinished and recover() deals with it)."""

    def __init__(self, state: str, message: str, clean: bool = True):
        super().__init__(message)
        self.state, self.message, self.clean = state, message, clean


# ----------------------------------------------------------------------------- small helpers


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


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _unchanged(a: os.stat_result, b: os.stat_result) -> bool:
    return _same_file(a, b) and (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


def _open_regular(path: Path) -> int:
    # O_NONBLOCK: a FIFO swapped in after lstat must not hang the open; O_NOFOLLOW: no symlinks.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _Abort("changed", f"{path} is no longer a regular file")
    return fd


def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    while chunk := os.read(fd, _CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _sha256_path(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return _sha256_fd(fd)
    finally:
        os.close(fd)


def _hash_unchanged(path: Path, st: os.stat_result) -> str:
    """sha256 of ``path``, raising _Abort("changed") if it is not the file ``st`` describes."""
    _step("hash")
    fd = _open_regular(path)
    try:
        if not _unchanged(os.fstat(fd), st):
            raise _Abort("changed", f"{path} changed before it could be moved")
        digest = _sha256_fd(fd)
        if not _unchanged(os.fstat(fd), st):
            raise _Abort("changed", f"{path} changed while it was being hashed")
        return digest
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir_quiet(path: Path) -> None:
    try:
        _fsync_dir(path)
    except OSError as e:
        log.warning("could not fsync folder %s: %s", path, e)


def _discard(path: Path) -> bool:
    """Remove ``path`` if present; False if it is still there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.error("could not remove %s: %s", path, e)
        return False
    return True


def _numbered(base: Path) -> Iterator[Path]:
    """base, then 'name (1).ext', 'name (2).ext', ..."""
    yield base
    for n in range(1, _MAX_SUFFIX):
        yield base.with_name(f"{base.stem} ({n}){base.suffix}")
    raise OSError(errno.EEXIST, f"no free name for {base} after {_MAX_SUFFIX} tries")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ----------------------------------------------------------------------------- manifest


def is_quarantine(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds an imgclean manifest: it is a quarantine, whatever its path.

    Recognised by content rather than by comparing path strings, so a quarantine reached
    through a bind mount or a symlink is still one.
    """
    return os.path.lexists(os.path.join(os.fspath(folder), MANIFEST_NAME))


def read_manifest(quarantine_root: Path) -> list[dict]:
    """All journal records in order. A torn line (crash mid-write) is skipped."""
    path = Path(quarantine_root) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    records = []
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError:
            if i != len(lines) - 1:  # the last line may be torn by a crash; others are odd
                log.warning("%s line %d is not a journal record; ignored", path, i + 1)
            continue
        records.append(rec)
    return records


def _unfinished(records: list[dict]) -> list[dict]:
    """Merged view (started record + latest destination) of every op whose last state is unfinished."""
    ops: dict[str, dict] = {}
    for rec in records:
        rid = rec.get("id")
        if rec.get("state") == "started":
            ops[rid] = dict(rec)
        elif rid in ops:
            ops[rid]["state"] = rec.get("state")
            if "destination" in rec:
                ops[rid]["destination"] = rec["destination"]
    return [op for op in ops.values() if op["state"] in _UNFINISHED]


# ----------------------------------------------------------------------------- quarantine


class Quarantine:
    """A quarantine folder: journaled, no-overwrite moves into it, and crash recovery.

    ``open()`` takes an exclusive lock on the folder (``.imgclean.lock``), so two runs never share a
    quarantine; a second one gets :class:`imgclean.locking.LockHeld`.
    """

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))  # journaled paths must not depend on the cwd
        self.manifest_path = self.root / MANIFEST_NAME
        self._fd: int | None = None
        self._lock: ScanLock | None = None
        self._torn = False  # last write may have left a partial line: start the next on a new one
        self._inflight: set[str] = set()
        self.recovered: list[dict] = []  # what open() had to finish or undo, for the run report

    # --- lifecycle

    def __enter__(self) -> "Quarantine":
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> "Quarantine":
        if self._fd is not None:
            return self
        try:
            _step("mkdir")
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QuarantineError(f"cannot create quarantine folder {self.root}: {e.strerror or e}") from e
        self._check_writable()
        lock = ScanLock(self.root)
        try:
            lock.__enter__()
        except LockError as e:
            raise QuarantineError(str(e)) from e
        try:
            # O_NOFOLLOW: no symlinked manifest; O_NONBLOCK: a FIFO there fails instead of hanging.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                self._fd = os.open(self.manifest_path, flags, 0o644)
            except OSError as e:
                raise QuarantineError(f"cannot open manifest {self.manifest_path}: {e.strerror or e}") from e
            if not stat.S_ISREG(os.fstat(self._fd).st_mode):
                raise QuarantineError(f"manifest {self.manifest_path} is not a regular file")
            size = os.fstat(self._fd).st_size
            if size:  # a crash mid-append leaves no trailing newline
                with open(self.manifest_path, "rb") as f:
                    f.seek(size - 1)
                    self._torn = f.read(1) != b"\n"
            self._lock = lock
            try:
                self.recovered = self.recover()
            except OSError as e:
                raise QuarantineError(f"cannot recover interrupted moves in {self.root}: {e}") from e
        except BaseException:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
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
                if self._inflight:
                    self.recover()
                os.fsync(self._fd)
            except OSError as e:
                # e.g. ENOSPC: the files are where the disk says; the next open() journals them.
                log.error("could not finish the journal in %s (%s); the next run will recover it", self.root, e)
        finally:
            os.close(self._fd)
            self._fd = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _check_writable(self) -> None:
        # os.access alone is not enough: root passes it on chmod-555 folders, and it cannot see
        # every read-only mount; a real probe write settles it before anything moves. The probe
        # also links, since no-overwrite placement needs hard links (vfat/exFAT have none).
        problem = None
        if not self.root.is_dir():
            problem = "not a folder"
        elif not os.access(self.root, os.W_OK | os.X_OK):
            problem = "permission denied"
        else:
            try:
                _step("probe")
                fd, name = tempfile.mkstemp(prefix=".imgclean-probe-", dir=self.root)
                os.close(fd)
            except OSError as e:
                problem = e.strerror or str(e)
            else:
                try:
                    os.link(name, name + ".link")
                    os.unlink(name + ".link")
                except OSError as e:
                    problem = f"its filesystem cannot make hard links ({e.strerror or e})"
                os.unlink(name)
        if problem:
            raise QuarantineError(f"quarantine folder {self.root} is not writable: {problem}")

    def _journal(self, record: dict) -> None:
        if self._fd is None:
            raise QuarantineError("quarantine is not open; call open() or use it as a context manager")
        line = json.dumps(record, ensure_ascii=True, default=_json_default) + "\n"
        data = (b"\n" if self._torn else b"") + line.encode("ascii")
        _step("journal")
        self._torn = True
        _write_all(self._fd, data)  # O_APPEND: one write per record
        os.fsync(self._fd)
        self._torn = False

    def _finish(self, op: str, jid: str, state: str, **extra: Any) -> None:
        self._journal({"op": op, "id": jid, "state": state, **extra, "time": _now()})
        self._inflight.discard(jid)

    def _finish_quiet(self, op: str, jid: str, state: str, **extra: Any) -> None:
        # The disk is already in its final state; if the record cannot be written, the op stays
        # unfinished and recover() (at close or next open) journals it from what it finds.
        try:
            self._finish(op, jid, state, **extra)
        except OSError as e:
            log.error("could not journal %s %s as %s: %s", op, jid, state, e)

    # --- planning

    def plan_destination(self, req: MoveRequest) -> Path:
        """Where ``req.source`` would go (before any ' (n)' suffix for a taken name). No I/O."""
        # abspath (lexical, no I/O): the journal must not depend on the current directory.
        rel = Path(os.path.abspath(req.source)).relative_to(os.path.abspath(req.scan_root))
        if not rel.parts or ".." in rel.parts:
            raise ValueError(f"{req.source} is not a file inside {req.scan_root}")
        return self.root / rel

    # --- moving

    def move(self, req: MoveRequest) -> MoveResult:
        """Move one file into the quarantine; never raises for per-file problems."""
        src, scan_root = Path(os.path.abspath(req.source)), Path(os.path.abspath(req.scan_root))
        try:
            base = self.plan_destination(req)
        except ValueError as e:
            return MoveResult(req, "error", None, str(e))

        # Checks before anything is journaled: these leave the file alone.
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return MoveResult(req, "missing", None, f"{src} no longer exists")
        except OSError as e:
            return MoveResult(req, "error", None, f"cannot stat {src}: {e.strerror or e}")
        if stat.S_ISLNK(st.st_mode):
            return MoveResult(req, "error", None, f"{src} is a symlink; symlinks are never moved")
        real_parent = os.path.realpath(src.parent)
        if not _inside(real_parent, os.path.realpath(scan_root)):
            return MoveResult(req, "error", None, f"{src} resolves outside the scanned folder {scan_root}")
        if _inside(real_parent, os.path.realpath(self.root)):
            return MoveResult(req, "error", None, f"{src} is inside the quarantine folder")
        if not stat.S_ISREG(st.st_mode):
            return MoveResult(req, "changed", None, f"{src} is not a regular file")
        if (st.st_size, st.st_mtime_ns) != (req.size, req.mtime_ns):
            return MoveResult(req, "changed", None, f"{src} changed since it was scored; left in place")
        try:
            sha = _hash_unchanged(src, st)
            _step("mkdir")
            base.parent.mkdir(parents=True, exist_ok=True)
            if not _inside(os.path.realpath(base.parent), os.path.realpath(self.root)):
                return MoveResult(req, "error", None, f"{base.parent} resolves outside the quarantine")
        except _Abort as a:
            return MoveResult(req, a.state, None, a.message)
        except FileNotFoundError:
            return MoveResult(req, "missing", None, f"{src} no longer exists")
        except OSError as e:
            return MoveResult(req, "error", None, f"cannot prepare move of {src}: {e.strerror or e}")

        jid = uuid.uuid4().hex
        names = _numbered(base)
        try:
            final = next(n for n in names if not os.path.lexists(n))  # advisory; link() decides
            self._journal({
                "op": "move", "id": jid, "state": "started",
                "source": os.fsdecode(src), "destination": os.fsdecode(final),
                "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha,
                "reason": req.reason, "details": req.details,
                "scan_root": os.fsdecode(scan_root), "time": _now(),
            })  # fmt: skip
        except (OSError, TypeError, ValueError) as e:  # TypeError/ValueError: details not JSON-able
            return MoveResult(req, "error", None, f"cannot journal the move of {src}: {e}")
        self._inflight.add(jid)

        def retarget(taken: Path) -> Path:
            nxt = next(n for n in names if not os.path.lexists(n))
            log.info("%s is taken; using %s", taken, nxt)
            self._journal({"op": "move", "id": jid, "state": "retarget", "destination": os.fsdecode(nxt)})
            return nxt

        try:
            final = self._transfer(jid, src, final, st, sha, retarget)
        except _Abort as a:
            if a.clean:
                self._finish_quiet("move", jid, a.state, message=a.message)
            status = {"rolled_back": "error"}.get(a.state, a.state)
            return MoveResult(req, status, None, a.message)
        self._finish_quiet("move", jid, "done", destination=os.fsdecode(final))
        log.info("quarantined %s -> %s (%s)", src, final, req.reason)
        return MoveResult(req, "moved", final)

    def _transfer(
        self,
        jid: str,
        src: Path,
        final: Path,
        st: os.stat_result,
        sha: str,
        retarget: Callable[[Path], Path] | None,
    ) -> Path:
        """Move ``src`` (described by ``st``, hashing to ``sha``) to ``final`` or a retargeted name.

        Returns the name used. On failure undoes its own work and raises _Abort; an OSError never
        escapes, while any other exception (a crash) does, leaving recovery to recover().
        """
        while True:
            try:
                _step("link")
                os.link(src, final, follow_symlinks=False)
                break
            except FileExistsError:
                if retarget is None:
                    raise _Abort("rolled_back", f"{final} exists; left {src} where it is") from None
                try:
                    final = retarget(final)
                except OSError as e:
                    raise _Abort("rolled_back", f"no free name for {final}: {e}") from e
            except OSError as e:
                # EXDEV: another filesystem. EPERM/EMLINK/ENOTSUP: no hard link to this file
                # (fs.protected_hardlinks, link count limit...); a copy we own can still be linked.
                if e.errno in _COPY_ERRNOS:
                    return self._copy_across(jid, src, final, st, sha, retarget)
                raise self._failed(src, f"cannot link {src} to {final}", e) from e
        # Same filesystem: final is now a second name for the source's inode.
        try:
            if not _unchanged(os.lstat(final), st):  # source replaced or edited after hashing
                raise _Abort("changed", f"{src} changed while it was being moved; left in place")
            _step("fsync_dir")
            _fsync_dir(final.parent)
            _step("unlink_source")
            os.unlink(src)
        except (OSError, _Abort) as e:
            if not os.path.lexists(src):
                return final  # the source name vanished meanwhile; final holds the data
            clean = _discard(final)
            if isinstance(e, _Abort):
                raise _Abort(e.state, e.message, clean) from None
            raise self._failed(src, f"cannot move {src}", e, clean) from e
        _fsync_dir_quiet(src.parent)
        return final

    def _copy_across(
        self,
        jid: str,
        src: Path,
        final: Path,
        st: os.stat_result,
        sha: str,
        retarget: Callable[[Path], Path] | None,
    ) -> Path:
        """Cross-filesystem move: copy to a temp name, fsync, verify, link to final, drop source."""
        tmp = final.parent / f"{TMP_PREFIX}{jid}"
        placed = False
        try:
            fd_in = _open_regular(src)
            try:
                if not _unchanged(os.fstat(fd_in), st):
                    raise _Abort("changed", f"{src} changed before it could be moved; left in place")
                fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    try:  # as root, keep the owner (before chmod: chown clears setuid bits)
                        os.fchown(fd_out, st.st_uid, st.st_gid)
                    except OSError:
                        pass
                    h = hashlib.sha256()
                    while chunk := os.read(fd_in, _CHUNK):
                        _step("copy")
                        _write_all(fd_out, chunk)
                        h.update(chunk)
                    # Keep mode and times so a restore gives back the same file.
                    os.fchmod(fd_out, stat.S_IMODE(st.st_mode))
                    os.utime(fd_out, ns=(st.st_atime_ns, st.st_mtime_ns))
                    _step("fsync")
                    os.fsync(fd_out)
                    _step("verify")
                    if not _unchanged(os.fstat(fd_in), st):
                        raise _Abort("changed", f"{src} changed while it was being copied; left in place")
                    if os.fstat(fd_out).st_size != st.st_size or h.hexdigest() != sha:
                        raise OSError(errno.EIO, "copy does not match the journaled size/sha256")
                finally:
                    os.close(fd_out)
            finally:
                os.close(fd_in)
            while True:  # link, not rename: it never replaces an existing final name
                try:
                    _step("rename")
                    os.link(tmp, final, follow_symlinks=False)
                    placed = True
                    break
                except FileExistsError:
                    if retarget is None:
                        raise _Abort("rolled_back", f"{final} exists; left {src} where it is") from None
                    final = retarget(final)
            _step("unlink_tmp")
            os.unlink(tmp)
            _step("fsync_dir")
            _fsync_dir(final.parent)
            now = os.lstat(src)
            if not _unchanged(now, st):
                raise _Abort("changed", f"{src} changed while it was being copied; left in place")
            _step("unlink_source")
            os.unlink(src)
        except (OSError, _Abort) as e:
            if placed and not os.path.lexists(src):
                return final  # the source vanished meanwhile; our verified copy holds the data
            clean = _discard(tmp) and (not placed or _discard(final))
            if isinstance(e, _Abort):
                raise _Abort(e.state, e.message, clean) from None
            raise self._failed(src, f"cannot copy {src} to {final}", e, clean) from e
        _fsync_dir_quiet(src.parent)
        return final

    @staticmethod
    def _failed(src: Path, what: str, e: OSError, clean: bool = True) -> _Abort:
        if not os.path.lexists(src):
            return _Abort("missing", f"{src} no longer exists", clean)
        log.warning("%s: %s", what, e)
        return _Abort("rolled_back", f"{what}: {e.strerror or e}", clean)

    # --- recovery

    def recover(self) -> list[dict]:
        """Finish or undo every op journaled as started but never finished; returns what it did."""
        actions = []
        for op in _unfinished(read_manifest(self.root)):
            if not {"source", "destination"} <= op.keys():
                log.error("journal record %s lacks source/destination; cannot recover it", op.get("id"))
                continue
            jid, kind = op["id"], op.get("op", "move")
            src, dst = Path(op["source"]), Path(op["destination"])
            tmp = dst.parent / f"{TMP_PREFIX}{jid}"
            src_here, dst_here = os.path.lexists(src), os.path.lexists(dst)
            if src_here and dst_here:
                try:
                    same = _same_file(os.lstat(src), os.lstat(dst))
                    if not same and os.path.isfile(dst) and not os.path.islink(dst):
                        same = _sha256_path(dst) == op.get("sha256")
                except OSError as e:
                    log.error("recovery of %s: cannot compare with %s: %s", src, dst, e)
                    continue
                if same:  # the move got as far as placing a complete copy: finish it
                    if not _discard(src):
                        continue
                    state = "done"
                else:  # dst is someone else's file; ours never got there
                    log.warning("recovery: %s and %s differ; keeping both, %s stays in place", src, dst, src)
                    state = "rolled_back"
            elif dst_here:
                state = "done"
            elif src_here:
                state = "rolled_back"
            else:
                if os.path.lexists(tmp):  # the temp copy may be the only one left: keep it
                    log.error("recovery: %s and %s are both gone; keeping %s", src, dst, tmp)
                    continue
                log.warning("recovery: %s and %s are both gone", src, dst)
                state = "missing"
            if not _discard(tmp):
                continue
            self._finish(kind, jid, state, recovered=True)
            log.warning("recovered interrupted %s %s -> %s: %s", kind, src, dst, state)
            actions.append({"op": kind, "id": jid, "source": src, "destination": dst, "state": state})
        self._inflight.clear()
        return actions

    # --- restore

    def _restore_all(self, dry_run: bool) -> list[RestoreResult]:
        records = read_manifest(self.root)
        moves: dict[str, dict] = {}
        done_order: list[str] = []
        restored: set[str] = set()
        restores: dict[str, str] = {}  # restore id -> move id
        for rec in records:
            rid, state = rec.get("id"), rec.get("state")
            if rec.get("op") == "move":
                if state == "started":
                    moves[rid] = dict(rec)
                elif rid in moves and "destination" in rec:
                    moves[rid]["destination"] = rec["destination"]
                if state == "done" and rid in moves:
                    done_order.append(rid)
            elif rec.get("op") == "restore":
                if state == "started":
                    restores[rid] = rec.get("move_id")
                elif state == "done" and rid in restores:
                    restored.add(restores[rid])
        results = []
        for mid in reversed(done_order):  # newest first, as in an undo
            if mid not in restored:
                results.append(self._restore_one(moves[mid], dry_run))
        return results

    def _restore_one(self, move: dict, dry_run: bool) -> RestoreResult:
        original, held = Path(move["source"]), Path(move["destination"])

        def result(status: str, message: str = "") -> RestoreResult:
            return RestoreResult(original, held, status, message)

        try:
            st = os.lstat(held)
        except FileNotFoundError:
            return result("missing", f"{held} is no longer in the quarantine")
        except OSError as e:
            return result("error", f"cannot stat {held}: {e.strerror or e}")
        if not stat.S_ISREG(st.st_mode):
            return result("error", f"{held} is not a regular file; left in quarantine")
        if os.path.lexists(original):
            return result("exists", f"{original} exists again; {held} left in quarantine")
        scan_root = move.get("scan_root")
        if scan_root and not _inside(os.path.realpath(original.parent), os.path.realpath(scan_root)):
            return result("error", f"{original.parent} now resolves outside {scan_root}; left in quarantine")
        if dry_run:
            return result("restored", "dry run")
        try:
            sha = _hash_unchanged(held, st)
            original.parent.mkdir(parents=True, exist_ok=True)
        except _Abort as a:
            return result("error", a.message)
        except OSError as e:
            return result("error", f"cannot prepare restore of {held}: {e.strerror or e}")
        jid = uuid.uuid4().hex
        try:
            self._journal({
                "op": "restore", "id": jid, "move_id": move["id"], "state": "started",
                "source": os.fsdecode(held), "destination": os.fsdecode(original),
                "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha, "time": _now(),
            })  # fmt: skip
        except OSError as e:
            return result("error", f"cannot journal the restore of {held}: {e}")
        self._inflight.add(jid)
        try:
            self._transfer(jid, held, original, st, sha, retarget=None)
        except _Abort as a:
            if a.clean:
                self._finish_quiet("restore", jid, a.state, message=a.message)
            exists = a.state == "rolled_back" and os.path.lexists(original)
            return result("exists" if exists else {"rolled_back": "error"}.get(a.state, a.state), a.message)
        self._finish_quiet("restore", jid, "done")
        self._prune_empty_dirs(held.parent)
        log.info("restored %s", original)
        return result("restored")

    def _prune_empty_dirs(self, folder: Path) -> None:
        root = os.path.realpath(self.root)
        while _inside(os.path.realpath(folder), root) and os.path.realpath(folder) != root:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def restore(quarantine_root: Path, dry_run: bool = False) -> list[RestoreResult]:
    """Put every quarantined file back, newest move first; never overwrites.

    Each result's ``source`` is the original path, ``destination`` the quarantined file. A file
    at the original path is left alone ("exists") and the quarantined copy stays. Restored moves
    are journaled, so a second restore does nothing. ``dry_run`` reports what would happen and
    writes nothing (no lock, no recovery, no journal).
    """
    root = Path(quarantine_root)
    if not (root / MANIFEST_NAME).is_file():
        raise QuarantineError(f"{root} has no {MANIFEST_NAME}; nothing to restore")
    if dry_run:
        return Quarantine(root)._restore_all(dry_run=True)
    with Quarantine(root) as q:
        return q._restore_all(dry_run=False)
