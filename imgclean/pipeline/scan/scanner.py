"""Scanning a folder: walk -> decode -> score -> records; then each record is applied.

Files stream through in batches, so memory does not grow with the folder. Every file ends in
one record (reports/records.py) with one status and the identity the file had when scored;
applying records (pipeline/apply/applier.py: the moves, or the plan of a dry run) is a separate step
that `imgclean apply` also runs on a saved report. Only quarantine.moves touches files.

Longer than 400 lines: Scorer.scan_items keeps walk order across cache hits, run snapshots and
batches in flight on an engine; that order is easiest to check in one place.
"""
from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from ... import data
from ...errors import ImgcleanError
from ...reports.records import CHANGED, OOD, STATUSES, UNDECODABLE, ScanRecord, is_rejected
from ...reports.record_blocks import RecordBlock, csv_rows
from ...store.artifact import ModelBundle
from ...walk import walk_runs
from ..apply.applier import Applier, ScanSummary
from ..decode import Decoded, Decoder, DecodeSettings
from .run_snapshots import (
    CACHEABLE as _CACHEABLE, SNAPSHOT_STATUSES as _SNAPSHOT_STATUSES, RunSnapshots, StoredRuns,
)
from .file_list import PerFileRows, listed_runs
from ..engines import registry as engines
from ..engines.local import LocalEngine
from ..engines.base import Outcome
from ..engines.scoring import check_method, outcomes, predict_scores

if TYPE_CHECKING:
    import numpy as np


class ScanError(ImgcleanError, ValueError):
    """A folder cannot be scanned (it is a quarantine)."""


@dataclass
class ScanOptions:
    batch_size: int = 256
    workers: int = 0  # decode workers (processes or threads: pipeline/decode.py); 0 = one per CPU core
    keep_unreadable: bool = False  # leave unreadable/too_large/unsupported files in place
    exclude: tuple[Path, ...] = ()
    method: str = "mahalanobis"  # a detector or combining rule (detectors/registry.py)
    use_cache: bool = False  # reuse results of unchanged files from earlier scans (cache.ScanCache)
    cache_dir: Path | None = None  # None: the user cache dir ($XDG_CACHE_HOME/imgclean)
    engine: str = "local"  # where files are decoded and scored: a name in engines/registry.py
    engine_options: object = None  # that engine's options (ray: engines.ray_engine.RayOptions; None: defaults)
    files: Iterable | None = None  # scan only these names in root, not a walk of it (pipeline/scan/file_list.py)


def relative_name(path: Path, root: Path) -> str:
    full, base = os.fspath(path), os.fspath(root)
    if os.path.isabs(full) and full.startswith(base.rstrip(os.sep) + os.sep) and "/.." not in full and "/./" not in full:
        return os.fsdecode(full[len(base.rstrip(os.sep)) + 1 :])  # the walk joins names onto root
    return os.fsdecode(os.path.relpath(path, root))


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
        self._load_lock = threading.Lock()
        self._preload: threading.Thread | None = None
        self._preload_error: BaseException | None = None
        self.decoded = 0  # files decoded by this scorer (cache misses)
        self.unlisted = 0  # folders the walk could not list (each one skipped record; their files unscanned)

    def _prepare_torch(self) -> None:
        with self._load_lock:
            if self._torch_ready:
                return
            from ...nn.runtime import prepare_for_inference

            prepare_for_inference(self.bundle.model, self.device, self.bundle.config.get("arch", ""), self.bundle.input_size)
            self._torch_ready = True

    def preload(self) -> None:
        """Start loading the network (importing torch: seconds) in a background thread, so it
        overlaps the walk and the first decodes; `scan` calls this at its first file to decode."""
        if self._torch_ready or self._preload is not None:
            return

        def load() -> None:
            try:
                self._prepare_torch()
            except BaseException as exc:  # raised in the scanning thread, at its first batch
                self._preload_error = exc

        self._preload = threading.Thread(target=load, name="imgclean-model-load", daemon=True)
        self._preload.start()

    def _wait_preload(self) -> None:
        thread, self._preload = self._preload, None
        if thread is not None:
            thread.join()
            error, self._preload_error = self._preload_error, None
            if error is not None:
                raise error

    def close(self) -> None:
        """Wait for a model load still running (a scan stopped early), so no thread outlives it."""
        thread = self._preload
        if thread is not None:
            thread.join()

    @property
    def loading_model(self) -> bool:
        """True while the network loads in the background (preload), not yet ready to score."""
        return not self._torch_ready and self._preload is not None

    def score_arrays(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted class index, nearest class index, score) for uint8 images."""
        self._wait_preload()
        self._prepare_torch()
        # On CUDA the runtime picks the inference batch (it knows the device's memory); on the CPU
        # the scan's own batch keeps memory as the user set it.
        return predict_scores(self.bundle, self.method, images, self.device, None if self.on_cuda else self.batch_size)

    def score_entries(self, entries: list[data.FileEntry], root: Path) -> list[ScanRecord]:
        """Decode and score one batch (no cache, no overlap); `scan` is the fast path."""
        with Decoder(self.settings, self.workers) as decoder:
            return self.records(entries, self.outcomes(decoder.decode(entries)), _relative_namer(root))

    def outcomes(self, decoded: list[Decoded]) -> list[Outcome]:
        """What the model says of each decoded file."""
        return outcomes(decoded, self.score_arrays)

    def records(self, entries: list[data.FileEntry], outcomes: list[Outcome], rel) -> list[ScanRecord]:
        """The records of scored entries (the driver's part: names, identity; RunSnapshots caches them)."""
        names = self.bundle.class_names
        self.decoded += len(entries)
        cut = getattr(rel, "cut", None)
        return [
            ScanRecord(e.fspath[cut:] if cut else rel(e.fspath), st, names[p] if p >= 0 else None, names[n] if n >= 0 else None,
                       s, msg, "", None, e.size, e.mtime_ns, e.dev, e.ino)
            for e, (st, msg, p, n, s) in zip(entries, outcomes, strict=True)
        ]

    def _block(self, entries: list, records: list, scored: list[Outcome], rel, folder) -> RecordBlock:
        """A group's records as one block: `records[i]` for an entry resolved without decoding,
        the next of `scored` where it is None, in order. `folder`: the one folder every entry is
        in (None when several); with a cache, the block's report rows are then formatted once,
        for the report and the run snapshots (RecordBlock.rows)."""
        names = self.bundle.class_names
        if len(scored) != records.count(None):
            raise RuntimeError(f"the engine gave {len(scored)} outcomes for a batch of another size")
        self.decoded += len(scored)
        outcomes = [(st, names[p] if p >= 0 else None, names[n] if n >= 0 else None, s, msg) for st, msg, p, n, s in scored]
        if len(outcomes) != len(entries):
            it = iter(outcomes)
            outcomes = [next(it) if r is None else (r.status, r.predicted, r.nearest, r.score, r.message) for r in records]
        rows = None
        if self.cache is not None and folder.__class__ is str and getattr(rel, "cut", None):
            rows = csv_rows(entries, outcomes, len(folder) if folder.endswith(os.sep) else len(folder) + 1)
        return RecordBlock(entries, outcomes, rel, folder or "", rows)

    def _resolve(self, entries: list[data.FileEntry], rel, stored: StoredRuns | None = None, folder=None) -> list[ScanRecord | None]:
        """Records for the entries that need no decoding (skipped files, cache hits: from the
        folder's run snapshots (`stored`), then one query of the per-file rows for the rest),
        None for the others."""
        out: list[ScanRecord | None] = [None] * len(entries)
        lookup = []
        cache = self.cache
        for i, e in enumerate(entries):
            if e.skip_reason:
                out[i] = ScanRecord(rel(e.fspath), data.SKIPPED, None, None, None, e.skip_reason, "", None, e.size, e.mtime_ns,
                                    e.dev, e.ino)
            elif cache is not None and not cache.held_nothing:
                lookup.append(i)
        if lookup:
            if len(lookup) < len(entries):
                entries = [entries[i] for i in lookup]
            hits = stored.look_up(folder, entries) if stored is not None and cache.held_runs else [None] * len(entries)
            if cache.held_results and None in hits:
                rest = [j for j, hit in enumerate(hits) if hit is None]
                for j, hit in zip(rest, cache.get_many([entries[j] for j in rest]), strict=True):
                    hits[j] = hit
            cacheable, record = _CACHEABLE, ScanRecord
            cut = getattr(rel, "cut", None)  # rel(path) is path[cut:] (_relative_namer)
            for i, e, hit in zip(lookup, entries, hits, strict=True):
                if hit is None:
                    continue
                status, predicted, nearest, score, message = hit  # a store.cache verdict
                if status in cacheable:
                    out[i] = record(e.fspath[cut:] if cut else rel(e.fspath), status, predicted, nearest, score, message, "",
                                    None, e.size, e.mtime_ns, e.dev, e.ino)
        return out

    def scan(self, root: Path, exclude: Iterable[Path] = (), engine=None) -> Iterator[tuple[ScanRecord, data.FileEntry]]:
        """Yield (record, entry) for every image-named file below root, in walk order (scan_items
        with its blocks taken apart)."""
        for item in self.scan_items(root, exclude, engine):
            if item.__class__ is RecordBlock:
                yield from zip(item.records(), item.entries)
            else:
                yield item

    def _finish(self, done: "_Group", engine, rel, snapshots) -> Iterator:
        """Yield the oldest group's block once its outcomes are back; then tell the snapshots
        (after the consumer applied it, or when the consumer stopped at it)."""
        if done.stored_run is not None:
            yield done.entries
            snapshots.after_block(done.entries, *done.stored_run)  # a stored run: its (folder, ordinal, span, positions)
            return
        to_decode = done.to_decode
        scored = engine.collect(to_decode, done.in_flight) if to_decode else []
        block = self._block(done.entries, done.records, scored, rel, done.folder)
        try:
            yield block
        except GeneratorExit:  # the consumer stopped after this block, or while applying it
            if snapshots is not None:
                snapshots.saw_block(block)
            raise
        if snapshots is not None:  # after the consumer applied it
            snapshots.saw_block(block)

    def scan_items(self, root: Path, exclude: Iterable[Path] = (), engine=None, runs: Iterable | None = None) -> Iterator:
        """Yield, in walk order, (record, entry) for every image-named file below root, except
        that a run of the walk the cache holds a snapshot of comes whole, as one RecordBlock.

        `engine` decodes and scores the files the cache cannot answer (LocalEngine when None;
        pipeline/engines/ray_engine.RayEngine on a cluster): batches go out as the walk finds them, at most
        engine.ahead() in flight, and their records come back here, in walk order, whatever
        order the engine finishes them in. Each run answered file by file is snapshot in the
        cache once all its records are out and applied (pipeline/scan/run_snapshots.py).

        `runs`: walk.Run objects to scan instead of walking root (file_list.listed_runs); they
        are answered file by file and cached as per-file rows only (file_list.PerFileRows)."""
        root = Path(root)
        rel = _relative_namer(root)
        pending: deque[_Group] = deque()  # walk-ordered groups, the oldest first
        group = _Group([], [], [])
        step = min(self.batch_size, LOOKUP_BATCH)
        cache = self.cache
        snapshots = None if cache is None else RunSnapshots(cache) if runs is None else PerFileRows(cache)
        stored_runs = StoredRuns(cache) if cache is not None else None
        look_up = cache is not None and not cache.held_nothing  # else every file is a miss: no queries

        with engine if engine is not None else LocalEngine(self) as engine:

            def submit() -> None:
                nonlocal group
                if group.to_decode:
                    group.in_flight = engine.submit(group.to_decode)
                pending.append(group)
                group = _Group([], [], [])

            def drain() -> Iterator:
                while len(pending) > engine.ahead() or (pending and not pending[0].to_decode):
                    yield from self._finish(pending.popleft(), engine, rel, snapshots)

            try:
                # The cache's snapshot of each run, asked by the walk: an unchanged run comes
                # matched (its entries taken from the snapshot), or else is compared whole here.
                known = cache.snapshot if look_up and cache.held_runs and runs is None else None
                for walked in walk_runs(root, tuple(exclude), known=known) if runs is None else runs:
                    folder, ordinal, run = walked.folder, walked.ordinal, walked.entries
                    if walked.unlisted:
                        self.unlisted += 1
                    if snapshots is not None:
                        stored = _stored_answer(cache, walked)
                        if stored is not None:
                            if group.entries:
                                submit()
                            block = RecordBlock(run, stored[0], rel, folder, stored[1], stored=True)
                            pending.append(_Group(block, None, None, stored_run=(folder, ordinal, walked.span, walked.positions)))
                            yield from drain()
                            continue
                        snapshots.expect(folder, ordinal, len(run), walked.span, walked.positions)
                    for i in range(0, len(run), step):
                        entries = run[i : i + step]
                        group.add(entries, self._resolve(entries, rel, stored_runs, folder), folder)
                        if len(group.to_decode) >= self.batch_size or len(group.entries) >= MAX_GROUP:
                            submit()
                            yield from drain()
                if group.entries:
                    submit()
                while pending:
                    yield from self._finish(pending.popleft(), engine, rel, snapshots)
            finally:
                for waiting in pending:
                    if waiting.in_flight is not None:
                        engine.cancel(waiting.in_flight)
                if cache is not None:
                    snapshots.close()
                    cache.flush()


# A group holding no entry yet has no folder.
_NO_FOLDER = object()


@dataclass(slots=True)
class _Group:
    """Files of the walk that go out and come back together, in walk order: `records` holds a
    record for an entry resolved without decoding (a cache hit, a skipped file) and None for one
    in `to_decode`, sent to the engine as one batch (`in_flight`: its handle). `folder`: the one
    folder every entry is in (None: several). A run the cache answered whole is a group of one
    RecordBlock (`entries`) with its `stored_run`: (folder, ordinal, span, positions)."""

    entries: list | RecordBlock
    records: list | None
    to_decode: list | None
    in_flight: object = None
    folder: object = _NO_FOLDER
    stored_run: tuple | None = None

    def add(self, entries: list, resolved: list, folder) -> None:
        """Entries of `folder` and their records (None: to decode), at the end of the group."""
        self.folder = folder if self.folder is _NO_FOLDER or self.folder == folder else None
        self.entries += entries
        self.records += resolved
        if resolved.count(None) == len(entries):
            self.to_decode += entries
        else:
            self.to_decode += [e for e, r in zip(entries, resolved) if r is None]


def _stored_answer(cache, walked):
    """The cache's (outcomes, rows) for a whole run of the walk, or None: from the snapshot the
    walk matched, or by comparing the run with its snapshot."""
    if walked.matched:
        return cache.answered(walked.snapshot, _SNAPSHOT_STATUSES)
    if walked.snapshot is not None:
        return cache.get_run(walked.folder, walked.ordinal, walked.entries, _SNAPSHOT_STATUSES, walked.snapshot)
    return None


# Entries looked up in the cache with one query.
LOOKUP_BATCH = 512


def _relative_namer(root: Path) -> Callable:
    """relative_name(path, root) for one root, as a function of the walk's joined path: a slice
    when the path is the root plus names. With `cut` set (root absolute, str, no `.`/`..`/empty
    parts, as run_scan's realpath gives) that holds for every walk path: path[rel.cut:]."""
    base = os.fspath(root)
    prefix = base.rstrip(os.sep) + os.sep
    cut = len(prefix)

    def rel(full):
        if isinstance(full, str) and full.startswith(prefix) and prefix[0] == os.sep and "/.." not in full and "/./" not in full:
            return full[cut:]
        return relative_name(Path(os.fsdecode(full)), root)

    parts = prefix.split(os.sep)[1:-1]
    if isinstance(base, str) and prefix[0] == os.sep and not {"", ".", ".."} & set(parts):
        rel.cut = cut  # the walk only appends names (never "." or ".."; hidden names are skipped)
    return rel


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
    """Scan `root` into records, and apply each one (pipeline/apply/applier.py): move, or plan to move,
    the rejected files per the options. Returns counts.

    `on_record` gets every record, after it is applied. If it has a `block` attribute, a block
    of records the cache answered whole and that moves nothing (reports.record_blocks.RecordBlock)
    goes to on_record.block instead, in one call.

    `root` is resolved once (symlinks and `..` as the kernel follows them) and that one path is
    walked, checked and moved from: `sub/..` after a symlink `sub` never means two folders.
    Raises ScanError (a ValueError) when `root` is a quarantine: a scan never reads one as data.
    With `options.files`, only those names are scanned (pipeline/scan/file_list.py), each a record.
    """
    from ...fileops import MANIFEST_NAME, quarantine_holding

    root = Path(os.path.realpath(root))
    engines.entry(options.engine)  # EngineError (a ValueError) when unknown
    holding = quarantine_holding(root)
    if holding is not None:
        what = "an imgclean quarantine" if holding == root else f"inside the imgclean quarantine {os.fsdecode(holding)}"
        raise ScanError(
            f"{os.fsdecode(root)} is {what} (it holds {MANIFEST_NAME}); scans never read one. "
            f"Review it with `imgclean report`, put files back with `imgclean restore`"
        )
    summary = ScanSummary(root=os.fsdecode(root), model=os.fsdecode(bundle.path or ""))
    cache = None
    if options.use_cache:
        from ...store.cache import ScanCache, model_key

        # The method is part of the key: a head score must never be reused as a Mahalanobis one.
        cache = ScanCache(options.cache_dir, model_key(bundle.config, extra=options.method)).open()
    scorer = Scorer(bundle, options.batch_size, options.workers, device, options.method, cache=cache)
    runs = listed_runs(root, options.files, options.exclude) if options.files is not None else None
    apply = Applier(root, quarantine, summary, options.keep_unreadable, dry_run)
    started = time.perf_counter()
    try:
        engine = engines.create(options.engine, scorer, options.engine_options, device)
        with fewer_collections():
            _run(scorer, root, options, apply, on_record, should_stop, summary, engine, runs)
    finally:
        if runs is not None:
            runs.close()  # (its folder descriptors)
        if cache is not None:
            cache.close()
            summary.cached = cache.hits
        summary.decoded = scorer.decoded
        summary.unlisted = scorer.unlisted
        scorer.close()
    summary.seconds = time.perf_counter() - started
    return summary


# gc's first threshold during a scan. At Python's 700 the collector ran every few dozen files (a
# few acyclic objects each) and traversed the walk's listings: a quarter of a warm rescan's CPU.
SCAN_GC_THRESHOLD = 50_000


@contextlib.contextmanager
def fewer_collections(threshold: int = SCAN_GC_THRESHOLD):
    """Raise gc's first threshold to `threshold` for the block (never lower it), then restore it."""
    old = gc.get_threshold()
    raised = 0 < old[0] < threshold
    if raised:
        gc.set_threshold(threshold, *old[1:])
    try:
        yield
    finally:
        if raised and gc.get_threshold()[0] == threshold:
            gc.set_threshold(*old)


def _run(scorer, root, options, apply, on_record, should_stop, summary, engine=None, runs=None) -> None:
    on_block = getattr(on_record, "block", None)
    for item in scorer.scan_items(root, options.exclude, engine, runs):
        if item.__class__ is not RecordBlock:
            record = item[0]  # (record, entry)
            apply(record)
            if on_record is not None:
                on_record(record)
        elif apply.take_block(item):  # nothing in it to move: counted whole
            if on_block is not None:
                on_block(item)
            elif on_record is not None:
                for record in item.records():
                    on_record(record)
        else:
            for record in item.records():
                apply(record)
                if on_record is not None:
                    on_record(record)
                if should_stop():
                    break
        if should_stop():
            summary.interrupted = True
            break
