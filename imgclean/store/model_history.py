"""Versions of a model directory: what `imgclean learn` replaced, kept so `--rollback` can undo it.

    model/                 the current version (what scan loads: cron needs no flag change)
      versions/<n>/        each replaced version, its files byte for byte (config.json unchanged,
                           so the same fingerprint), n = 1, 2, ... oldest first
      versions/.lock       held (flock) by whoever adds or removes a version

`keep(model)` copies the current version's files into versions/<n+1>/ (written beside, then
renamed into place) before a new version replaces it; `rollback(model)` puts the newest kept
version back in place of the current one with the same atomic swap artifact.save_model uses, and
then removes it from versions/. Everything else in the model directory (versions/ included) is
carried into the directory that replaces it (store/model_carry.py). Every file is read through
one descriptor of its directory (no links, no FIFOs) and checked against the fingerprint before
it is copied or installed: a damaged version is refused in one line, never installed.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from .artifact import (
    CONFIG_FILE, ModelError, fingerprint_of, fsync_dir, new_name, read_model_files,
    replace_directory, write_new,
)
from .model_files import parse_config

VERSIONS_DIR = "versions"
LOCK_NAME = ".lock"
_NUMBER = re.compile(r"[1-9][0-9]{0,8}")


@dataclass(frozen=True)
class Version:
    """One kept version: its number, folder and config (None, with `problem`, when unreadable)."""

    number: int
    path: Path
    config: dict | None
    problem: str | None = None

    @property
    def fingerprint(self) -> str | None:
        return None if self.config is None else self.config.get("fingerprint")

    def summary(self) -> dict:
        """What `info` lists: when it was saved, its default method and what it learned from."""
        config = self.config or {}
        learned = config.get("learned") if isinstance(config.get("learned"), dict) else {}
        return {"version": self.number, "created_at": config.get("created_at"),
                "fingerprint": self.fingerprint, "default_method": config.get("default_method") or "mahalanobis",
                "decisions": learned.get("decisions"), "problem": self.problem}


def verified_files(path: Path) -> dict[str, bytes]:
    """name -> bytes of a model directory's files, checked against its fingerprint; ModelError if not."""
    blobs = read_model_files(path)
    config = parse_config(blobs[CONFIG_FILE], os.fspath(Path(path) / CONFIG_FILE))
    digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items() if name != CONFIG_FILE}
    if fingerprint_of(digests) != config.get("fingerprint"):
        raise ModelError(f"{path}: its files do not match the fingerprint in {CONFIG_FILE}; not used as a version")
    return blobs


def versions(model: Path) -> list[Version]:
    """The kept versions, oldest first; an unreadable one is listed with its problem."""
    folder = Path(model) / VERSIONS_DIR
    try:
        names = [n for n in os.listdir(folder) if _NUMBER.fullmatch(n)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in sorted(names, key=int):
        path = folder / name
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise ModelError(f"{path} is not a folder (a link or a file); not used as a version")
            blobs = read_model_files(path)
            out.append(Version(int(name), path, parse_config(blobs[CONFIG_FILE], os.fspath(path / CONFIG_FILE))))
        except (ModelError, OSError, ValueError) as exc:
            out.append(Version(int(name), path, None, str(exc)))
    return out


@contextlib.contextmanager
def locked(model: Path):
    """Hold versions/.lock (created if need be): one learn or rollback at a time per model.
    The lock file is carried into a replacing directory as a hard link, so it stays one inode."""
    folder = Path(model) / VERSIONS_DIR
    try:
        os.mkdir(folder, 0o777)
    except FileExistsError:
        pass
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=dfd)
    finally:
        os.close(dfd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ModelError(f"another `imgclean learn` is changing {model}; try again when it is done") from None
            raise
        yield
    finally:
        os.close(fd)


def keep(model: Path) -> int:
    """Copy the current version into versions/<n>/ and return n (the newest kept one when it is
    already this version: a learn interrupted after keeping it). The caller holds `locked`."""
    model = Path(model)
    blobs = verified_files(model)
    fingerprint = parse_config(blobs[CONFIG_FILE], os.fspath(model / CONFIG_FILE)).get("fingerprint")
    kept = versions(model)
    if kept and kept[-1].config is not None and kept[-1].fingerprint == fingerprint \
            and _same_files(kept[-1].path, blobs):
        return kept[-1].number
    number = (kept[-1].number if kept else 0) + 1
    folder = model / VERSIONS_DIR
    tmp = new_name(folder, f".{number}.tmp-", create=True)
    try:
        for name, blob in blobs.items():
            write_new(tmp / name, blob)
        fsync_dir(tmp)
        os.rename(tmp, folder / str(number))
        fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return number


def _same_files(path: Path, blobs: dict[str, bytes]) -> bool:
    try:
        return read_model_files(path) == blobs
    except (ModelError, OSError, ValueError):
        return False


def install(model: Path, blobs: dict[str, bytes]) -> None:
    """Replace the model directory by these files, atomically (artifact.replace_directory, as
    save_model does)."""
    replace_directory(Path(model).absolute(), blobs)


def rollback(model: Path) -> Version:
    """Put the newest kept version back in place, byte for byte; returns it. The caller holds
    `locked`. ModelError when there is none, or it is damaged (then nothing changes)."""
    model = Path(model)
    kept = versions(model)
    if not kept:
        raise ModelError(f"{model} has no earlier version to roll back to (`imgclean learn` keeps one each time it saves)")
    newest = kept[-1]
    if newest.problem is not None:
        raise ModelError(f"version {newest.number} cannot be put back: {newest.problem}")
    blobs = verified_files(newest.path)  # a damaged version is refused before anything changes
    install(model, blobs)
    shutil.rmtree(model / VERSIONS_DIR / str(newest.number))  # the carried copy: hard links of the kept files
    fsync_dir(model / VERSIONS_DIR)
    return newest
