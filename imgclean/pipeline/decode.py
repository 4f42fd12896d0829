"""The one decoder: files to uint8 arrays for a model, in parallel, every file ending in a status.

fit, fit-head, evaluate and scan all decode through `Decoder` (or `decode_many`), so the safe
decode (data.decode_image), the statuses and the worker count are decided here once.

Contract (every entry point):
- Items are paths (str, bytes, os.PathLike) or data.FileEntry; a FileEntry is read at its `.path`.
- Every item gives exactly one `Decoded`, in input order: an array (size, size, channels) uint8
  with status data.OK, or None with the status (data.UNREADABLE / TOO_LARGE / UNSUPPORTED) and a
  one-line message. Nothing a decode raises escapes: an unexpected error inside a worker
  becomes that one item's UNREADABLE, and the other items of its chunk are still decoded.
- A failure saying nothing lasting about the file (EACCES, EIO, MemoryError, a process killed,
  an unexpected error) has a data.TransientMessage for message: reported, never cached.
- No items, no work: an empty list gives an empty list and starts no thread.

A Decoder owns its pool; `submit` starts a batch and returns at once, so a caller can decode the
next batches while it scores the current one (`batches` does exactly that). `decode_one` is the
per-item function with no state beyond its (picklable) settings, so a process that decodes on its
own (a DataLoader worker, say) calls it and gets the same statuses.

Threads or processes (`mode`): Pillow holds the GIL for most of a small file's decode, so many
small files decode several times faster in worker processes (pipeline/decode_workers.py: shared
memory hand-off, one shared memory budget, dead workers replaced); large JPEGs, decoded in draft
mode, release the GIL and do as well in threads, which start instantly and copy nothing. The
rule in "auto" (the default; IMGCLEAN_DECODE=threads|processes|auto overrides it, for tests and
benchmarks): threads with one worker, and until MIN_PROCESS_FILES files have been submitted (a
handful of new files in a cached rescan, or a small folder, is not worth starting processes);
then processes when the median size of the files seen so far is under LARGE_FILE_BYTES, else
threads, and that choice holds for the Decoder's life.
"""
from __future__ import annotations

import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence
from zlib import crc32

from .. import data, tuning
from ..config import decode_options

if TYPE_CHECKING:  # annotations only: numpy and Pillow come from data.modules() at the first decode
    import numpy as np


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


MODE_ENV = "IMGCLEAN_DECODE"
MODES = ("auto", "threads", "processes")
MIN_PROCESS_FILES = 200  # files submitted before processes are worth starting (~30 ms to start them)
LARGE_FILE_BYTES = 256 * 1024  # median file size from which threads decode as fast (GIL released)
PROCESS_CHUNK = 256  # most files per process task
PROCESS_CHUNK_BYTES = 32 * 2**20  # and most decoded bytes per task (its shared block)


def default_workers() -> int:
    """One decode worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _processes_available() -> bool:
    from .decode_workers import available

    return available()


def item_path(item):
    """The path of an item: a data.FileEntry's path (as the walk joined it), or the item itself."""
    return item.fspath if isinstance(item, data.FileEntry) else item


def decode_one(item, settings: DecodeSettings) -> Decoded:
    """Decode one item; never raises for anything the file or the decoder does."""
    try:
        # A small plain PNG without Image.open (the walk's size, when known, spares larger files the look)
        if (SIMPLE_PNG and data.decode_image is _DECODE_IMAGE
                and (item.__class__ is not data.FileEntry or 0 < item[1] <= SIMPLE_PNG_BYTES)):
            arr = _simple_png(item_path(item), settings)
            if arr is not None:
                return Decoded(arr, data.OK)
        arr = data.decode_image(
            item_path(item), settings.size, settings.channels, settings.interpolation, settings.crop_pct
        )
        return Decoded(arr, data.OK)
    except data.DecodeError as exc:
        return Decoded(None, exc.status, exc.message)
    except Exception as exc:  # a bug or an odd failure: this file's status, not a lost batch; transient
        return Decoded(None, data.UNREADABLE, data.TransientMessage(" ".join(f"{type(exc).__name__}: {exc}".split())))


# ---- small plain PNGs ----------------------------------------------------------------------------
# A 28-px PNG took ~63 us through data.decode_image, two thirds of it Pillow's Python-level
# Image.open and load. A small PNG of the plainest kind (8-bit grey or RGB, not interlaced, only
# IHDR, IDAT and IEND chunks, every CRC right) is decoded here by Pillow's own PNG (zip) decoder
# straight from its IDAT bytes (~35 us), then converted and resized as data.decode_image does:
# the same pixels. Anything else, or any failure here, goes through data.decode_image, which
# then gives the file's status and message. Such a file needs at most ~1 MB to decode, so it
# takes nothing from the decode budget.
# SIMPLE_PNG False: every file through data.decode_image; so too when data.decode_image has
# been replaced (a test watching every decode, say): this path stands in for the original only.
SIMPLE_PNG = True
_DECODE_IMAGE = data.decode_image
SIMPLE_PNG_BYTES = 64 * 1024  # files up to this size (the walk's size) are tried
SIMPLE_PNG_PIXELS = 256 * 256
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {0: "L", 2: "RGB"}  # colour type, at 8 bits a sample -> Pillow's mode (and raw mode)
_png_chunk = struct.Struct(">I4s").unpack_from
_png_header = struct.Struct(">IIBBBBB").unpack


def _read_small(path, limit: int) -> bytes | None:
    """Up to limit + 1 bytes of a file: one open and one read, no file object (a third of a 28-px
    PNG's decode went to `open` and its buffered reads). None when it cannot be opened or read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):  # data.decode_image meets it too, and words it
        return None
    try:
        return os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def _simple_png(path, settings: DecodeSettings) -> np.ndarray | None:
    """The decode of a small plain PNG (see above), or None: data.decode_image decides."""
    raw = _read_small(path, SIMPLE_PNG_BYTES)
    if raw is None or raw[:8] != _PNG_SIGNATURE:
        return None
    n = len(raw)
    if n > SIMPLE_PNG_BYTES:
        return None
    header, idat, pos, last = None, [], 8, b""
    while True:
        if pos + 12 > n:
            return None  # no IEND
        length, kind = _png_chunk(raw, pos)
        end = pos + 8 + length
        if end + 4 > n or crc32(raw[pos + 4 : end]) != int.from_bytes(raw[end : end + 4], "big"):
            return None
        if kind == b"IHDR" and pos == 8 and length == 13:
            header = _png_header(raw[pos + 8 : end])
        elif kind == b"IDAT" and header is not None and last in (b"IHDR", b"IDAT"):
            idat.append(raw[pos + 8 : end])
        elif kind == b"IEND" and idat:
            break
        else:
            return None  # any other chunk (palette, transparency, text, EXIF, ...): Pillow's way
        last, pos = kind, end + 4
    width, height, depth, colour, compression, filtering, interlace = header
    mode = _PNG_MODES.get(colour)
    pixels = width * height
    if mode is None or depth != 8 or compression or filtering or interlace or not 0 < pixels <= SIMPLE_PNG_PIXELS:
        return None
    need = pixels * (1 if mode == "L" else 4) + 2 * pixels * (1 if settings.channels == 1 else 4)  # data.decode_memory
    if pixels > data.MAX_PIXELS or need > data.DECODE_MEMORY_LIMIT:
        return None  # too large for the limits in force: data.decode_image says so
    np, Image = data.modules()
    target = "L" if settings.channels == 1 else "RGB"
    if mode == target and width == height == settings.size and settings.crop_pct >= 1.0:
        # Already the model's mode and size (a dataset of 28-px digits): Image.frombytes's own
        # decode and np.asarray's copy-out, without their Python layers (~8 us of ~19).
        return _plain_pixels(Image.core, mode, width, height, b"".join(idat), np)
    try:
        img = Image.frombytes(mode, (width, height), b"".join(idat), "zip", mode)
    except (ValueError, OSError):  # truncated or broken data: data.decode_image says so
        return None
    if mode != target:
        img = img.convert(target)  # what data.to_mode does for these modes
    arr = np.asarray(data.resize_for_model(img, settings.size, settings.interpolation, settings.crop_pct), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _plain_pixels(core, mode: str, width: int, height: int, stream: bytes, np) -> np.ndarray | None:
    """What np.asarray(Image.frombytes(mode, size, stream, "zip", mode)) gives, as (h, w, c), or
    None where frombytes would raise (short or broken data)."""
    try:
        im = core.new(mode, (width, height))
        decoder = core.zip_decoder(mode, mode)
        decoder.setimage(im, (0, 0, width, height))
        consumed, error = decoder.decode(stream)
        if consumed >= 0 or error != 0:
            return None  # frombytes: "not enough image data" / "cannot decode image data"
        encoder = core.raw_encoder(mode, mode)
        encoder.setimage(im, (0, 0, width, height))
        parts, error = [], 0
        while not error:
            _, error, chunk = encoder.encode(max(65536, width * 4))
            parts.append(chunk)
    except (ValueError, OSError, MemoryError):
        return None
    if error < 0:
        return None
    return np.frombuffer(b"".join(parts), np.uint8).reshape(height, width, 1 if mode == "L" else 3)


def died(status: str, message: str) -> Decoded:
    """A file whose decode process died on it (killed, out of memory, a crash in the image
    library): nothing says its bytes did it, so transient."""
    return Decoded(None, status, data.TransientMessage(message))


def _decode_chunk(items: Sequence, settings: DecodeSettings) -> list[Decoded]:
    return [decode_one(i, settings) for i in items]


class Pending:
    """A batch in flight: `result()` gives one Decoded per input, in input order (it waits), or,
    when `finished`, the Decoder's `finish` result of each (applied in its worker processes);
    `cancel()` drops the chunks not started yet (result() must not be called after it)."""

    def __init__(self, futures: list, finished: bool = False):
        self._futures = futures  # Future (threads) or decode_workers.ProcessChunk (processes)
        self.finished = finished

    def result(self) -> list[Decoded]:
        return [d for f in self._futures for d in f.result()]

    def cancel(self) -> None:
        for f in self._futures:
            f.cancel()


class Decoder:
    """A pool of decode workers for one model's settings; a context manager.

    Threads hand their arrays back without a copy; processes through shared memory (see the
    module docstring for which). Leaving the `with` block cancels what has not started and
    waits for the rest; leaving it on an exception stops worker processes at once. Either way
    no worker process and no shared-memory block outlives the block.
    """

    def __init__(self, settings: DecodeSettings, workers: int = 0, mode: str | None = None,
                 finish: Callable | None = None, failed: Callable | None = None, finish_if: Callable | None = None):
        self.settings = settings
        # Applied by the worker processes to each chunk's decoded list (decode_workers.py), when
        # finish_if() (if given) says so as they start; their batches come back `finished`.
        # Thread batches never are: the caller finishes them.
        self.finish, self.failed, self.finish_if = finish, failed, finish_if
        self._finishing = False
        self.workers = workers or default_workers()
        requested = mode or "auto"
        if requested == "auto":
            requested = tuning.current().decode
        if requested not in MODES:
            raise ValueError(f"decode mode must be one of {', '.join(MODES)}, got {requested!r} (mode or ${MODE_ENV})")
        self.requested = requested
        self.mode: str | None = requested if requested != "auto" else ("threads" if self.workers < 2 else None)
        self._pool: ThreadPoolExecutor | None = None
        self._procs = None  # decode_workers.ProcessDecodePool, started at the first process batch
        self._thread_futures: list[Future] = []
        self._seen = 0  # files submitted while the mode is undecided
        self._sizes: list[int] = []  # their sizes (the first MIN_PROCESS_FILES)

    def __enter__(self) -> "Decoder":
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="imgclean-decode")
        return self

    def __exit__(self, exc_type, *exc) -> None:
        pool, self._pool = self._pool, None
        procs, self._procs = self._procs, None
        try:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            if procs is not None:
                procs.close(wait=exc_type is None)

    @property
    def process_pool(self):
        """The worker processes' pool (decode_workers.ProcessDecodePool), or None: for tests."""
        return self._procs

    def _choose(self, items: list) -> str:
        """threads or processes for this batch (see the module docstring)."""
        if self.mode is not None:
            return self.mode
        self._seen += len(items)
        for item in items[: max(0, MIN_PROCESS_FILES - len(self._sizes))]:
            if isinstance(item, data.FileEntry):
                self._sizes.append(item.size)
            else:
                try:
                    self._sizes.append(os.stat(item).st_size)
                except (OSError, TypeError, ValueError):
                    pass
        if self._seen < MIN_PROCESS_FILES:
            return "threads"
        sizes = sorted(self._sizes)
        small = not sizes or sizes[len(sizes) // 2] < LARGE_FILE_BYTES
        self.mode = "processes" if small else "threads"
        return self.mode

    def submit(self, items: Sequence) -> Pending:
        """Start decoding `items` (paths or data.FileEntry), split into about two chunks per worker."""
        if self._pool is None:
            raise RuntimeError("Decoder.submit outside its `with` block")
        items = list(items)
        if not items:
            return Pending([])
        step = max(1, -(-len(items) // (2 * self.workers)))
        if self._choose(items) == "processes" and _processes_available():
            return self._submit_processes(items, step)
        futures = [
            self._pool.submit(_decode_chunk, items[i : i + step], self.settings) for i in range(0, len(items), step)
        ]
        if self.mode is None:  # still deciding: remembered, so a switch to processes can wait for them
            self._thread_futures = [f for f in self._thread_futures if not f.done()] + futures
        return Pending(futures)

    def _submit_processes(self, items: list, step: int) -> Pending:
        if self._procs is None:
            from .decode_workers import ProcessDecodePool

            # Thread decodes still running hold the parent's budget: let them end, so the
            # processes' shared budget is the only one in use (one process's total, never two).
            wait(self._thread_futures)
            self._thread_futures = []
            self._finishing = self.finish is not None and (self.finish_if is None or self.finish_if())
            finish, failed = (self.finish, self.failed) if self._finishing else (None, died)  # (failed: a death's outcome)
            self._procs = ProcessDecodePool(decode_one, self.settings, self.workers, Decoded, finish, failed)
        item_bytes = self.settings.size * self.settings.size * self.settings.channels
        # One chunk per worker per batch: each chunk is a task, a pipe message and a block.
        step = -(-len(items) // self.workers)
        step = max(1, min(step, PROCESS_CHUNK, PROCESS_CHUNK_BYTES // max(1, item_bytes)))
        return Pending([self._procs.submit(items[i : i + step]) for i in range(0, len(items), step)], self._finishing)

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


def decode_many(items: Sequence, settings: DecodeSettings, workers: int = 0, mode: str | None = None) -> list[Decoded]:
    """Decode every item (paths or data.FileEntry) with a pool of its own; one Decoded each, in order."""
    items = list(items)
    if not items:
        return []
    with Decoder(settings, workers, mode) as decoder:
        return decoder.decode(items)
