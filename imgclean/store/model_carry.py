"""Carrying what imgclean did not write from a model directory into the one that replaces it.

A model directory may hold a user's notes, or the plots/ that `evaluate --plots` writes. When a
save replaces the directory, every such entry is hard-linked into the new one before the swap
(the same inode: nothing is copied, and the old directory still holds it until the swap is
done), or copied where a link is refused. Afterwards only imgclean's own files and the names
whose inode is still the carried one are removed from the old directory; anything that appeared
meanwhile stays there, and the directory with it.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
from dataclasses import dataclass

from ..fileops import fsync_dir
from .model_files import OWN_FILES, ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Carried:
    rel: str  # path relative to the model directory
    st: os.stat_result  # lstat of the original when carried
    linked: bool  # hard link (same inode) rather than a copy


def _own(name: str, st: os.stat_result) -> bool:
    return name in OWN_FILES and stat.S_ISREG(st.st_mode)


def carry_foreign(old, new) -> list[Carried]:
    """Link or copy every entry of `old` that imgclean did not write into `new` (children first).

    Raises ModelError naming the entries that cannot be carried (another filesystem mounted
    inside, an unreadable folder, a special file that cannot be linked); `new` may then hold
    part of them, as links or copies, and is the caller's to remove.
    """
    old, new = os.fspath(old), os.fspath(new)
    device = os.lstat(old).st_dev
    carried: list[Carried] = []
    problems: list[str] = []

    def walk(src: str, dst: str, rel: str) -> None:
        try:
            with os.scandir(src) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            problems.append(f"{rel or '.'}/ ({exc.strerror})")
            return
        for entry in entries:
            r, s, d = os.path.join(rel, entry.name), entry.path, os.path.join(dst, entry.name)
            st = entry.stat(follow_symlinks=False)
            if not rel and _own(entry.name, st):
                continue
            if stat.S_ISDIR(st.st_mode):
                if st.st_dev != device:
                    problems.append(f"{r}/ (another filesystem is mounted there)")
                    continue
                os.mkdir(d, 0o700)
                walk(s, d, r)
                os.chmod(d, stat.S_IMODE(st.st_mode))
                os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
                fsync_dir(d)
                carried.append(Carried(r, st, linked=False))
                continue
            try:
                os.link(s, d, follow_symlinks=False)
                carried.append(Carried(r, st, linked=True))
            except OSError as exc:
                if not stat.S_ISREG(st.st_mode):
                    problems.append(f"{r} ({exc.strerror})")
                    continue
                try:
                    shutil.copy2(s, d, follow_symlinks=False)
                    fd = os.open(d, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    carried.append(Carried(r, st, linked=False))
                except OSError as exc2:
                    problems.append(f"{r} ({exc2.strerror})")

    walk(old, new, "")
    if problems:
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ModelError(
            f"{old} holds files imgclean did not write and cannot carry over to the new model: "
            f"{', '.join(problems[:5])}{more}; move them out of the folder and try again"
        )
    return carried


def _unchanged(c: Carried, st: os.stat_result) -> bool:
    same = (st.st_dev, st.st_ino) == (c.st.st_dev, c.st.st_ino)
    if c.linked:
        return same  # the new directory holds this very inode
    return same and (st.st_size, st.st_mtime_ns) == (c.st.st_size, c.st.st_mtime_ns)


def clear_backup(old, carried: list[Carried]) -> bool:
    """Remove the replaced directory: imgclean's files, and the carried names still unchanged.

    Returns False (and keeps the directory) when something else is left in it.
    """
    old = os.fspath(old)
    for name in OWN_FILES:
        path = os.path.join(old, name)
        try:
            if _own(name, os.lstat(path)):
                os.unlink(path)
        except FileNotFoundError:
            pass
    for c in carried:  # children come before their folders
        path = os.path.join(old, c.rel)
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(c.st.st_mode) and stat.S_ISDIR(st.st_mode):
                os.rmdir(path)  # fails, harmlessly, if something new is inside
            elif not stat.S_ISDIR(st.st_mode) and _unchanged(c, st):
                os.unlink(path)
        except OSError:
            pass
    try:
        os.rmdir(old)
        return True
    except OSError:
        left = sorted(os.listdir(old)) if os.path.isdir(old) else []
        log.warning("kept %s: it holds %s, which appeared while the model was being saved", old, ", ".join(left[:5]))
        return False
