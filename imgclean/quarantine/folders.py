"""Folders made, probed, listed and pruned for moves and restores, without recursion (a tree 1,100
levels deep, or deeper than PATH_MAX, is no special case) and, below a given root, one
descriptor at a time with O_NOFOLLOW (a symlink planted in the way is never followed)."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..fileops import step

log = logging.getLogger("imgclean.quarantine.moves")

# A folder opened for *at calls only: search rights suffice (O_PATH where the system has it).
DIR_OPEN = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC


def path_max() -> int:
    """The longest path (in bytes, with its NUL) the system resolves."""
    try:
        return int(os.pathconf("/", "PC_PATH_MAX"))
    except (OSError, ValueError):
        return 4096


def too_long(path: Path, slack: int = 0) -> bool:
    """``path`` (plus ``slack`` bytes of a numbered name) is too long to be used by name."""
    return len(os.fsencode(os.fspath(path))) + slack >= path_max()


def parts_below(root: Path, folder: Path) -> list[str]:
    """The names leading from ``root`` to ``folder`` (lexically, both made absolute); ValueError
    when ``folder`` is not inside ``root``."""
    rel = os.path.relpath(os.path.abspath(folder), os.path.abspath(root))
    if rel == os.curdir:
        return []
    names = rel.split(os.sep)
    if os.pardir in names:
        raise ValueError(f"{folder} is not inside {root}")
    return names


def write_problem(folder: Path) -> str | None:
    """Why files cannot be placed in ``folder``, or None. os.access alone is not enough: root
    passes it on chmod-555 folders, and it cannot see every read-only mount; a real probe write
    settles it before anything moves. The probe also links, since no-overwrite placement needs
    hard links (vfat/exFAT have none)."""
    if not folder.is_dir():
        return "not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        step("probe")
        fd, name = tempfile.mkstemp(prefix=".imgclean-probe-", dir=folder)
        os.close(fd)
    except OSError as e:
        return e.strerror or str(e)
    try:
        os.link(name, name + ".link")
        os.unlink(name + ".link")
    except OSError as e:
        return f"its filesystem cannot make hard links ({e.strerror or e})"
    finally:
        os.unlink(name)
    return None


def make_path(folder: Path) -> None:
    """``folder`` and its missing parents (as ``mkdir -p``, following links the user gave), with
    no recursion."""
    missing = []
    here = Path(os.path.abspath(folder))
    while not here.is_dir():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            if not path.is_dir():
                raise


def make_below(root: Path, folder: Path) -> None:
    """Create ``folder`` and every missing folder between it and ``root`` (which exists), from
    root's descriptor one name at a time: a symlink or a file in the way raises OSError (ENOTDIR),
    and nothing is created outside ``root``."""
    names = parts_below(root, folder)
    cur = os.open(root, DIR_OPEN)
    try:
        for name in names:
            try:
                nxt = os.open(name, DIR_OPEN | os.O_NOFOLLOW, dir_fd=cur)
            except FileNotFoundError:
                try:
                    os.mkdir(name, 0o777, dir_fd=cur)
                except FileExistsError:
                    pass  # made meanwhile; the open below says what it is
                nxt = os.open(name, DIR_OPEN | os.O_NOFOLLOW, dir_fd=cur)
            os.close(cur)
            cur = nxt
    finally:
        os.close(cur)


def prune_empty(root: Path, folder: Path) -> None:
    """Remove ``folder`` and each folder above it up to (not including) ``root`` while they are
    empty. Walks down from root's descriptor recording each folder's identity, then up through
    ``..``, stopping where a parent is not the folder met on the way down (moved meanwhile)."""
    try:
        names = parts_below(root, folder)
    except ValueError:
        return
    if not names:
        return
    try:
        cur = os.open(root, DIR_OPEN)
    except OSError:
        return
    ids = [_identity(cur)]
    try:
        for name in names:
            nxt = os.open(name, DIR_OPEN | os.O_NOFOLLOW, dir_fd=cur)
            os.close(cur)
            cur = nxt
            ids.append(_identity(cur))
        for depth in range(len(names), 0, -1):
            parent = os.open("..", DIR_OPEN, dir_fd=cur)
            os.close(cur)
            cur = parent
            if _identity(cur) != ids[depth - 1]:
                return
            os.rmdir(names[depth - 1], dir_fd=cur)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
            log.debug("stopped pruning empty folders below %s: %s", root, e)
    finally:
        os.close(cur)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def walk(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """(folder, sub-folder names, other names) top-down, as os.walk without following links
    (a link to a folder counts as another name), but with a stack instead of recursion."""
    stack = [os.fspath(root)]
    while stack:
        top = stack.pop()
        dirs, others = [], []
        try:
            with os.scandir(top) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    (dirs if is_dir else others).append(entry.name)
        except OSError as e:
            log.warning("cannot list %s: %s", top, e.strerror or e)
            continue
        yield top, dirs, others
        stack.extend(os.path.join(top, d) for d in reversed(sorted(dirs)))
