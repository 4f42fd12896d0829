"""Scanning a folder: walk -> decode -> score -> plan -> apply.

Files stream through in batches, so memory does not grow with the folder. Every file ends in
one status. Deciding what to do with a file (the plan) is data; only `moves` touches files.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from . import data
from .artifact import ModelBundle

OOD = "ood"
CHANGED = "changed"
# Statuses of files that could not be scored; moved too unless keep_unreadable.
UNDECODABLE = (data.UNREADABLE, data.TOO_LARGE, data.UNSUPPORTED)
STATUSES = (data.OK, OOD, *UNDECODABLE, data.SKIPPED, CHANGED)
# Which detector decides: the Mahalanobis thresholds (default), the supervised head, or both
# (rejected when either rejects; the score is the larger of the two normalised scores).
METHODS = ("mahalanobis", "head", "both")


@dataclass
class ScanRecord:
    """One file's outcome. `score`: higher = more out-of-distribution, > 1 = rejected."""

    path: str  # relative to the scanned folder
    status: str
    predicted: str | None = None
    nearest: str | None = None
    score: float | None = None
    message: str = ""
    action: str = ""  # "", "moved", "would move", "kept", "changed", "missing", "move failed"
    destination: str | None = None
    size: int = 0
    mtime_ns: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScanOptions:
    batch_size: int = 256
    workers: int = 0  # decode threads; 0 = one per CPU core
    keep_unreadable: bool = False  # leave unreadable/too_large/unsupported files in place
    exclude: tuple[Path, ...] = ()
    method: str = "mahalanobis"  # one of METHODS


@dataclass
class ScanSummary:
    root: str
    model: str
    counts: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STATUSES})
    moved: int = 0
    would_move: int = 0
    move_errors: int = 0
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def scanned(self) -> int:
        return sum(self.counts.values())

    @property
    def rejected(self) -> int:
        return self.counts[OOD] + sum(self.counts[s] for s in UNDECODABLE)

    def to_dict(self) -> dict:
        c = self.counts
        return {
            "scanned": self.scanned,
            "ok": c[data.OK],
            "ood": c[OOD],
            "unreadable": c[data.UNREADABLE],
            "too_large": c[data.TOO_LARGE],
            "unsupported": c[data.UNSUPPORTED],
            "skipped": c[data.SKIPPED],
            "changed": c[CHANGED],
            "rejected": self.rejected,
            "moved": self.moved,
            "would_move": self.would_move,
            "move_errors": self.move_errors,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.scanned / self.seconds, 1) if self.seconds > 0 else None,
            "root": self.root,
            "model": self.model,
        }


def relative_name(path: Path, root: Path) -> str:
    return os.fsdecode(os.path.relpath(path, root))


def check_method(bundle: ModelBundle, method: str) -> None:
    """ValueError when `method` is unknown or needs a head the model does not have."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "mahalanobis" and bundle.head is None:
        where = f" {os.fsdecode(bundle.path)}" if bundle.path else ""
        raise ValueError(
            f"the model{where} has no supervised head, which --method {method} needs; "
            f"add one with `imgclean fit-head --reject-dir DIR -m MODEL`"
        )


def is_rejected(record: ScanRecord, keep_unreadable: bool) -> bool:
    if record.status == OOD:
        return True
    return record.status in UNDECODABLE and not keep_unreadable


class Scorer:
    """Decodes files and scores them with a model bundle, a batch at a time."""

    def __init__(
        self, bundle: ModelBundle, batch_size: int = 256, workers: int = 0, device: str = "cpu", method: str = "mahalanobis"
    ):
        check_method(bundle, method)
        self.bundle = bundle
        self.method = method
        self.batch_size = max(1, batch_size)
        self.workers = workers or (os.cpu_count() or 1)
        self.device = device

    def _decode(self, entry: data.FileEntry) -> tuple[np.ndarray | None, str, str]:
        try:
            return data.decode_image(entry.path, self.bundle.input_size, self.bundle.channels), data.OK, ""
        except data.DecodeError as exc:
            return None, exc.status, str(exc)

    def score_arrays(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted class index, nearest class index, score) for uint8 images."""
        from .training import predict_arrays

        cfg = self.bundle.config
        logits, feats = predict_arrays(
            self.bundle.model, images, cfg["mean"], cfg["std"], self.device, batch_size=self.batch_size
        )
        det = self.bundle.detector
        ratios = det.distances(feats) / det.thresholds_
        score = ratios.min(1)
        if self.method != "mahalanobis":
            head_score = self.bundle.head.normalised_score(feats)
            score = head_score if self.method == "head" else np.maximum(score, head_score)
        return logits.argmax(1), ratios.argmin(1), score

    def score_entries(self, entries: list[data.FileEntry], root: Path) -> list[ScanRecord]:
        names = self.bundle.class_names
        with ThreadPoolExecutor(self.workers) as pool:
            decoded = list(pool.map(self._decode, entries))
        records = [
            ScanRecord(relative_name(e.path, root), status, message=msg, size=e.size, mtime_ns=e.mtime_ns)
            for e, (_, status, msg) in zip(entries, decoded)
        ]
        good = [i for i, (arr, _, _) in enumerate(decoded) if arr is not None]
        if good:
            pred, near, score = self.score_arrays(np.stack([decoded[i][0] for i in good]))
            for i, p, n, s in zip(good, pred, near, score):
                rec = records[i]
                rec.predicted, rec.nearest, rec.score = names[int(p)], names[int(n)], float(s)
                rec.status = OOD if s > 1.0 else data.OK
        return records

    def scan(self, root: Path, exclude: Iterable[Path] = ()) -> Iterator[tuple[ScanRecord, data.FileEntry]]:
        """Yield (record, entry) for every image-named file below root, in walk order."""
        root = Path(root)
        batch: list[data.FileEntry] = []
        for entry in data.walk_images(root, tuple(exclude)):
            if entry.skip_reason:
                yield from self._flush(batch, root)
                batch = []
                rec = ScanRecord(relative_name(entry.path, root), data.SKIPPED, message=entry.skip_reason)
                yield rec, entry
                continue
            batch.append(entry)
            if len(batch) >= self.batch_size:
                yield from self._flush(batch, root)
                batch = []
        yield from self._flush(batch, root)

    def _flush(self, batch: list[data.FileEntry], root: Path) -> Iterator[tuple[ScanRecord, data.FileEntry]]:
        if batch:
            yield from zip(self.score_entries(batch, root), batch)


def run_scan(
    root: Path,
    bundle: ModelBundle,
    options: ScanOptions,
    quarantine=None,  # moves.Quarantine opened by the caller, or None to only report
    dry_run: bool = False,
    device: str = "cpu",
    on_record: Callable[[ScanRecord], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> ScanSummary:
    """Scan `root`; reject (move, or plan to move) files per the options. Returns counts."""
    from .moves import MoveRequest

    root = Path(root).absolute()
    summary = ScanSummary(root=os.fsdecode(root), model=os.fsdecode(bundle.path or ""))
    scorer = Scorer(bundle, options.batch_size, options.workers, device, options.method)
    started = time.perf_counter()
    for record, entry in scorer.scan(root, options.exclude):
        summary.counts[record.status] += 1
        if quarantine is not None and is_rejected(record, options.keep_unreadable):
            request = MoveRequest(
                source=entry.path,
                scan_root=root,
                reason=record.status,
                size=entry.size,
                mtime_ns=entry.mtime_ns,
                details={k: v for k, v in record.to_dict().items() if k in ("predicted", "nearest", "score", "message")},
            )
            if dry_run:
                record.action = "would move"
                record.destination = os.fsdecode(quarantine.plan_destination(request))
                summary.would_move += 1
            else:
                result = quarantine.move(request)
                if result.status == "moved":
                    record.action = "moved"
                    record.destination = os.fsdecode(result.destination)
                    summary.moved += 1
                elif result.status in (CHANGED, "missing"):
                    record.action = result.status
                    record.message = result.message or "changed after it was scored; left in place"
                    summary.counts[record.status] -= 1
                    summary.counts[CHANGED] += 1
                    record.status = CHANGED
                else:
                    record.action = "move failed"
                    record.message = result.message
                    summary.move_errors += 1
        if on_record is not None:
            on_record(record)
        if should_stop():
            summary.interrupted = True
            break
    summary.seconds = time.perf_counter() - started
    return summary
