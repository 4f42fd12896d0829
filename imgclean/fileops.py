"""Small filesystem steps shared by moves, transfers, recovery and restore.

Holds the fault hook (tests set ``fileops.fault_hook``): a callable taking a step name,
called right before each irreversible or failure-prone step, so tests can raise from it (an
OSError to simulate a failure, any other exception to simulate a crash) or change files there.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("imgclean.quarantine.moves")

CHUNK = 1 << 20
MAX_SUFFIX = 10_000
DEFAULT_NAME_MAX = 255

fault_hook: Callable[[str], None] | None = None


def step(name: str) -> None:
    if fault_hook is not None:
        fault_hook(name)


class Abort(Exception):
    """A transfer stopped; ``state`` is the journal state to record, ``clean`` whether the undo
    succeeded (if not, the record stays unfinished and recovery deals with it)."""

    def __init__(self, state: str, message: str, clean: bool = True):
        super().__init__(message)
        self.state, self.message, self.clean = state, message, clean


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolved_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """``path``'s folder, resolved, lies in ``root`` resolved (the last component is not followed)."""
    parent = os.path.realpath(os.path.dirname(os.fspath(path)))
    return inside(parent, os.path.realpath(root))


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def unchanged(a: os.stat_result, b: os.stat_result) -> bool:
    return same_file(a, b) and (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


def lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def open_regular(path: Path) -> int:
    # O_NONBLOCK: a FIFO swapped in after lstat must not hang the open; O_NOFOLLOW: no symlinks.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Abort("changed", f"{path} is no longer a regular file")
    return fd


def sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    while chunk := os.read(fd, CHUNK):
        h.update(chunk)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    fd = open_regular(path)
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def hash_unchanged(path: Path, st: os.stat_result, step_name: str = "hash") -> str:
    """sha256 of ``path``, raising Abort("changed") if it is not the file ``st`` describes."""
    step(step_name)
    fd = open_regular(path)
    try:
        if not unchanged(os.fstat(fd), st):
            raise Abort("changed", f"{path} changed before it could be moved")
        digest = sha256_fd(fd)
        if not unchanged(os.fstat(fd), st):
            raise Abort("changed", f"{path} changed while it was being hashed")
        return digest
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir_quiet(path: Path) -> None:
    try:
        fsync_dir(path)
    except OSError as e:
        log.warning("could not fsync folder %s: %s", path, e)


def discard(path: Path) -> bool:
    """Remove ``path`` if present; False if it is still there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.error("could not remove %s: %s", path, e)
        return False
    return True


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ----------------------------------------------------------------------------- names


def name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, TypeError):
        return DEFAULT_NAME_MAX


def _nbytes(text: str) -> int:
    return len(os.fsencode(text))


def _cut(text: str, limit: int) -> str:
    """The longest prefix of ``text`` within ``limit`` bytes, cut between characters: valid UTF-8
    stays valid, and each surrogate-escaped byte (a lone undecodable byte) stays whole."""
    out, used = [], 0
    for ch in text:
        n = _nbytes(ch)
        if used + n > limit:
            break
        out.append(ch)
        used += n
    return "".join(out)


def fitted(stem: str, suffix: str, tag: str, limit: int) -> str:
    """``stem + tag + suffix`` shortened (the stem, in bytes) to at most ``limit`` bytes."""
    if _nbytes(tag + suffix) >= limit:  # an absurd "extension": shorten the name as a whole
        stem, suffix = stem + suffix, ""
    room = limit - _nbytes(tag + suffix)
    return _cut(stem, room) + tag + suffix


def numbered(base: Path, limit: int | None = None) -> Iterator[Path]:
    """base, then 'name (1).ext', 'name (2).ext', ...; each shortened to fit ``limit`` bytes
    (the folder's name limit when not given)."""
    if limit is None:
        limit = name_max(base.parent)
    name, suffix = base.name, base.suffix
    stem = name[: len(name) - len(suffix)]
    yield base if _nbytes(name) <= limit else base.with_name(fitted(stem, suffix, "", limit))
    for n in range(1, MAX_SUFFIX):
        yield base.with_name(fitted(stem, suffix, f" ({n})", limit))
    raise OSError(errno.EEXIST, f"no free name for {base} after {MAX_SUFFIX} tries")


# ----------------------------------------------------------------------------- scanned folders
# A folder imgclean moved files out of holds this file (the scan's lock file, also made by a
# move). A journal is only as trustworthy as whoever could write to the quarantine, but this file
# is outside it: a record naming a folder without one is never acted on, so a forged journal
# cannot make recovery delete, or restore create, files in a folder no scan ever moved from.
# (Whoever can create that file in a folder can write there anyway.)
ROOT_MARKER = ".imgclean.lock"


def mark_scanned_root(root: str | os.PathLike) -> None:
    """Create the marker in ``root`` if it is missing (never truncates or follows a link)."""
    fd = os.open(os.path.join(root, ROOT_MARKER), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    os.close(fd)


def is_scanned_root(root: str | os.PathLike) -> bool:
    """``root`` holds the marker as a regular file: imgclean moved files out of it."""
    st = lstat_or_none(Path(root, ROOT_MARKER))
    return st is not None and stat.S_ISREG(st.st_mode)


# A quarantine is a folder holding this manifest (the move journal) as a regular file; every walk
# skips such folders and no scan reads one.
MANIFEST_NAME = "imgclean-manifest.jsonl"


def quarantine_holding(folder: str | os.PathLike) -> Path | None:
    """The quarantine that is ``folder`` (resolved) or holds it, if any: a scan of a quarantine's
    sub-folder would move its files out of reach of the journal that can restore them."""
    real = Path(os.path.realpath(folder))
    return next((f for f in (real, *real.parents) if is_quarantine(f)), None)


def is_quarantine(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds an imgclean manifest (a regular file): it is a quarantine,
    whatever its path. Recognised by content rather than by comparing path strings, so a
    quarantine reached through a bind mount or a symlink is still one."""
    try:
        return stat.S_ISREG(os.lstat(os.path.join(os.fspath(folder), MANIFEST_NAME)).st_mode)
    except OSError:
        return False
