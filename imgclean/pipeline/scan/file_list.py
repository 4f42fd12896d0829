"""Scanning named files instead of walking a folder: `scan FILE`, `scan FOLDER --files-from LIST`
and `api.scan(FOLDER, files=[...])`.

A list of names becomes walk.Run objects that pipeline/scan/scanner.Scorer.scan_items takes in place of
walk.walk_runs, so the cache, decoding, scoring, records, the lock and every move are the folder
scan's own code. Each listed name ends as one FileEntry: a regular image file inside the scanned
folder, reached the way the walk would reach it, is scored; anything else is a skipped entry
whose reason says why (outside the folder, inside a quarantine or this run's --move-to, hidden,
missing, a link, a folder, not a regular file, not an image name, a hard link to a file already
listed, a path too long, a line of the list too long to be a path). A name listed twice is
scanned once.

How a name is checked: a relative name is taken relative to the current folder (as `find`
prints them); its folder part is resolved (symlinks and `..` as the kernel follows them, once)
and must lie in the scanned folder; then each folder from the scanned one down to it is opened
relative to the one above with O_NOFOLLOW (a folder swapped for a link is refused, not
followed), and the file is lstat'ed relative to its folder's descriptor: never opened, never
followed. Consecutive names in one folder share that descriptor.

The cache: results are read as for a walk (per-file rows, and the folder's run snapshots file
by file), but stored only as per-file rows (PerFileRows): a run snapshot stands for a whole
stretch of a folder's listing, which a list of some of its files is not.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from ...errors import ImgcleanError
from ...fileops import MANIFEST_NAME
from ...walk import PATH_MAX, RUN_LIMIT, FileEntry, Run, has_image_extension, too_long
from .run_snapshots import CACHEABLE, RunSnapshots

log = logging.getLogger(__name__)

# Bytes read from a list at a time.
READ_CHUNK = 1 << 16


class FileListError(ImgcleanError, ValueError):
    """A scan target or a file list that cannot be used (missing, unreadable); one line."""


@dataclass(frozen=True)
class Listed:
    """One name of a list: `number` its line (or NUL-separated item) counted from 1, `name` its
    bytes, `error` why it is no path at all (then `name` is None)."""

    number: int
    name: bytes | None
    error: str = ""


@dataclass(frozen=True)
class ScanTarget:
    """What `scan PATH` scans: `root` (resolved) and `files` (None: walk all of root)."""

    root: Path
    files: Iterable | None = None


def scan_target(path: str | os.PathLike, files: Iterable | None = None) -> ScanTarget:
    """A folder is walked (or only `files` in it are scanned); any other existing name (a file,
    a link, a FIFO) is scanned alone, its folder being the scanned one. FileListError when
    `path` does not exist, or is no folder and `files` is given."""
    if os.path.isdir(path):  # (a link to a folder is that folder, as it always was)
        return ScanTarget(Path(os.fsdecode(os.path.realpath(path))), files)
    shown = os.fsdecode(path)
    if not os.path.lexists(path):
        raise FileListError(f"{shown} does not exist")
    if files is not None:
        raise FileListError(f"{shown} is not a folder; a list of files needs the folder they lie in")
    parent = os.path.dirname(os.fsdecode(path)) or "."
    return ScanTarget(Path(os.path.realpath(parent)), [path])


def read_names(stream: IO[bytes], null: bool = False, limit: int = PATH_MAX) -> Iterator[Listed]:
    """The names of a list, one per line (or NUL-separated with `null`, as `find -print0`
    writes them), read a chunk at a time: a name of `limit` bytes or more is a Listed with an
    error, and memory stays bounded by it whatever the input. Empty names are left out. An I/O
    error is a FileListError."""
    sep = b"\0" if null else b"\n"
    read = getattr(stream, "read1", None) or stream.read
    pending = bytearray()
    overlong = False
    number = 0
    while True:
        try:
            chunk = read(READ_CHUNK)
        except OSError as exc:
            raise FileListError(f"cannot read the file list: {exc.strerror or exc}") from None
        if not chunk:
            break
        start = 0
        while (end := chunk.find(sep, start)) >= 0:
            number += 1
            piece = chunk[start:end]
            start = end + 1
            if overlong or len(pending) + len(piece) >= limit:
                yield Listed(number, None, _overlong(limit, null))
            elif pending or piece:
                yield Listed(number, bytes(pending) + piece)
            pending.clear()
            overlong = False
        if not overlong:
            pending += chunk[start:]
            if len(pending) >= limit:
                overlong = True
                pending.clear()
    if overlong:
        yield Listed(number + 1, None, _overlong(limit, null))
    elif pending:
        yield Listed(number + 1, bytes(pending))


def _overlong(limit: int, null: bool) -> str:
    return f"{'item' if null else 'line'} of {limit:,} bytes or more: longer than any path (PATH_MAX)"


def as_listed(names: Iterable) -> Iterator[Listed]:
    """Listed items from names given as str, bytes or path-like objects (or Listed already)."""
    for number, name in enumerate(names, 1):
        if isinstance(name, Listed):
            yield name
        else:
            yield Listed(number, os.fsencode(name))


class PerFileRows(RunSnapshots):
    """RunSnapshots that never snapshot a run: the files of a listed run are stored as per-file
    rows only (a snapshot would tell a later walk that the run is the folder's whole listing)."""

    def _store(self, run) -> None:  # a run_snapshots.CollectedRun
        kept = [(e, o) for e, o in zip(run.entries, run.outcomes, strict=True) if not e.skip_reason and o[0] in CACHEABLE]
        self.cache.put_many([e for e, _ in kept], [o for _, o in kept])

    def after_block(self, *args, **kwargs) -> None:  # a listed run is never answered whole
        return None


class ListedFiles:
    """Turns listed names into FileEntry tuples below `root` (resolved, absolute), as the walk
    would have found them; `exclude`: folders (this run's quarantine) recognised by device and
    inode. A context manager: it holds the descriptor of the scanned folder and of the folder
    of the last name."""

    def __init__(self, root: Path, exclude: Iterable[Path] = ()):
        self.base = os.fspath(root)
        self.root = os.fsencode(self.base)
        self.prefix = self.root if self.root.endswith(b"/") else self.root + b"/"
        self.head = self.base if self.base.endswith(os.sep) else self.base + os.sep
        self.excluded = set()
        for folder in exclude:
            try:
                st = os.stat(folder)
                self.excluded.add((st.st_dev, st.st_ino))
            except OSError:
                pass  # not there yet: it holds nothing
        try:
            self.cwd: bytes | None = os.getcwdb()
        except OSError:
            self.cwd = None  # the current folder was removed: relative names cannot be placed
        self.seen_paths: set[bytes] = set()
        self.seen_inodes: set[tuple[int, int]] = set()
        self.root_fd = -1
        self.folder: tuple[bytes, int, str] | None = None  # (relative folder, its fd, why it is refused)

    def __enter__(self) -> "ListedFiles":
        try:
            self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise FileListError(f"cannot open the scanned folder {self.base}: {exc.strerror or exc}") from None
        return self

    def __exit__(self, *exc) -> None:
        self._drop_folder()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def entry(self, item: Listed) -> FileEntry | None:
        """The entry for one listed name; None for a name listed before."""
        if item.name is None:
            return self._refused(item, item.error)
        rel, problem = self._relative(item.name)
        if rel is None:
            return self._refused(item, problem)
        if rel in self.seen_paths:
            return None
        self.seen_paths.add(rel)
        path = self.head + os.fsdecode(rel)
        folder, name = rel.rpartition(b"/")[::2]
        if any(part.startswith(b".") for part in rel.split(b"/")):
            return FileEntry(path, 0, 0, "hidden (a scan skips hidden files and folders)")
        fd, problem = self._open_folder(folder)
        if problem:
            return FileEntry(path, 0, 0, problem)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            return FileEntry(path, 0, 0, "does not exist" if exc.errno == errno.ENOENT else
                             f"cannot be reached: {exc.strerror or exc}")
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            return FileEntry(path, 0, 0, "symbolic link (not followed)")
        if stat.S_ISDIR(mode):
            return FileEntry(path, 0, 0, "a folder, not a file (scan the folder itself to scan all of it)")
        if not stat.S_ISREG(mode):
            return FileEntry(path, 0, 0, "not a regular file")
        if not has_image_extension(os.fsdecode(name)):
            return FileEntry(path, st.st_size, st.st_mtime_ns, "not an image file name (a scan reads only image extensions)")
        if too_long(path):
            return FileEntry(path, st.st_size, st.st_mtime_ns, too_long(path))
        key = (st.st_dev, st.st_ino)
        if key in self.seen_inodes:
            return FileEntry(path, st.st_size, st.st_mtime_ns, "hard link to a file already scanned")
        self.seen_inodes.add(key)
        return FileEntry(path, st.st_size, st.st_mtime_ns, "", st.st_dev, st.st_ino, st.st_ctime_ns)

    def _refused(self, item: Listed, why: str) -> FileEntry:
        """A name that has no path in the scanned folder: a skipped entry under a stand-in name
        (a report's paths are relative to its folder), the name as listed in the reason."""
        shown = "" if item.name is None else f": {_shown(item.name)}"
        return FileEntry(f"{self.head}<listed #{item.number}>", 0, 0, f"{why}{shown}")

    def _relative(self, name: bytes) -> tuple[bytes | None, str]:
        """(the name's path relative to the root, normalised, its folder resolved; '') or (None, why not)."""
        if b"\0" in name:
            return None, "holds a NUL byte (lists of names from `find -print0` need --null)"
        if not name.startswith(b"/"):
            if self.cwd is None:
                return None, "a relative name, and the current folder no longer exists"
            name = os.path.join(self.cwd, name)
        parent, last = os.path.split(name)
        if last in (b"", b".", b".."):
            full = os.path.realpath(name)  # a folder named as such ("sub/", "sub/.")
        else:
            full = os.path.join(os.path.realpath(parent), last)
        if full == self.root:
            return None, "the scanned folder itself, not a file in it"
        if not full.startswith(self.prefix):
            return None, f"outside the scanned folder {self.base}"
        return full[len(self.prefix):], ""

    def _open_folder(self, folder: bytes) -> tuple[int, str]:
        """(descriptor, '') of the folder `folder` (relative to the root), opened one component
        at a time without following links, each checked as the walk would; or (-1, why not)."""
        if not folder:
            return self.root_fd, ""
        if self.folder is not None and self.folder[0] == folder:
            return self.folder[1], self.folder[2]
        self._drop_folder()
        fd, problem = self.root_fd, ""
        parts = folder.split(b"/")
        for depth, part in enumerate(parts, 1):
            shown = repr(os.fsdecode(b"/".join(parts[:depth])))
            try:
                sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                problem = _folder_problem(exc, part, fd, shown)
                break
            if fd != self.root_fd:
                os.close(fd)
            fd = sub
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in self.excluded:
                problem = f"inside {shown}, this run's quarantine"
                break
            if _holds_manifest(fd):
                problem = f"inside {shown}, an imgclean quarantine (it holds {MANIFEST_NAME})"
                break
        if problem and fd != self.root_fd:
            os.close(fd)
            fd = -1
        self.folder = (folder, fd, problem)
        return fd, problem

    def _drop_folder(self) -> None:
        if self.folder is not None and self.folder[1] not in (-1, self.root_fd):
            os.close(self.folder[1])
        self.folder = None


def _holds_manifest(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.stat(MANIFEST_NAME, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _folder_problem(exc: OSError, part: bytes, fd: int, shown: str) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        try:
            if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                return f"its folder {shown} is a symbolic link (not followed)"
        except OSError:
            pass
        return f"{shown} is not a folder"
    if exc.errno == errno.ENOENT:
        return f"its folder {shown} does not exist"
    return f"its folder {shown} cannot be opened: {exc.strerror or exc}"


def _shown(name: bytes, most: int = 4096) -> str:
    """A listed name as a message shows it: quoted, escapes for what is not UTF-8, at most `most` characters."""
    text = repr(os.fsdecode(name))
    return text if len(text) <= most else text[: most - 3] + "..."


def listed_runs(root: Path, names: Iterable, exclude: Iterable[Path] = ()) -> Iterator[Run]:
    """The entries of the listed `names` (str, bytes, path-like or Listed), in list order, as
    walk.Run objects: consecutive entries in one folder, at most RUN_LIMIT each, never matched
    against a cache snapshot. `root` is the resolved scanned folder."""
    listed = 0
    with ListedFiles(root, exclude) as files:
        run: list[FileEntry] = []
        folder = None
        for item in as_listed(names):
            listed += 1
            entry = files.entry(item)
            if entry is None:
                continue
            where = os.path.dirname(entry.fspath)
            if run and (where != folder or len(run) >= RUN_LIMIT):
                yield Run(folder, 0, run, None, None)
                run = []
            folder = where
            run.append(entry)
        if run:
            yield Run(folder, 0, run, None, None)
    if not listed:
        log.warning("the list of files to scan named none")


__all__ = ["FileListError", "Listed", "ListedFiles", "PerFileRows", "ScanTarget", "as_listed", "listed_runs",
           "read_names", "scan_target"]
