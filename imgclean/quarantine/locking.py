"""One run per tree at a time: a per-folder flock plus a machine-wide registry of held locks.

Two layers, both released by the kernel when the holder dies (even kill -9):

* ``<folder>/.imgclean.lock``, flocked exclusively: the same folder, however it is reached
  (symlink, bind mount, another machine over a shared filesystem). The file is never deleted
  (deleting it races with a second run that has just opened it).
* a registry folder (``IMGCLEAN_LOCK_REGISTRY``, default ``/tmp/imgclean-locks``, mode 1777 like
  /tmp) in which each holder publishes one entry (its resolved root, the device/inode chain up
  to /, pid, host, start time) and flocks it. Only after its own entry is locked and visible
  does a run read the others; a held entry whose tree overlaps ours (same folder, an ancestor or
  a descendant) makes it give everything back and raise :class:`LockHeld`. As both sides lock
  before they look, two overlapping runs can never both go on (both may be refused; a later
  run succeeds). An entry nobody holds is stale and is removed where permissions allow.

Scans also test the ``.imgclean.lock`` of every ancestor folder, which covers a run on another
machine sharing the filesystem for that direction. Limits: the registry is per machine, so a
run on another machine on a folder *below* ours is not seen; and a run with a private /tmp
(systemd PrivateTmp) needs IMGCLEAN_LOCK_REGISTRY set to a shared folder. When the registry
cannot be used (a symlink or a file at its path, no permission) locking falls back to the
per-folder layer with a warning, never an error.

Kinds: a scan locks its folder with kind "scan"; a quarantine is locked with kind
"quarantine". Scans conflict with overlapping scans; quarantines with overlapping quarantines;
a scan conflicts with a quarantine only when the scanned folder is the quarantine or inside it
(so a quarantine inside the folder its own scan walks is allowed: walks skip quarantines).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import stat
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from ..errors import ImgcleanError

log = logging.getLogger(__name__)

LOCK_NAME = ".imgclean.lock"
REGISTRY_ENV = "IMGCLEAN_LOCK_REGISTRY"
DEFAULT_REGISTRY = "/tmp/imgclean-locks"
KINDS = ("scan", "quarantine")
_ENTRY_SUFFIX = ".json"
_TMP_PREFIX = ".tmp-"
_TMP_GRACE_S = 60  # an unheld temp entry younger than this may belong to a run still publishing
_MAX_ENTRY = 1 << 16

# Tests set this to a callable taking the step name ("folder_locked", "published") to interleave
# two lock attempts deterministically.
_fault_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _fault_hook is not None:
        _fault_hook(name)


class LockError(ImgcleanError):
    """The lock file cannot be used (folder missing or not writable, lock file is a symlink...)."""


class LockHeld(ImgcleanError):
    """Another run holds a lock that excludes ours.

    ``path`` is the lock file of the folder that is actually busy (which may be an ancestor or
    a descendant of the one asked for); ``holder`` says who (e.g. "pid 1234 on host since ...").
    """

    def __init__(self, path: Path, holder: str, requested: Path | None = None, kind: str = "scan"):
        self.path = Path(path)
        self.holder = holder
        self.requested = requested
        busy = self.path.parent
        what = "in use as a quarantine" if kind == "quarantine" else "being processed"
        where = f"{busy}"
        if requested is not None:
            mine, theirs = Path(os.path.realpath(requested)), Path(os.path.realpath(busy))
            if mine != theirs:
                relation = ("which contains" if mine.is_relative_to(theirs) else
                            "inside" if theirs.is_relative_to(mine) else "the same tree as")
                where = f"{busy} ({relation} {requested})"
        super().__init__(f"{where} is {what} by another imgclean run ({holder})")


def _chain(root: str) -> list[list[int]]:
    """[dev, inode] of root and of every folder above it: identifies the tree across bind mounts."""
    out = []
    p = Path(root)
    for folder in (p, *p.parents):
        try:
            st = os.stat(folder)
        except OSError:
            continue
        out.append([st.st_dev, st.st_ino])
    return out


def _overlap(a: dict, b: dict) -> bool:
    """Same folder, or one inside the other: by resolved path or by device/inode chain."""
    pa, pb = Path(a["root"]), Path(b["root"])
    if pa == pb or pa.is_relative_to(pb) or pb.is_relative_to(pa):
        return True
    chain_a, chain_b = a.get("chain") or [], b.get("chain") or []
    return bool(chain_a and chain_b and (chain_a[0] in chain_b or chain_b[0] in chain_a))


def conflicts(a: dict, b: dict) -> bool:
    """Whether two locks (dicts with kind, root, chain) exclude each other; symmetric."""
    if not _overlap(a, b):
        return False
    if a["kind"] == b["kind"]:
        return True
    scan, quarantine = (a, b) if a["kind"] == "scan" else (b, a)
    # a scan of the quarantine or of a folder inside it; not a quarantine inside the scanned tree
    inside = Path(scan["root"]).is_relative_to(quarantine["root"])
    q_chain, s_chain = quarantine.get("chain") or [], scan.get("chain") or []
    return inside or bool(q_chain and s_chain and q_chain[0] in s_chain)


class ScanLock:
    """Exclusive, non-blocking lock on a folder and its tree; use as a context manager.

    ``kind`` is "scan" (the default) or "quarantine" (see the module docstring).
    """

    def __init__(self, folder: Path, kind: str = "scan"):
        if kind not in KINDS:
            raise ValueError(f"lock kind must be one of {KINDS}, not {kind!r}")
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.kind = kind
        self.root: str | None = None  # resolved folder, set by __enter__
        self._fd: int | None = None
        self._entry_fd: int | None = None
        self._entry_path: Path | None = None

    def __enter__(self) -> "ScanLock":
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        self._fd = self._lock_folder()
        try:
            _step("folder_locked")
            self.root = os.path.realpath(self.folder)
            me = {"kind": self.kind, "root": self.root, "chain": _chain(self.root)}
            registry = _registry()
            if registry is not None:
                try:
                    self._publish(registry, me)
                except OSError as e:
                    _unusable(registry, f"cannot create an entry in it ({e.strerror or e})")
                else:
                    _step("published")
                    self._check_registry(registry, me)
            if self.kind == "scan":
                self._check_ancestor_files()
        except BaseException:
            self.release()
            raise
        log.debug("locked %s (%s)", self.path, self.kind)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Withdraw the registry entry (unlink before unlock), then unlock; the lock file stays."""
        if self._entry_fd is not None:
            fd, self._entry_fd = self._entry_fd, None
            try:
                if self._entry_path is not None:
                    os.unlink(self._entry_path)
            except OSError:
                pass  # already removed; an unheld entry is stale for everyone anyway
            finally:
                self._entry_path = None
                os.close(fd)
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # --- layer 1: the folder's own lock file

    def _lock_folder(self) -> int:
        try:
            # O_NOFOLLOW: a planted symlink must not make us create/truncate a file elsewhere.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise LockError(self._explain(e)) from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LockError(f"lock file {self.path} is not a regular file; remove it and retry")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                raise LockHeld(self.path, holder or "holder unknown", kind=self.kind) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{_holder_text()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_ancestor_files(self) -> None:
        """A held .imgclean.lock in any folder above ours (even held from another machine)."""
        assert self.root is not None
        for folder in Path(self.root).parents:
            path = folder / LOCK_NAME
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue  # none (the usual case), a symlink, or unreadable: nothing to test
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                    raise LockHeld(path, holder or "holder unknown", self.folder) from None
                except OSError:
                    continue
            finally:
                os.close(fd)

    # --- layer 2: the machine-wide registry

    def _publish(self, registry: Path, me: dict) -> None:
        """Create, lock, then make visible our entry (rename keeps the inode and the lock)."""
        name = f"{os.getpid()}-{uuid.uuid4().hex}"
        tmp, final = registry / f"{_TMP_PREFIX}{name}", registry / f"{name}{_ENTRY_SUFFIX}"
        body = {**me, "lock": os.fspath(Path(self.root or "") / LOCK_NAME), "pid": os.getpid(),
                "host": socket.gethostname(), "since": _now()}
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.fchmod(fd, 0o644)  # others must open it to test the lock, whatever our umask
            os.write(fd, json.dumps(body).encode())
            os.rename(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            os.close(fd)
            raise
        self._entry_fd, self._entry_path = fd, final

    def _check_registry(self, registry: Path, me: dict) -> None:
        try:
            names = sorted(os.listdir(registry))
        except OSError as e:
            log.warning("cannot list the lock registry %s (%s); overlapping runs are not detected", registry, e)
            return
        for name in names:
            path = registry / name
            if self._entry_path is not None and path == self._entry_path:
                continue
            if name.startswith(_TMP_PREFIX):
                _remove_if_stale(path, grace=_TMP_GRACE_S)
                continue
            if not name.endswith(_ENTRY_SUFFIX):
                continue
            other = _read_held(path)
            if other is None or not conflicts(me, other):
                continue
            holder = f"pid {other.get('pid')} on {other.get('host')} since {other.get('since')}"
            raise LockHeld(Path(other["root"]) / LOCK_NAME, holder, self.folder, other["kind"])

    def _explain(self, e: OSError) -> str:
        if e.errno == errno.ELOOP:
            return f"lock file {self.path} is a symlink; refusing to follow it (remove it and retry)"
        if e.errno == errno.ENOENT:
            return f"folder {self.folder} does not exist"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"cannot create lock file in {self.folder}: folder is not writable ({e.strerror})"
        if e.errno in (errno.ENXIO, errno.EISDIR):
            return f"lock file {self.path} is not a regular file; remove it and retry"
        return f"cannot open lock file {self.path}: {e.strerror or e}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _holder_text() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {_now()}"


def _registry() -> Path | None:
    """The registry folder, created (mode 1777) if missing; None (with a warning) if unusable."""
    path = Path(os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o1777)  # chmod after mkdir: the umask does not apply
    except FileExistsError:
        pass
    except OSError as e:
        return _unusable(path, f"cannot create it ({e.strerror or e})")
    try:
        st = os.lstat(path)
    except OSError as e:
        return _unusable(path, f"cannot read it ({e.strerror or e})")
    if stat.S_ISLNK(st.st_mode):
        return _unusable(path, "it is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        return _unusable(path, "it is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        return _unusable(path, "it is not writable")
    return path


def _unusable(path: Path, why: str) -> None:
    log.warning("lock registry %s is unusable (%s): only the folder itself is locked, so a run on a "
                "folder above or below it is not detected; remove it or set %s", path, why, REGISTRY_ENV)
    return None


def _read_held(path: Path) -> dict | None:
    """The entry's contents if another live run holds it; remove it (if we may) when stale."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # gone meanwhile, a symlink, or unreadable
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: a live run
        else:
            _unlink_quietly(path)  # nobody holds it: its run ended without withdrawing it (kill -9)
            return None
        try:
            entry = json.loads(os.pread(fd, _MAX_ENTRY, 0))
            if not (isinstance(entry, dict) and isinstance(entry.get("root"), str)
                    and entry.get("kind") in KINDS and os.path.isabs(entry["root"])):
                raise ValueError("not an entry")
            if not (isinstance(entry.get("chain"), list) and all(
                    isinstance(c, list) and len(c) == 2 and all(isinstance(x, int) for x in c) for c in entry["chain"])):
                entry["chain"] = []
        except ValueError:
            log.debug("lock registry entry %s is held but unreadable; ignored", path)
            return None
        return entry
    finally:
        os.close(fd)


def _remove_if_stale(path: Path, grace: float) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if time.time() - os.fstat(fd).st_mtime < grace:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return
        _unlink_quietly(path)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # another user's entry in a sticky folder, or already gone: ignore it
