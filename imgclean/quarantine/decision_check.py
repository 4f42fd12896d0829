"""The scan's question: did a person accept this exact file? (see :mod:`imgclean.quarantine.decisions`)

One :class:`AcceptedFiles` per run, made for the scanned folder, asked once per record the run
would reject. It reads the decisions files of the scanned folder and of every folder above it
at once, and those of the folders inside it the first time a record from there is asked about
(each file once per run). A file is hashed only when some acceptance in force is about a
picture of exactly its size; otherwise the answer costs a few dictionary lookups. The answer
is yes only when the file still is what the record describes (size, mtime, inode, device) and
its sha256 is that of a picture whose latest decision in force is an acceptance.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..fileops import sha256_fd
from .decision_records import ACCEPTED, Decision
from .decisions import DecisionFile, read_folder


@dataclass(frozen=True)
class Acceptance:
    """A person accepted the file: ``decision`` as recorded in ``folder``'s decisions file."""

    decision: Decision
    folder: Path

    @property
    def message(self) -> str:
        d = self.decision
        return f"accepted by {d.user} on {d.time[:10]} ({d.source}); left in place"


class AcceptedFiles:
    """Which files of the scanned folder ``root`` a person accepted; load once per run."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(os.path.realpath(root))
        self._read: dict[Path, DecisionFile] = {}  # every decisions file read, by folder
        self._accepted: dict[Path, frozenset[int]] = {}  # by folder: sizes of the pictures accepted there
        # Per folder of the tree (relative to root; "" is root): the files with decisions that
        # apply there, nearest first, and the sizes of the pictures they accept.
        self._chains: dict[str, tuple[DecisionFile, ...]] = {}
        self._sizes: dict[str, frozenset[int]] = {}
        self.hashed = 0  # files hashed so far (for tests and benchmarks)
        self._remember("", [self._file(f) for f in (self.root, *self.root.parents)])

    def _file(self, folder: Path) -> DecisionFile:
        found = self._read.get(folder)
        if found is None:
            found = self._read[folder] = read_folder(folder)
            self._accepted[folder] = frozenset(found.log.accepted_sizes())
        return found

    def _remember(self, reldir: str, files: list[DecisionFile]) -> None:
        useful = tuple(f for f in files if f.log.current)
        self._chains[reldir] = useful
        sizes = [self._accepted[f.folder] for f in useful if self._accepted[f.folder]]
        self._sizes[reldir] = sizes[0] if len(sizes) == 1 else frozenset().union(*sizes)

    def _chain_of(self, reldir: str) -> str | None:
        """Make sure ``reldir`` (a folder inside root) has its chain; None when it is no such folder."""
        missing = []
        while reldir not in self._chains:
            name = os.path.basename(reldir)
            if not name or name in (".", "..") or os.path.isabs(reldir):
                return None
            missing.append(reldir)
            reldir = os.path.dirname(reldir)
        for folder in reversed(missing):  # from the outermost down: each extends its parent's chain
            parent = self._chains[os.path.dirname(folder)]
            self._remember(folder, [self._file(self.root / folder), *parent])
        return missing[0] if missing else reldir

    def problems(self) -> list[str]:
        """Every refused file and invalid record met so far, one line each (for the run's report)."""
        return [line for f in self._read.values() for line in f.problems()]

    def accepted(self, path: str | os.PathLike, size: int, mtime_ns: int, dev: int | None = None,
                 ino: int | None = None) -> Acceptance | None:
        """The acceptance in force for the file at ``path`` (relative to the root) if it is the
        file described (size, mtime_ns; ino and dev when given) and its content was accepted;
        else None. Never raises for a file that is gone, changed or unreadable (None)."""
        path = os.fsdecode(path)
        reldir = os.path.dirname(path)
        if reldir not in self._sizes and self._chain_of(reldir) is None:
            return None
        if size not in self._sizes[reldir] or not os.path.basename(path) or os.path.basename(path) in (".", ".."):
            return None  # no acceptance of a picture of this size applies here: nothing to hash
        sha = self._sha256(self.root / path, size, mtime_ns, dev, ino)
        if sha is None:
            return None
        files = self._chains[reldir]
        found = [(f.log.current[(size, sha)], i, f.folder) for i, f in enumerate(files) if (size, sha) in f.log.current]
        if not found:
            return None
        # The latest decision wins; between two made at the same instant, the nearer folder's.
        decision, _, folder = max(found, key=lambda c: (c[0].when, -c[1]))
        return Acceptance(decision, folder) if decision.kind == ACCEPTED else None

    def _sha256(self, path: Path, size: int, mtime_ns: int, dev: int | None, ino: int | None) -> str | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if not self._described(os.fstat(fd), size, mtime_ns, dev, ino):
                return None
            self.hashed += 1
            digest = sha256_fd(fd)
            return digest if self._described(os.fstat(fd), size, mtime_ns, dev, ino) else None
        except OSError:
            return None
        finally:
            os.close(fd)

    @staticmethod
    def _described(st: os.stat_result, size: int, mtime_ns: int, dev: int | None, ino: int | None) -> bool:
        return (stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (size, mtime_ns)
                and ino in (None, st.st_ino) and dev in (None, st.st_dev))
