"""What a saved report may make `imgclean apply` move, and from which folder.

A report is data anyone who can write it can edit, and the identity a row carries (size, mtime,
device, inode) is visible to anyone who can stat the file, so a row proves nothing about where it
came from. apply therefore acts only on what a scan of the folder could itself have found:

- the folder: the one named with --root, or the one the rows record when the report can be
  trusted to say so (a regular file owned by the user running apply or by root, that no other
  user can write); never a quarantine or a folder inside one (:func:`resolve_folder`);
- each file (:class:`SourceCheck`): a path below that folder with an image extension, no hidden
  component (the walk skips those: imgclean's own lock, temporary and probe files are all
  hidden), no imgclean manifest name, no symbolic link on the way or at the end (each folder is
  opened relative to the one above it with O_NOFOLLOW), and no folder on the way that is a
  quarantine (it holds a manifest) or the run's own quarantine (recognised by device and inode,
  as the walk recognises it).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ...errors import ImgcleanError
from ...fileops import MANIFEST_NAME, is_quarantine
from ...walk import has_image_extension, is_hidden


class ApplyFolderError(ImgcleanError, ValueError):
    """The folder a report would be applied to cannot be used (the message says what to give)."""


def _shared_writable(st: os.stat_result) -> str:
    """Why a report file with this stat cannot be trusted to name its folder ('' if it can)."""
    if st.st_uid not in (os.geteuid(), 0):
        return f"it belongs to another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"other users can write it (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


def resolve_folder(report: Path, report_stat: os.stat_result, given: Path | None,
                   recorded: str | None) -> tuple[Path, bool]:
    """The folder (resolved) whose files the report's rows name, and whether device numbers are
    checked (only when that folder is the one the report records: a folder mounted elsewhere has
    other device numbers). `given`: --root (None: the recorded folder, on the conditions in the
    module docstring); `recorded`: the root the report's rows record (None: none recorded)."""
    if given is None:
        if recorded is None:
            raise ApplyFolderError(f"{report} names no scanned folder (a report from an older imgclean, or no "
                                   "valid row); give --root FOLDER")
        distrust = _shared_writable(report_stat)
        if distrust:
            raise ApplyFolderError(f"{report} says it was made from {recorded}, but {distrust}; name the folder "
                                   "with --root FOLDER to apply it")
        given = Path(recorded)
        if not given.is_dir():
            raise ApplyFolderError(f"{report} was made from {recorded}, which is not a folder here; "
                                   "give --root FOLDER (where that folder is mounted on this machine)")
    elif not given.is_dir():
        raise ApplyFolderError(f"--root {given} does not exist or is not a folder")
    folder = Path(os.path.realpath(given))
    for above in (folder, *folder.parents):
        if is_quarantine(above):
            where = "is" if above == folder else f"lies inside {above}, which is"
            raise ApplyFolderError(f"{given} {where} an imgclean quarantine (it holds {MANIFEST_NAME}); "
                                   "reports never apply to one")
    same = recorded is not None and (recorded == os.fsdecode(folder) or os.path.realpath(recorded) == os.fsdecode(folder))
    return folder, same


class SourceCheck:
    """Whether a row's path names a file apply may move (see the module docstring): call it with
    the path relative to `root`; '' when it may, else why not. `excluded`: folders (by device and
    inode) no source may lie in (the run's quarantine when it is inside the folder). `remember`
    True caches the folders found sound (for checking a whole report before anything moves);
    False checks every folder again (right before a move)."""

    def __init__(self, root: Path, excluded: tuple[Path, ...] = (), remember: bool = False):
        self.root = os.fspath(root)
        self.excluded = set()
        for folder in excluded:
            try:
                st = os.stat(folder)
                self.excluded.add((st.st_dev, st.st_ino))
            except OSError:
                pass  # not there yet: it holds nothing to move
        self._sound: set[str] | None = set() if remember else None

    def __call__(self, path: str) -> str:
        parts = path.split(os.sep)
        for i, part in enumerate(parts, 1):
            if is_hidden(part):
                return f"it names the hidden {'file' if i == len(parts) else 'folder'} {part!r}, which no scan reports"
            if part == MANIFEST_NAME:
                return f"it names {MANIFEST_NAME}, a quarantine's journal"
        if not has_image_extension(parts[-1]):
            return "it does not name an image file (no scan reports other files)"
        folder = os.path.dirname(path)
        if self._sound is not None and folder in self._sound:
            return _link_problem(os.path.join(self.root, path), None)
        problem = self._walk(parts)
        if not problem and self._sound is not None:
            self._sound.add(folder)
        return problem

    def _walk(self, parts: list[str]) -> str:
        """Open each folder from the root down through parts[:-1], relative to the one above and
        without following a link, checking each; then the file itself (lstat relative to its
        folder). '' when all is sound; a missing folder or file is left for the move to report."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for depth, part in enumerate(parts[:-1], 1):
                shown = os.sep.join(parts[:depth])
                try:
                    sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _link_problem(part, fd):
                        return f"its folder {shown!r} is a symbolic link (never followed)"
                    return ""
                os.close(fd)
                fd = sub
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) in self.excluded:
                    return f"it lies inside {shown!r}, this run's quarantine"
                if _holds_manifest(fd):
                    return f"it lies inside {shown!r}, an imgclean quarantine (it holds {MANIFEST_NAME})"
            return _link_problem(parts[-1], fd)
        finally:
            os.close(fd)


def _link_problem(name: str, dir_fd: int | None) -> str:
    """'it is a symbolic link...' when `name` (relative to dir_fd) is one, else ''."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return ""
    return "it is a symbolic link (never followed)" if stat.S_ISLNK(st.st_mode) else ""


def _holds_manifest(dir_fd: int) -> bool:
    try:
        return stat.S_ISREG(os.stat(MANIFEST_NAME, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def regular_file_below(root: Path, path: str) -> bool:
    """Whether `path` (relative to `root`) names a regular file there now, reached without
    following a symbolic link on the way or at the end (each folder opened relative to the one
    above, O_NOFOLLOW)."""
    parts = path.split(os.sep)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        for part in parts[:-1]:
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = sub
        return stat.S_ISREG(os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
    finally:
        os.close(fd)
