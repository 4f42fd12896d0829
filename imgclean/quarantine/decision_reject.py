"""`imgclean reject`: a person's rejection of files a scan missed, recorded as a decision, and
the files moved into a quarantine exactly as a scan moves them (journaled, restorable). The move
comes first; a file that could not be moved gets no decision.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .decision_ops import PROBLEMS, DecisionPathError, Outcome, Target, by_folder, resolve, run_lock
from .decision_records import REJECTED
from .decisions import DecisionError, DecisionWriter, new_decision, user_name
from .moves import MoveRequest, Quarantine


def reject(paths: Iterable[str | os.PathLike], move_to: str | os.PathLike, root: str | os.PathLike | None = None, *,
           source: str = "reject", dry_run: bool = False, lock_wait_s: float | None = None) -> list[Outcome]:
    """Record each file as rejected by a person and move it into the quarantine ``move_to``
    (journaled: ``imgclean restore`` puts it back). The move comes first: a file that could
    not be moved gets no decision."""
    targets = resolve(paths, root)
    quarantine = Path(os.path.abspath(move_to))
    real_q = Path(os.path.realpath(quarantine))
    for t in targets:
        if real_q == t.folder or t.folder.is_relative_to(real_q):
            raise DecisionPathError(f"--move-to {os.fsdecode(move_to)} is {os.fsdecode(t.folder)} or contains it; "
                                    "choose a quarantine outside the folder")
        if t.path.is_relative_to(real_q):
            raise DecisionPathError(f"{os.fsdecode(t.path)} is inside --move-to {os.fsdecode(move_to)} already")
    outcomes: dict[Path, Outcome] = {}
    for folder, group in by_folder(targets).items():
        if dry_run:
            q = Quarantine(quarantine)
            for t in group:
                dest = q.plan_destination(_request(t, source))
                outcomes[t.path] = Outcome(t.path, "would_reject", "dry run", destination=dest, folder=folder)
            continue
        with run_lock(folder, lock_wait_s), DecisionWriter(folder) as writer, Quarantine(quarantine) as q:
            for t in group:
                outcomes[t.path] = _reject_one(t, q, writer, source)
    return [outcomes[t.path] for t in targets]


def _request(t: Target, source: str) -> MoveRequest:
    details = {"decision": "rejected by a person", "user": user_name(os.geteuid()), "source": source}
    return MoveRequest(source=t.path, scan_root=t.folder, reason="rejected", size=t.st.st_size,
                       mtime_ns=t.st.st_mtime_ns, details=details, dev=t.st.st_dev, ino=t.st.st_ino)


def _reject_one(t: Target, q: Any, writer: DecisionWriter, source: str) -> Outcome:
    result = q.move(_request(t, source))
    if result.status != "moved":
        status = result.status if result.status in PROBLEMS else "error"
        return Outcome(t.path, status, result.message, folder=t.folder)
    move = _journaled_move(q, result.destination)
    if move is None:  # cannot happen while the quarantine's fold is kept current; never guess
        return Outcome(t.path, "error", f"moved to {result.destination}, but its journal record was not found; "
                       "no decision recorded", destination=result.destination, folder=t.folder)
    decision = new_decision(REJECTED, t.folder, t.rel, move["size"], move["sha256"], source,
                            journal=(os.fspath(q.root), move["id"]))
    try:
        return Outcome(t.path, "rejected", "", (writer.append(decision),), result.destination, t.folder)
    except DecisionError as e:
        return Outcome(t.path, "error", f"moved to {result.destination}, but the decision was not recorded: {e}",
                       destination=result.destination, folder=t.folder)


def _journaled_move(q: Any, destination: Path) -> dict | None:
    journal = getattr(q, "journal", None)
    ops = list(journal.ops.values()) if journal is not None else []
    for op in reversed(ops):
        if op["op"] == "move" and op["state"] == "done" and op["destination"] == os.fsdecode(destination):
            return op
    return None
