"""What a quarantine's review says, file by file: the rows learn() learns from (pipeline/learn/rule.py).

Read from the quarantine's journal (validated: quarantine/journal.py) and the decisions in force
for the folders it took files from (validated: quarantine/decision_views.py):

  journal: a move restored           -> "restored"  (the file is where the restore put it)
           a move still in place     -> "left"      (in the quarantine: a reject nobody decided)
           a move whose file is gone -> "deleted"   (no file to read: it teaches only through
                                                     features saved at move time)
  decisions: accepted -> "accepted" ("restored" when restore recorded it), rejected -> "rejected"
             (a decision overrides what the journal says about the same content)

One item per picture content (size, sha256). A record that fails validation is reported (in
`problems`) and never used. Nothing here opens a picture: `read_verified` reads one later,
through a descriptor (no links, no FIFOs), and only when its bytes still have the recorded
content; a changed file teaches nothing.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...fileops import is_quarantine
from .rule import LearnError

MAX_PICTURE_BYTES = 256 << 20  # a picture file larger than this is not read for learning


@dataclass(frozen=True)
class ReviewItem:
    kind: str  # one of pipeline.learn.rule.KINDS
    size: int
    sha256: str
    path: Path | None  # where the file should be now (None: gone)
    move_id: str | None = None  # the journal's move of this content (its features may be logged)


@dataclass
class QuarantineReview:
    quarantine: Path
    items: list[ReviewItem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            out[item.kind] = out.get(item.kind, 0) + 1
        return out


def _restore_destinations(journal) -> dict[str, str]:
    """move id -> where its last finished restore put the file."""
    out = {}
    for op in journal.ops.values():
        if op["op"] == "restore" and op["state"] == "done" and isinstance(op.get("destination"), str):
            out[op["move_id"]] = op["destination"]
    return out


def _same_folder(a: str, b: Path) -> bool:
    return os.path.abspath(a) == os.fspath(b) or os.path.realpath(a) == os.path.realpath(b)


def read_review(quarantine: Path) -> QuarantineReview:
    """Every file the review of `quarantine` says something about; LearnError when it is not one."""
    from ...quarantine.decision_views import decisions_of
    from ...quarantine.journal import fold

    if not Path(quarantine).is_dir() or not is_quarantine(quarantine):
        raise LearnError(f"{quarantine} is not an imgclean quarantine (no journal); give the folder scan --move-to moved files into")
    qroot = Path(os.path.abspath(quarantine))
    journal = fold(qroot)
    review = QuarantineReview(qroot, problems=[bad.message for bad in journal.invalid])
    restored_to = _restore_destinations(journal)
    by_content: dict[tuple[int, str], ReviewItem] = {}
    for op, restore in journal.moves():
        if op["state"] not in ("done", "kept_both"):
            continue  # a move that did not happen (rolled back, changed, missing) or is unfinished
        content = (int(op["size"]), op["sha256"])
        if restore == "done":
            where = restored_to.get(op["id"])
            by_content[content] = ReviewItem("restored", *content, Path(where) if where else None, op["id"])
            continue
        destination = Path(op["destination"])
        gone = not os.path.lexists(destination)
        by_content[content] = ReviewItem("deleted" if gone else "left", *content, None if gone else destination, op["id"])
    listed = decisions_of(qroot)
    review.problems += [p for p in listed.problems if p not in review.problems]
    for labelled in listed:
        d = labelled.decision
        known = by_content.get(d.content)
        if labelled.label == "accepted":
            kind = "restored" if d.source == "restore" else "accepted"
            path = labelled.path if os.path.lexists(labelled.path) else (known.path if known else None)
        else:
            kind = "rejected"
            path = labelled.quarantined or (known.path if known else None)
            if path is None and os.path.lexists(labelled.path):
                path = labelled.path
        move_id = known.move_id if known else None
        if d.journal_id is not None and d.journal_quarantine is not None and _same_folder(d.journal_quarantine, qroot):
            move_id = d.journal_id
        by_content[d.content] = ReviewItem(kind, d.size, d.sha256, path, move_id)
    review.items = list(by_content.values())
    return review


def read_verified(item: ReviewItem) -> bytes | None:
    """The file's bytes when it is a regular file (not a link) that still has the recorded
    content; None when it is gone, changed, too large or unreadable."""
    if item.path is None or item.size > MAX_PICTURE_BYTES:
        return None
    try:
        fd = os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        import stat

        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != item.size:
            return None
        chunks, total = [], 0
        while total <= item.size and (chunk := os.read(fd, min(1 << 20, item.size + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    blob = b"".join(chunks)
    return blob if len(blob) == item.size and hashlib.sha256(blob).hexdigest() == item.sha256 else None
