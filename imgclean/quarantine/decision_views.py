"""The decisions of a folder or of a quarantine, with their labels: what `imgclean decisions`
lists and what learning reads.

For a folder: the decisions in force about pictures inside it, from its own decisions file,
those of the folders below it (found the way a scan walks: no hidden folders, links or
quarantines) and those of the folders above it (only their decisions about pictures inside
it). One per picture (content): the latest. For a quarantine: the same for every folder its
journal moved files out of; a rejection recorded with a move into this quarantine also says
where the file lies in it while it is still there (not restored, not deleted).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..fileops import is_quarantine
from .decision_records import Decision
from .decisions import DecisionFile, chain, folders_below, read_folder
from .journal import fold


@dataclass(frozen=True)
class Labelled:
    """One decision in force: ``label`` accepted or rejected, about the picture ``decision``
    names, recorded in ``folder``'s decisions file."""

    label: str
    path: Path  # where the file was when decided: folder / decision.path
    decision: Decision
    folder: Path
    quarantined: Path | None = None  # a rejected file's place in the quarantine, while there

    @property
    def present(self) -> bool:
        """A file exists at ``path`` now (not checked against the decided content)."""
        return os.path.lexists(self.path)

    def to_dict(self) -> dict:
        d = self.decision
        return {
            "label": self.label, "path": os.fsdecode(self.path), "folder": os.fsdecode(self.folder),
            "size": d.size, "sha256": d.sha256, "time": d.time, "user": d.user, "uid": d.uid,
            "source": d.source, "id": d.id, "present": self.present,
            "journal": None if d.journal_id is None else {"quarantine": d.journal_quarantine, "id": d.journal_id},
            "quarantined": None if self.quarantined is None else os.fsdecode(self.quarantined),
        }  # fmt: skip


@dataclass
class LabelledDecisions:
    """``items`` oldest decision first; ``problems``: one line each for
    refused files, invalid records and invalid journal lines (none of them is in ``items``)."""

    folder: Path
    items: list[Labelled] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Labelled]:
        return iter(self.items)

    def counts(self) -> dict[str, int]:
        out = {"accepted": 0, "rejected": 0}
        for item in self.items:
            out[item.label] += 1
        return out


def decisions_of(folder: str | os.PathLike) -> LabelledDecisions:
    """The decisions in force for ``folder``: a scanned folder or a quarantine (see the module)."""
    if is_quarantine(folder):
        return _of_quarantine(Path(os.path.abspath(folder)))
    return _of_folder(Path(os.path.realpath(folder)))


def _of_folder(real: Path) -> LabelledDecisions:
    out = LabelledDecisions(real)
    files: list[DecisionFile] = [read_folder(f, warn=False) for f in (*chain(real)[::-1], *folders_below(real))]
    latest: dict[tuple[int, str], Labelled] = {}  # one per picture: the latest decision, as a scan reads them
    for file in files:
        out.problems += file.problems()
        for decision in file.log.current.values():
            where = file.folder / decision.path
            if where == real or not where.is_relative_to(real):
                continue  # an ancestor's decision about a picture elsewhere
            known = latest.get(decision.content)
            if known is None or decision.when > known.decision.when:
                latest[decision.content] = Labelled(decision.kind, where, decision, file.folder)
    out.items = sorted(latest.values(), key=lambda item: (item.decision.when, os.fsencode(item.path)))
    return out


def _of_quarantine(qroot: Path) -> LabelledDecisions:
    journal = fold(qroot)
    out = LabelledDecisions(qroot, problems=[inv.message for inv in journal.invalid])
    history = journal.moves()
    held = {op["id"]: op for op, restore in history if restore != "done" and op["state"] in ("done", "kept_both")}
    roots = sorted({op["scan_root"] for op, _ in history if os.path.isdir(op["scan_root"])})
    seen: set[tuple[Path, str]] = set()
    real_q = os.path.realpath(qroot)
    for root in roots:
        listed = _of_folder(Path(os.path.realpath(root)))
        out.problems += [p for p in listed.problems if p not in out.problems]
        for item in listed.items:
            if (item.folder, item.decision.id) in seen:
                continue
            seen.add((item.folder, item.decision.id))
            out.items.append(_with_place(item, held, real_q))
    return out


def _with_place(item: Labelled, held: dict[str, dict], real_q: str) -> Labelled:
    d = item.decision
    op = held.get(d.journal_id or "")
    if op is None or d.journal_quarantine is None or os.path.realpath(d.journal_quarantine) != real_q:
        return item
    destination = Path(op["destination"])
    if not os.path.lexists(destination):
        return item  # deleted by the reviewer: the decision still teaches, the file is gone
    return Labelled(item.label, item.path, d, item.folder, destination)
