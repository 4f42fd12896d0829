"""Decoding in worker processes: the process half of pipeline.decode's Decoder.

Longer than 400 lines: the pool, its shared-memory blocks and its recovery from dead workers
share one lifetime (every block a chunk may leave is unlinked by the pool that named it).

Why: Pillow holds the GIL for most of a small file's open/parse/decode path, so threads do not
add up for folders of small images; processes do. How:

- A `ProcessPoolExecutor` (fork where the platform has it: a worker starts in milliseconds and
  shares the parent's imported modules) runs chunks of items. A chunk's decoded arrays go back
  through one POSIX shared-memory block that the worker creates under a name the parent chose
  (`imgclean-<pid>-<token>-<n>`); the worker returns only the count and the failures (index,
  status, message). The parent copies the block out in one memcpy and unlinks it at once, so a
  block lives only between a chunk's end and its collection, and every name it ever chose is
  unlinked when the pool closes, whatever happened (exception, cancel, a dead worker).
- Memory: data.DECODE_BUDGET is per process. The workers share one `SharedBudget` of the same
  total (a counter in shared memory under a cross-process condition), so N processes together
  never reserve more than one process was allowed.
- A worker killed (say `kill -9`) breaks the executor: every chunk in flight fails with
  BrokenProcessPool. The pool is rebuilt (a fresh budget: the dead worker's reservation dies with
  the old one) and each lost chunk is decoded again; a chunk that breaks the pool twice is decoded
  one file at a time, each in a process of its own (another chunk's death cannot break it), and
  a file whose own decode kills its worker ends `unreadable` with a message saying so. No file is
  lost and nothing waits forever.
- `finish` (optional): a function the worker applies to a chunk's decoded list, returning one
  result per item (a scan scores the chunk there: pipeline/engines/worker_scoring.py); the results come
  back pickled instead of the arrays, and a file that kills its worker gets `failed(UNREADABLE,
  DIED)` as its result.
- Workers ignore SIGINT and SIGHUP (the parent decides when to stop and shuts them down), exit
  on SIGTERM, and get SIGTERM when the parent dies (Linux PR_SET_PDEATHSIG; elsewhere a watch
  thread polls getppid), unlinking the blocks they made on the way out, so even a parent killed
  with -9 leaves no decoder and no block behind. They never hold the run's locks: locking closes
  its descriptors in every forked child. The blocks are made with multiprocessing's own POSIX primitives (_posixshmem)
  but without its resource tracker: that would cost two pipe writes per block in the scanning
  process, and the lifetimes here are explicit.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import secrets
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
import mmap
from typing import Callable, Iterator, Sequence

import numpy as np

from .. import data

try:  # POSIX shared memory (multiprocessing.shared_memory's own primitives, without its tracker)
    import _posixshmem
except ImportError:  # pragma: no cover - not POSIX: the Decoder uses threads
    _posixshmem = None

log = logging.getLogger(__name__)

SHM_PREFIX = "imgclean-"
DIED = "the decoder process died while decoding this file (killed, or a crash in the image library)"


class SharedBudget:
    """data.DecodeBudget across processes: reserve() before decoding; the sum of what all the
    workers hold at once stays within `total` (one reservation larger than the total runs alone)."""

    def __init__(self, total: int, ctx):
        self.total = total
        self._used = ctx.Value("q", 0, lock=False)
        self._peak = ctx.Value("q", 0, lock=False)
        self._waiting = ctx.Value("i", 0, lock=False)
        self._cond = ctx.Condition(ctx.Lock())

    @property
    def used(self) -> int:
        return self._used.value

    @property
    def peak(self) -> int:
        return self._peak.value

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = max(0, min(int(nbytes), self.total))
        with self._cond:
            while self._used.value and self._used.value + nbytes > self.total:
                self._waiting.value += 1
                try:
                    self._cond.wait(1.0)
                finally:
                    self._waiting.value -= 1
            self._used.value += nbytes
            self._peak.value = max(self._peak.value, self._used.value)
        try:
            yield
        finally:
            with self._cond:
                self._used.value -= nbytes
                if self._waiting.value:
                    self._cond.notify_all()


# ---- in the worker -------------------------------------------------------------------------
_created: list[str] = []  # blocks this worker made (the parent unlinks them as it collects)


def _watch_parent(parent: int) -> None:
    """Exit on SIGTERM (the pool's terminate, or the parent's death: see _die_with_parent) or
    when the parent is gone (polled too, where there is no PR_SET_PDEATHSIG). A parent that is
    gone can no longer collect our blocks: unlink them. A live one (it terminated us) may still
    read the blocks of chunks we finished, and unlinks every name itself when the pool closes."""
    try:
        while os.getppid() == parent:
            if signal.sigtimedwait((signal.SIGTERM,), 0.5) is not None:
                break
    finally:
        if os.getppid() != parent:  # (the kernel reparents us before PR_SET_PDEATHSIG's signal)
            for name in list(_created):
                _unlink(name)
        os._exit(1)


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGTERM as soon as the parent dies, even by kill -9 (the signal comes when the
    thread that forked us ends, which is the thread that runs the pool, or the whole process)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as e:  # no libc prctl: the watch thread polls
        log.debug("no prctl(PR_SET_PDEATHSIG): %s", e)


def _init_worker(budget: SharedBudget, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal: the parent decides, as for SIGINT
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # SIGTERM is blocked in every thread (threads made later inherit the mask) and taken by the
    # watch thread, which unlinks our blocks before exiting.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    data.DECODE_BUDGET = budget  # decode_image's default budget, shared by all the workers
    _die_with_parent()
    # started after the prctl: a parent that died before it is seen by the first getppid()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="imgclean-parent-watch").start()


def _run_finished_chunk(fn: Callable, items: Sequence, settings, finish: Callable) -> list:
    """`finish` of the chunk's decoded items: one result each, in order."""
    results = finish([fn(item, settings) for item in items])
    if len(results) != len(items):
        raise RuntimeError(f"{finish!r} gave {len(results)} results for {len(items)} items")
    return results


def _run_chunk(fn: Callable, items: Sequence, settings, shape: tuple, name: str) -> tuple[int, list, object]:
    """Decode `items` with fn(item, settings); write the good arrays, in order, to a new shared
    block `name`. Returns (number written, [(index, status, message) of the others], None), or
    the arrays themselves in place of None when no shared block could be made."""
    failures: list = []
    arrays: list = []
    for i, item in enumerate(items):
        d = fn(item, settings)
        if d.array is None:
            failures.append((i, d.status, d.message))
        elif d.array.shape != shape or d.array.dtype != np.uint8:
            failures.append((i, data.UNREADABLE, f"decoded to {d.array.shape} {d.array.dtype}, expected {shape} uint8"))
        else:
            arrays.append(d.array)
    if arrays:
        nbytes = len(arrays) * int(np.prod(shape))
        try:
            fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        except OSError:  # no shared memory: the arrays travel pickled instead
            return len(arrays), failures, np.stack(arrays)
        _created.append(name)
        del _created[:-256]
        try:
            os.ftruncate(fd, nbytes)
            with mmap.mmap(fd, nbytes) as mm:
                view = np.ndarray((len(arrays), *shape), np.uint8, buffer=mm)
                for j, a in enumerate(arrays):
                    view[j] = a
                del view
        except OSError:  # e.g. /dev/shm is full
            _unlink(name)
            return len(arrays), failures, np.stack(arrays)
        finally:
            os.close(fd)
    return len(arrays), failures, None


# ---- in the parent -------------------------------------------------------------------------
def _unlink(name: str) -> None:
    try:
        _posixshmem.shm_unlink("/" + name)
    except OSError:  # FileNotFoundError: never made, or already collected
        pass


def unlink_block(name: str) -> None:
    """Remove a shared block if it exists (a worker may have died before or after creating it)."""
    _unlink(name)


def available() -> bool:
    """Process decoding needs POSIX shared memory."""
    return _posixshmem is not None


def _context():
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()


class ProcessDecodePool:
    """Worker processes running `fn(item, settings)` on chunks; `submit` -> ProcessChunk. With
    `finish`, a chunk's result is finish(its decoded list), and `failed(status, message)` stands
    for an item whose worker died on it."""

    def __init__(self, fn: Callable, settings, workers: int, make_decoded: Callable,
                 finish: Callable | None = None, failed: Callable | None = None):
        self.fn = fn
        self.settings = settings
        self.workers = workers
        self.shape = (settings.size, settings.size, settings.channels)
        self._make = make_decoded  # (array or None, status, message) -> Decoded
        self.finish = finish
        self._failed = failed if failed is not None else (lambda status, message: make_decoded(None, status, message))
        self._ctx = _context()
        self._token = f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
        self._serial = 0
        self._names: set[str] = set()  # chosen and not yet collected
        self._executor: ProcessPoolExecutor | None = None
        self.generation = 0
        self.budget: SharedBudget | None = None
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        self.budget = SharedBudget(data.DECODE_BUDGET.total, self._ctx)
        self._executor = ProcessPoolExecutor(
            self.workers, mp_context=self._ctx, initializer=_init_worker, initargs=(self.budget, os.getpid()),
        )
        self.generation += 1

    def _restart(self, generation: int) -> None:
        """Replace a broken executor (once per breakage, however many chunks saw it)."""
        if generation != self.generation:
            return
        log.warning("a decode worker process died; restarting the decode workers and decoding its files again")
        old, self._executor = self._executor, None
        if old is not None:
            old.shutdown(wait=True, cancel_futures=True)
        self.restarts += 1
        self._start()

    def pids(self) -> list[int]:
        ex = self._executor
        return sorted(p.pid for p in (getattr(ex, "_processes", None) or {}).values()) if ex else []

    def submit(self, items: Sequence) -> "ProcessChunk":
        while True:
            generation = self.generation
            try:
                return self._submit_to(self._executor, items, generation)
            except BrokenProcessPool:
                self._restart(generation)

    def _submit_to(self, executor, items: Sequence, generation: int) -> "ProcessChunk":
        entry, fspath = data.FileEntry, os.fspath
        paths = [i[0] if i.__class__ is entry else fspath(i) for i in items]  # what _path_of gives
        self._serial += 1
        name = f"{self._token}{self._serial}"
        if self.finish is None:  # (with finish no block is made: the results come pickled)
            self._names.add(name)
        try:
            if self.finish is not None:
                future = executor.submit(_run_finished_chunk, self.fn, paths, self.settings, self.finish)
            else:
                future = executor.submit(_run_chunk, self.fn, paths, self.settings, self.shape, name)
        except BaseException:
            self.forget(name)
            raise
        return ProcessChunk(self, items, future, name, generation)

    def collect(self, chunk: "ProcessChunk") -> list:
        """The chunk's Decoded list (or its `finish` results); a chunk lost with a dead worker is
        decoded again."""
        try:
            result = chunk.future.result()
        except BrokenProcessPool:
            self.forget(chunk.name)
            self._restart(chunk.generation)
            return self._again(chunk.items)
        except Exception as exc:
            self.forget(chunk.name)
            if self.finish is not None:  # finish's own error (a model that cannot load, say): the caller's
                raise
            # the machinery failed (not a file): decode this chunk here
            log.warning("decode worker failed (%s); decoding %d files in the scanning process", exc, len(chunk.items))
            return [self.fn(i, self.settings) for i in chunk.items]
        return self._results(chunk, result)

    def _results(self, chunk: "ProcessChunk", result) -> list:
        if self.finish is not None:
            return result
        try:
            return self._read(chunk.name, len(chunk.items), *result)
        finally:
            self.forget(chunk.name)

    def _read(self, name: str, n: int, count: int, failures: list, inline=None) -> list:
        block = inline
        if count and block is None:
            nbytes = count * int(np.prod(self.shape))
            fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, mode=0o600)
            try:
                with mmap.mmap(fd, nbytes, prot=mmap.PROT_READ) as mm:
                    block = np.frombuffer(mm, np.uint8, nbytes).reshape(count, *self.shape).copy()  # the one copy
            finally:
                os.close(fd)
        make = self._make
        if not failures:
            return [make(a, data.OK, "") for a in block] if count else []
        out: list = [None] * n
        for i, status, message in failures:
            out[i] = make(None, status, message)
        j = 0
        for i in range(n):
            if out[i] is None:
                out[i] = make(block[j], data.OK, "")
                j += 1
        return out

    def _again(self, items: Sequence) -> list:
        chunk = self.submit(items)
        try:
            return self._results(chunk, chunk.future.result())
        except BrokenProcessPool:
            self.forget(chunk.name)
            self._restart(chunk.generation)
        # Broke twice: each file alone, in a process of its own, finds the file that kills its
        # worker. Not in the shared pool, where a death of another chunk's file would break it too.
        return [result for item in items for result in self._alone(item)]

    def _alone(self, item) -> list:
        """One file decoded in a one-process pool of its own: DIED only if it killed that process."""
        with ProcessPoolExecutor(1, mp_context=self._ctx, initializer=_init_worker,
                                 initargs=(self.budget, os.getpid())) as executor:
            chunk = self._submit_to(executor, [item], self.generation)
            try:
                return self._results(chunk, chunk.future.result())
            except BrokenProcessPool:
                self.forget(chunk.name)
                return [self._failed(data.UNREADABLE, DIED)]

    def forget(self, name: str) -> None:
        if name in self._names:
            self._names.discard(name)
            unlink_block(name)

    def close(self, wait: bool = True) -> None:
        """Stop the workers (at once when `wait` is false: terminate, then join) and unlink every
        block still named."""
        ex, self._executor = self._executor, None
        try:
            if ex is not None:
                if not wait:
                    processes = list((getattr(ex, "_processes", None) or {}).values())
                    ex.shutdown(wait=False, cancel_futures=True)
                    for p in processes:
                        if p.is_alive():
                            p.terminate()
                    for p in processes:
                        p.join(5)
                ex.shutdown(wait=True, cancel_futures=True)
        finally:
            for name in list(self._names):
                self.forget(name)


def _path_of(item):
    return item.fspath if isinstance(item, data.FileEntry) else item


class ProcessChunk:
    """One chunk in flight in a ProcessDecodePool."""

    def __init__(self, pool: ProcessDecodePool, items: Sequence, future, name: str, generation: int):
        self.pool, self.items, self.future, self.name, self.generation = pool, items, future, name, generation

    def result(self) -> list:
        return self.pool.collect(self)

    def cancel(self) -> None:
        if self.future.cancel():
            self.pool.forget(self.name)
