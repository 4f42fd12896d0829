"""The one decoder: files to uint8 arrays for a model, in parallel, every file ending in a status.

fit, fit-head, evaluate and scan all decode through `Decoder` (or `decode_many`), so the safe
decode (data.decode_image), the statuses and the worker count are decided here once.

Contract (every entry point):
- Items are paths (str, bytes, os.PathLike) or data.FileEntry; a FileEntry is read at its `.path`.
- Every item gives exactly one `Decoded`, in input order: an array (size, size, channels) uint8
  with status data.OK, or None with the status (data.UNREADABLE / TOO_LARGE / UNSUPPORTED) and a
  one-line message. Nothing a decode raises escapes: an unexpected error inside a worker
  becomes that one item's UNREADABLE, and the other items of its chunk are still decoded.
- No items, no work: an empty list gives an empty list and starts no thread.

A Decoder owns its pool; `submit` starts a batch and returns at once, so a caller can decode the
next batches while it scores the current one (`batches` does exactly that). `decode_one` is the
per-item function with no state beyond its (picklable) settings, so a process that decodes on its
own (a DataLoader worker, say) calls it and gets the same statuses.
"""
from __future__ import annotations

import os
from collections import deque
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


def item_path(item):
    """The path of an item: a data.FileEntry's `.path`, or the item itself."""
    return item.path if isinstance(item, data.FileEntry) else item


def decode_one(item, settings: DecodeSettings) -> Decoded:
    """Decode one item; never raises for anything the file or the decoder does."""
    try:
        arr = data.decode_image(
            item_path(item), settings.size, settings.channels, settings.interpolation, settings.crop_pct
        )
        return Decoded(arr, data.OK)
    except data.DecodeError as exc:
        return Decoded(None, exc.status, str(exc))
    except Exception as exc:  # a bug or an odd failure is still this file's status, not a lost batch
        return Decoded(None, data.UNREADABLE, " ".join(f"{type(exc).__name__}: {exc}".split()))


def _decode_chunk(items: Sequence, settings: DecodeSettings) -> list[Decoded]:
    return [decode_one(i, settings) for i in items]


class Pending:
    """A batch in flight: `result()` gives one Decoded per input, in input order (it waits);
    `cancel()` drops the chunks not started yet (result() must not be called after it)."""

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
    without a copy. Leaving the `with` block cancels what has not started and waits for the rest.
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
        """Start decoding `items` (paths or data.FileEntry), split into about two chunks per worker."""
        if self._pool is None:
            raise RuntimeError("Decoder.submit outside its `with` block")
        items = list(items)
        step = max(1, -(-len(items) // (2 * self.workers)))
        return Pending([
            self._pool.submit(_decode_chunk, items[i : i + step], self.settings) for i in range(0, len(items), step)
        ])

    def decode(self, items: Sequence) -> list[Decoded]:
        """One Decoded per item, in order (waits for all of them)."""
        return self.submit(items).result()

    def batches(self, items: Iterable, batch_size: int, ahead: int = 2) -> Iterator[tuple[list, list[Decoded]]]:
        """(items, decoded) per batch of `batch_size` (the last may be shorter), in order, with up to
        `ahead` more batches decoding while the caller works on the one yielded. `items` may be a
        lazy iterable (it is read only as far as the batches in flight need). Closing the generator
        early cancels the batches not started."""
        if batch_size < 1 or ahead < 0:
            raise ValueError(f"batch_size must be at least 1 and ahead at least 0, got {batch_size} and {ahead}")
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
    items = list(items)
    if not items:
        return []
    with Decoder(settings, workers) as decoder:
        return decoder.decode(items)
