"""Scanning a folder: walk -> decode -> score -> records; then each record is applied.

Files stream through in batches, so memory does not grow with the folder. Every file ends in
one record (reports/records.py) with one status and the identity the file had when scored;
applying records (pipeline/apply.py: the moves, or the plan of a dry run) is a separate step
that `imgclean apply` also runs on a saved report. Only quarantine.moves touches files.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .. import data
from ..errors import ImgcleanError
from ..reports.records import (  # noqa: F401  (re-exported: the record type and statuses used to live here)
    CHANGED, OOD, STATUSES, UNDECODABLE, ScanRecord, is_rejected,
)
from ..store.artifact import ModelBundle
from .apply import Applier, ScanSummary
from .decode import Decoded, Decoder, DecodeSettings
from .scoring import check_method, score_outputs



class ScanError(ImgcleanError, ValueError):
    """A folder cannot be scanned (it is a quarantine)."""


@dataclass
class ScanOptions:
    batch_size: int = 256
    workers: int = 0  # decode threads; 0 = one per CPU core
    keep_unreadable: bool = False  # leave unreadable/too_large/unsupported files in place
    exclude: tuple[Path, ...] = ()
    method: str = "mahalanobis"  # a detector or combining rule (detectors/registry.py)
    use_cache: bool = False  # reuse results of unchanged files from earlier scans (cache.ScanCache)
    cache_dir: Path | None = None  # None: the user cache dir ($XDG_CACHE_HOME/imgclean)


def relative_name(path: Path, root: Path) -> str:
    full, base = os.fspath(path), os.fspath(root)
    if os.path.isabs(full) and full.startswith(base.rstrip(os.sep) + os.sep) and "/.." not in full and "/./" not in full:
        return os.fsdecode(full[len(base.rstrip(os.sep)) + 1 :])  # the walk joins names onto root
    return os.fsdecode(os.path.relpath(path, root))


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
        # On CUDA the runtime picks the inference batch (it knows the device's memory); on the CPU
        # the scan's own batch keeps memory as the user set it.
        logits, feats = predict_arrays(
            self.bundle.model, images, cfg["mean"], cfg["std"], self.device,
            batch_size=None if self.on_cuda else self.batch_size,
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
            ScanRecord(relative_name(e.path, root), d.status, message=d.message, size=e.size, mtime_ns=e.mtime_ns,
                       dev=e.dev, ino=e.ino)
            for e, d in zip(entries, decoded, strict=True)
        ]
        good = [i for i, d in enumerate(decoded) if d.ok]
        if good:
            pred, near, score = self.score_arrays(np.stack([decoded[i].array for i in good]))
            for i, p, n, s in zip(good, pred, near, score, strict=True):
                rec = records[i]
                rec.predicted, rec.nearest, rec.score = names[int(p)], names[int(n)], float(s)
                rec.status = OOD if s > 1.0 else data.OK
        if self.cache is not None:
            for e, rec in zip(entries, records, strict=True):
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
            message=message, size=entry.size, mtime_ns=entry.mtime_ns, dev=entry.dev, ino=entry.ino,
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
                        record = ScanRecord(relative_name(entry.path, root), data.SKIPPED, message=entry.skip_reason,
                                            size=entry.size, mtime_ns=entry.mtime_ns, dev=entry.dev, ino=entry.ino)
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
    """Scan `root` into records, and apply each one (pipeline/apply.py): move, or plan to move,
    the rejected files per the options. Returns counts.

    `root` is resolved once (symlinks and `..` as the kernel follows them) and that one path is
    walked, checked and moved from: `sub/..` after a symlink `sub` never means two folders.
    Raises ScanError (a ValueError) when `root` is a quarantine: a scan never reads one as data.
    """
    from ..quarantine.moves import MANIFEST_NAME, is_quarantine

    root = Path(os.path.realpath(root))
    if is_quarantine(root):
        raise ScanError(
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
    apply = Applier(root, quarantine, summary, options.keep_unreadable, dry_run)
    started = time.perf_counter()
    try:
        for record, _ in scorer.scan(root, options.exclude):
            apply(record)
            if on_record is not None:
                on_record(record)
            if should_stop():
                summary.interrupted = True
                break
    finally:
        if cache is not None:
            cache.close()
            summary.cached = cache.hits
        summary.decoded = scorer.decoded
    summary.seconds = time.perf_counter() - started
    return summary
