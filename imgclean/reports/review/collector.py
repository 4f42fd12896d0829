"""What the review page shows, collected from a stream of scan records in bounded memory."""
from __future__ import annotations

import heapq
import math
import os
from array import array
from dataclasses import dataclass
from typing import Any, Mapping
from ...errors import ImgcleanError
from ..records import ScanRecord

# Sections of listed files, in page order: the rejected ones; "changed" files were rejected but
# left in place; "accepted" ones the scan would reject but a person accepted (left in place).
REASONS = ("ood", "unreadable", "too_large", "unsupported")
SECTIONS = (*REASONS, "changed", "accepted")
SECTION_TITLES = {
    "ood": "Out of distribution",
    "unreadable": "Unreadable",
    "too_large": "Too large",
    "unsupported": "Unsupported format",
    "changed": "Changed before it could be moved (left in place)",
    "accepted": "Accepted by a person (left in place)",
}
STATUS_ORDER = ("ok", "accepted", *REASONS, "skipped", "changed")

DEFAULT_MAX_ROWS = 5000  # per section; the rest are counted, and the --report file has them all
DEFAULT_BORDERLINE = 50  # accepted files with the highest scores, to catch misses


class ReviewInputError(ImgcleanError, ValueError):
    """An input file is missing, unreadable or not an imgclean report / manifest."""


@dataclass
class ReviewItem(ScanRecord):
    """One listed file as the page shows it: a scan record (its `path` as shown: relative to
    the scanned folder when known) and where the file is now."""

    location: str | None = None  # where the file is now (for its thumbnail); None: unknown
    quarantine: str | None = None  # the quarantine holding `destination`, when known
    root: str | None = None  # the scanned folder `path` is relative to, when known (for commands)
    checked: bool = False  # came from a validated source (a scan, a report row, a journal record): commands may name it


def _get(record: Any, key: str, default: Any = None) -> Any:
    if isinstance(record, Mapping):
        return record.get(key, default)
    return getattr(record, key, default)


def _score(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ReviewInputError(f"score {value!r} is not a number") from None
    return None if math.isnan(f) else f


def _str_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


class ReviewCollector:
    """Collects what the review page needs from a stream of scan records, in bounded memory.

    `root`: the scanned folder, to find files that were not moved (their `path` is relative to
    it). Without it only moved files get thumbnails. `quarantine`: the --move-to folder, for
    the restore commands (found from each destination's manifest when not given). Keeps, per
    section, the `max_rows` rows with the highest scores (ood) or the first ones (others), and
    the `borderline` accepted files with the highest scores; the rest are only counted.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        quarantine: str | os.PathLike | None = None,
        borderline: int = DEFAULT_BORDERLINE,
    ):
        self.root = os.fsdecode(root) if root is not None else None
        # The folder the decision commands name (accept, reject): root, or the one a trusted report records.
        self.command_root = self.root
        self.quarantine = os.path.abspath(os.fspath(quarantine)) if quarantine is not None else None
        self.max_rows = max(0, int(max_rows))
        self.max_borderline = max(0, int(borderline))
        self.counts: dict[str, int] = {}
        self.actions: dict[str, int] = {}
        self.class_scores: dict[str, array] = {}
        self.omitted: dict[str, int] = {s: 0 for s in SECTIONS}
        self._rows: dict[str, list] = {s: [] for s in SECTIONS}
        self._borderline: list = []
        self._sample: list[ReviewItem] = []  # files kept by the scan that it chose for review (record.review)
        self.omitted_sample = 0
        self._seq = 0
        self._quarantine_of: dict[str, str | None] = {}
        self._counting = True  # add() counts the record (add_sample does not: it was counted as it streamed)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, record: Any) -> None:
        """Take one record: a ScanRecord (from a scan or a validated report row), or a mapping
        with the --report fields (a journal's move: `checked` says whether it was validated)."""
        status = str(_get(record, "status") or "")
        if not status:
            raise ReviewInputError("a record has no status")
        score = _score(_get(record, "score"))
        nearest = _str_or_none(_get(record, "nearest"))
        action = str(_get(record, "action") or "")
        if self._counting:
            self.counts[status] = self.counts.get(status, 0) + 1
            if action:
                self.actions[action] = self.actions.get(action, 0) + 1
            if score is not None and nearest is not None:
                self.class_scores.setdefault(nearest, array("d")).append(score)
        sample = status == "ok" and bool(_get(record, "review"))
        borderline = status == "ok" and not sample and score is not None and self.max_borderline > 0
        if status not in SECTIONS and not borderline and not sample:
            return
        if borderline and len(self._borderline) >= self.max_borderline and score <= self._borderline[0][0]:
            return  # not among the highest: skip building the item
        if sample and len(self._sample) >= self.max_rows:
            self.omitted_sample += 1
            return
        path = str(_get(record, "path") or "")
        destination = _str_or_none(_get(record, "destination"))
        location = _get(record, "location")
        if location is None:
            if action == "moved" and destination and os.path.isabs(destination):
                location = destination
            elif self.root is not None and path:
                location = os.path.join(self.root, path)
            elif path and os.path.isabs(path):
                location = path
        item = ReviewItem(
            path=path, status=status, predicted=_str_or_none(_get(record, "predicted")), nearest=nearest,
            score=score, action=action, destination=destination,
            message=str(_get(record, "message") or ""), review=str(_get(record, "review") or ""), location=location,
            quarantine=_str_or_none(_get(record, "quarantine")) or self.quarantine,
            root=_str_or_none(_get(record, "root")) or self.command_root,
            checked=isinstance(record, ScanRecord) or _get(record, "checked") is True,
        )
        if sample:
            self._sample.append(item)
        elif borderline:
            self._seq += 1
            entry = (score, -self._seq, item)  # min-heap: the lowest score (latest on ties) goes first
            if len(self._borderline) < self.max_borderline:
                heapq.heappush(self._borderline, entry)
            else:
                heapq.heapreplace(self._borderline, entry)
        else:
            self._keep(status, item)

    def add_sample(self, record: Any) -> None:
        """A record the scan chose for its review sample after the records streamed (its
        `review` says why; pipeline/scan/sample_pass.py): shown in the sample, not counted again, and
        no longer among the borderline files."""
        path = str(_get(record, "path") or "")
        kept = [e for e in self._borderline if e[2].path != path]
        if len(kept) != len(self._borderline):
            heapq.heapify(kept)
            self._borderline = kept
        self._counting = False
        try:
            self.add(record)
        finally:
            self._counting = True

    def _keep(self, section: str, item: ReviewItem) -> None:
        rows = self._rows[section]
        self._seq += 1
        if item.score is not None or section == "ood":
            # min-heap on (score, -seq): the lowest score (latest on ties) is the one to drop
            entry = (item.score if item.score is not None else -math.inf, -self._seq, item)
            if len(rows) < self.max_rows:
                heapq.heappush(rows, entry)
            elif self.max_rows and entry[:2] > rows[0][:2]:
                heapq.heapreplace(rows, entry)
                self.omitted[section] += 1
            else:
                self.omitted[section] += 1
        elif len(rows) < self.max_rows:
            rows.append((None, -self._seq, item))
        else:
            self.omitted[section] += 1

    @staticmethod
    def _sorted(entries: list) -> list[ReviewItem]:
        def key(e):
            return (0 if e[0] is not None else 1, -(e[0] if e[0] is not None else 0.0), -e[1])

        return [e[2] for e in sorted(entries, key=key)]

    def rows(self, section: str) -> list[ReviewItem]:
        """The kept rows of a section: highest score first, then in arrival order."""
        return self._sorted(self._rows[section])

    def borderline(self) -> list[ReviewItem]:
        """The accepted files with the highest scores, highest first."""
        return self._sorted(self._borderline)

    def sample(self) -> list[ReviewItem]:
        """The files the scan kept and chose for review (their `review` says why), in scan order."""
        return list(self._sample)

    def section_count(self, section: str) -> int:
        return self.counts.get(section, 0)

    def quarantine_for(self, item: ReviewItem) -> str | None:
        """The quarantine holding a moved item: given, or the nearest folder above it with a manifest."""
        if item.quarantine is not None:
            return item.quarantine
        if not item.destination or not os.path.isabs(item.destination):
            return None
        from ...quarantine.moves import is_quarantine

        folder = os.path.dirname(item.destination)
        seen = []
        while folder not in self._quarantine_of:
            seen.append(folder)
            parent = os.path.dirname(folder)
            if is_quarantine(folder):
                self._quarantine_of[folder] = folder
                break
            if parent == folder:
                self._quarantine_of[folder] = None
                break
            folder = parent
        found = self._quarantine_of[folder]
        for f in seen:
            self._quarantine_of[f] = found
        return found
