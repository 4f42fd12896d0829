"""Scanning a folder: walk -> decode -> score -> plan -> apply.

Files stream through in batches, so memory does not grow with the folder. Every file ends in
one status. Deciding what to do with a file (the plan) is data; only `moves` touches files.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .. import data
from ..store.artifact import ModelBundle
from .decode import Decoded, Decoder, DecodeSettings
from .scoring import check_method, score_outputs

OOD = "ood"
CHANGED = "changed"
# Statuses of files that could not be scored; moved too unless keep_unreadable.
UNDECODABLE = (data.UNREADABLE, data.TOO_LARGE, data.UNSUPPORTED)
STATUSES = (data.OK, OOD, *UNDECODABLE, data.SKIPPED, CHANGED)


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
    method: str = "mahalanobis"  # a detector or combining rule (detectors/registry.py)
    use_cache: bool = False  # reuse results of unchanged files from earlier scans (cache.ScanCache)
    cache_dir: Path | None = None  # None: the user cache dir ($XDG_CACHE_HOME/imgclean)


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
    cached: int = 0  # results reused from the scan cache (not decoded)
    decoded: int = 0  # files decoded and scored by the model

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
            "cached": self.cached,
            "decoded": self.decoded,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.scanned / self.seconds, 1) if self.seconds > 0 else None,
            "root": self.root,
            "model": self.model,
        }


def relative_name(path: Path, root: Path) -> str:
    full, base = os.fspath(path), os.fspath(root)
    if os.path.isabs(full) and full.startswith(base.rstrip(os.sep) + os.sep) and "/.." not in full and "/./" not in full:
        return os.fsdecode(full[len(base.rstrip(os.sep)) + 1 :])  # the walk joins names onto root
    return os.fsdecode(os.path.relpath(path, root))


def is_rejected(record: ScanRecord, keep_unreadable: bool) -> bool:
    if record.status == OOD:
        return True
    return record.status in UNDECODABLE and not keep_unreadable


# Batches decoded ahead of the one being scored: decode of batch n+1 overlaps scoring of batch n.
PREFETCH_BATCHES = 2
# Records resolved without decoding (cache hits, skipped files) per yielded group, so an
# all-cached folder still streams records instead of collecting them.
MAX_GROUP = 4096


class Scorer:
    """Decodes files and scores them with a model bundle, a batch at a time.

    `scan` runs a pipeline: a walk, a thread pool decoding the next batches (Pillow releases the
    GIL while decoding), and the model scoring the current batch in the calling thread. With a
    `cache` (cache.ScanCache), unchanged files reuse their stored result and are never decoded;
    the model (and torch) is loaded only when some file needs scoring.
    """

    def __init__(
        self, bundle: ModelBundle, batch_size: int = 256, workers: int = 0, device: str = "cpu",
        method: str = "mahalanobis", cache=None,
    ):
        check_method(bundle, method)
        self.bundle = bundle
        self.method = method
        self.device = device
        self.on_cuda = str(device).startswith("cuda")
        self.batch_size = max(1, batch_size)
        self.workers = workers
        self.cache = cache
        self.settings = DecodeSettings.from_model(bundle)
        self._torch_ready = False
        self.decoded = 0  # files decoded by this scorer (cache misses)

    def _prepare_torch(self) -> None:
        if self._torch_ready:
            return
        self._torch_ready = True
        from ..nn.runtime import prepare_for_inference

        prepare_for_inference(self.bundle.model, self.device, self.bundle.config.get("arch", ""), self.bundle.input_size)

    def score_arrays(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted class index, nearest class index, score) for uint8 images."""
        from ..nn.runtime import predict_arrays

        self._prepare_torch()
        cfg = self.bundle.config
        logits, feats = predict_arrays(
            self.bundle.model, images, cfg["mean"], cfg["std"], self.device,
            batch_size=self.batch_size * (4 if self.on_cuda else 1),
        )
        return score_outputs(self.bundle, self.method, logits, feats)

    def score_entries(self, entries: list[data.FileEntry], root: Path) -> list[ScanRecord]:
        """Decode and score one batch (no cache, no overlap); `scan` is the fast path."""
        with Decoder(self.settings, self.workers) as decoder:
            return self._score_decoded(entries, decoder.decode(entries), root)

    def _score_decoded(self, entries: list[data.FileEntry], decoded: list[Decoded], root: Path) -> list[ScanRecord]:
        names = self.bundle.class_names
        self.decoded += len(entries)
        records = [
            ScanRecord(relative_name(e.path, root), d.status, message=d.message, size=e.size, mtime_ns=e.mtime_ns)
            for e, d in zip(entries, decoded, strict=True)
        ]
        good = [i for i, d in enumerate(decoded) if d.ok]
        if good:
            pred, near, score = self.score_arrays(np.stack([decoded[i].array for i in good]))
            for i, p, n, s in zip(good, pred, near, score):
                rec = records[i]
                rec.predicted, rec.nearest, rec.score = names[int(p)], names[int(n)], float(s)
                rec.status = OOD if s > 1.0 else data.OK
        if self.cache is not None:
            for e, rec in zip(entries, records):
                self.cache.put(e.path, e.size, e.mtime_ns, rec.status, rec.predicted, rec.nearest, rec.score, rec.message)
        return records

    def _cached_record(self, entry: data.FileEntry, root: Path) -> ScanRecord | None:
        if self.cache is None:
            return None
        hit = self.cache.get(entry.path, entry.size, entry.mtime_ns)
        if hit is None:
            return None
        status, predicted, nearest, score, message = hit
        if status not in STATUSES or status in (data.SKIPPED, CHANGED):
            return None
        return ScanRecord(
            relative_name(entry.path, root), status, predicted=predicted, nearest=nearest, score=score,
            message=message, size=entry.size, mtime_ns=entry.mtime_ns,
        )

    def scan(self, root: Path, exclude: Iterable[Path] = ()) -> Iterator[tuple[ScanRecord, data.FileEntry]]:
        """Yield (record, entry) for every image-named file below root, in walk order."""
        from collections import deque

        root = Path(root)
        # A group: walk-ordered slots, each (entry, record) when resolved without decoding, or
        # (entry, None) for a file whose decode is in flight in `futures`.
        pending: deque = deque()
        slots: list[tuple[data.FileEntry, ScanRecord | None]] = []
        to_decode: list[data.FileEntry] = []

        with Decoder(self.settings, self.workers) as decoder:

            def submit() -> None:
                nonlocal slots, to_decode
                pending.append((slots, to_decode, decoder.submit(to_decode)))
                slots, to_decode = [], []

            def finish() -> Iterator[tuple[ScanRecord, data.FileEntry]]:
                group, entries, in_flight = pending.popleft()
                decoded = in_flight.result()
                scored = iter(self._score_decoded(entries, decoded, root) if entries else ())
                for entry, record in group:
                    yield (record if record is not None else next(scored)), entry

            try:
                for entry in data.walk_images(root, tuple(exclude)):
                    if entry.skip_reason:
                        record = ScanRecord(relative_name(entry.path, root), data.SKIPPED, message=entry.skip_reason)
                    else:
                        record = self._cached_record(entry, root)
                        if record is None:
                            to_decode.append(entry)
                    slots.append((entry, record))
                    if len(to_decode) >= self.batch_size or len(slots) >= MAX_GROUP:
                        submit()
                        while len(pending) > PREFETCH_BATCHES or (pending and not pending[0][1]):
                            yield from finish()
                if slots:
                    submit()
                while pending:
                    yield from finish()
            finally:
                for _, _, in_flight in pending:
                    in_flight.cancel()
                if self.cache is not None:
                    self.cache.flush()


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
    """Scan `root`; reject (move, or plan to move) files per the options. Returns counts.

    `root` is resolved once (symlinks and `..` as the kernel follows them) and that one path is
    walked, checked and moved from: `sub/..` after a symlink `sub` never means two folders.
    Raises ValueError when `root` is a quarantine: a scan never reads one as data.
    """
    from ..quarantine.moves import MANIFEST_NAME, is_quarantine

    root = Path(os.path.realpath(root))
    if is_quarantine(root):
        raise ValueError(
            f"{os.fsdecode(root)} is an imgclean quarantine (it holds {MANIFEST_NAME}); scans never read one. "
            f"Review it with `imgclean report`, put files back with `imgclean restore`"
        )
    summary = ScanSummary(root=os.fsdecode(root), model=os.fsdecode(bundle.path or ""))
    cache = None
    if options.use_cache:
        from ..store.cache import ScanCache, model_key

        # The method is part of the key: a head score must never be reused as a Mahalanobis one.
        cache = ScanCache(options.cache_dir, model_key(bundle.config, extra=options.method)).open()
    scorer = Scorer(bundle, options.batch_size, options.workers, device, options.method, cache=cache)
    started = time.perf_counter()
    try:
        _consume(scorer, root, options, summary, quarantine, dry_run, on_record, should_stop)
    finally:
        if cache is not None:
            cache.close()
            summary.cached = cache.hits
        summary.decoded = scorer.decoded
    summary.seconds = time.perf_counter() - started
    return summary


def _consume(scorer, root, options, summary, quarantine, dry_run, on_record, should_stop) -> None:
    from ..quarantine.moves import MoveRequest

    for record, entry in scorer.scan(root, options.exclude):
        summary.counts[record.status] += 1
        if quarantine is not None and is_rejected(record, options.keep_unreadable):
            request = MoveRequest(
                source=entry.path,
                scan_root=root,
                reason=record.status,
                size=entry.size,
                mtime_ns=entry.mtime_ns,
                dev=entry.dev,
                ino=entry.ino,
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
