"""The one decoder: files to uint8 arrays for a model, in parallel, every file ending in a status.

fit, fit-head, evaluate and scan all decode through `Decoder` (or `decode_many`), so the safe
decode (data.decode_image), the statuses and the worker count are decided here once. A Decoder
owns its pool; `submit` starts a batch and returns at once, so a caller can decode the next
batches while it scores the current one.
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from .. import data
from ..config import decode_options


@dataclass(frozen=True)
class DecodeSettings:
    """How a model's inputs are decoded (data.decode_image's arguments after the path)."""

    size: int
    channels: int
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    @classmethod
    def from_model(cls, bundle) -> "DecodeSettings":
        """The settings a model was trained with (models written before interpolation / crop_pct
        were recorded mean bilinear and 1.0)."""
        opts = decode_options(getattr(bundle, "config", None) or {})
        return cls(bundle.input_size, bundle.channels, opts["interpolation"], opts["crop_pct"])


@dataclass
class Decoded:
    """One file's decode: the array, or None with the status and message saying why not."""

    array: np.ndarray | None
    status: str
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.array is not None


def default_workers() -> int:
    """One decode worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def decode_one(path, settings: DecodeSettings) -> Decoded:
    try:
        arr = data.decode_image(path, settings.size, settings.channels, settings.interpolation, settings.crop_pct)
        return Decoded(arr, data.OK)
    except data.DecodeError as exc:
        return Decoded(None, exc.status, str(exc))


def _decode_chunk(paths: Sequence, settings: DecodeSettings) -> list[Decoded]:
    return [decode_one(p, settings) for p in paths]


def _path(item):
    return item.path if isinstance(item, data.FileEntry) else item


class Pending:
    """A batch in flight: `result()` gives one Decoded per input, in input order."""

    def __init__(self, futures: list[Future]):
        self._futures = futures

    def result(self) -> list[Decoded]:
        return [d for f in self._futures for d in f.result()]

    def cancel(self) -> None:
        for f in self._futures:
            f.cancel()


class Decoder:
    """A pool of decode workers for one model's settings; a context manager.

    Threads: Pillow releases the GIL for much of a decode, and a thread hands its array back
    without a copy.
    """

    def __init__(self, settings: DecodeSettings, workers: int = 0):
        self.settings = settings
        self.workers = workers or default_workers()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> "Decoder":
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="imgclean-decode")
        return self

    def __exit__(self, *exc) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, items: Sequence) -> Pending:
        """Start decoding `items` (paths or data.FileEntry); a few chunks per worker."""
        if self._pool is None:
            raise RuntimeError("Decoder.submit outside its `with` block")
        paths = [_path(i) for i in items]
        step = max(1, -(-len(paths) // (2 * self.workers)))
        return Pending([
            self._pool.submit(_decode_chunk, paths[i : i + step], self.settings) for i in range(0, len(paths), step)
        ])

    def decode(self, items: Sequence) -> list[Decoded]:
        return self.submit(items).result()

    def batches(self, items: Iterable, batch_size: int, ahead: int = 2) -> Iterator[tuple[list, list[Decoded]]]:
        """(items, decoded) per batch of `batch_size`, in order, with `ahead` batches decoding in advance."""
        from collections import deque

        pending: deque = deque()
        batch: list = []
        try:
            for item in items:
                batch.append(item)
                if len(batch) >= batch_size:
                    pending.append((batch, self.submit(batch)))
                    batch = []
                    while len(pending) > ahead:
                        done, p = pending.popleft()
                        yield done, p.result()
            if batch:
                pending.append((batch, self.submit(batch)))
            while pending:
                done, p = pending.popleft()
                yield done, p.result()
        finally:
            for _, p in pending:
                p.cancel()


def decode_many(items: Sequence, settings: DecodeSettings, workers: int = 0) -> list[Decoded]:
    """Decode every item (paths or data.FileEntry) with a pool of its own; one Decoded each, in order."""
    if not items:
        return []
    with Decoder(settings, workers) as decoder:
        return decoder.decode(items)
