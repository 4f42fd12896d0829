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
        self._files: dict[Path, DecisionFile] = {}
        self._sizes: dict[Path, set[int]] = {}  # per folder: sizes of the pictures accepted there
        self.hashed = 0  # files hashed so far (for tests and benchmarks)
        for folder in (self.root, *self.root.parents):
            self._file(folder)

    def _file(self, folder: Path) -> DecisionFile:
        found = self._files.get(folder)
        if found is None:
            found = self._files[folder] = read_folder(folder)
            self._sizes[folder] = found.log.accepted_sizes()
        return found

    def problems(self) -> list[str]:
        """Every refused file and invalid record met so far, one line each (for the run's report)."""
        return [line for f in self._files.values() for line in f.problems()]

    def accepted(self, path: str | os.PathLike, size: int, mtime_ns: int, dev: int | None = None,
                 ino: int | None = None) -> Acceptance | None:
        """The acceptance in force for the file at ``path`` (relative to the root) if it is the
        file described (size, mtime_ns; ino and dev when given) and its content was accepted;
        else None. Never raises for a file that is gone, changed or unreadable (None)."""
        rel = Path(os.fsdecode(path))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            return None
        folders = [self.root.joinpath(*rel.parts[:i]) for i in range(len(rel.parts) - 1, 0, -1)]
        files = [self._file(f) for f in folders] + [self._files[f] for f in (self.root, *self.root.parents)]
        if not any(size in self._sizes[f.folder] for f in files):
            return None
        sha = self._sha256(self.root / rel, size, mtime_ns, dev, ino)
        if sha is None:
            return None
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
