"""One BLAS thread while a scan runs (what threadpoolctl does, for OpenBLAS only, without the dependency).

numpy's OpenBLAS starts a thread per core and, after each product, lets them spin for a while
waiting for the next one. A scan multiplies small matrices (a batch of features by the detector's
whitening matrix) between long stretches of other work, so those threads mostly spin, taking a
core from the decoders and the network: measured on 20,000 28-px PNGs on 2 cores, one BLAS
thread cut the scan's CPU time by a quarter. `single_blas_thread()` sets OpenBLAS (as loaded by
numpy, whatever its symbol prefix) to one thread and puts the old count back on exit; where no
OpenBLAS is found it does nothing. When numpy is not loaded yet at the block's start (a rescan
whose every file is a cache hit never loads it), the limit waits for the first batch scored:
scoring.predict_scores calls `engage()`, which sets it then, and the block's end undoes it.
"""
from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)

_PREFIXES = ("scipy_openblas", "openblas")
_SUFFIXES = ("64_", "")


def _openblas_libraries() -> list[str]:
    paths = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.rstrip("\n").partition("/")[2]
                if path and "openblas" in path.lower():
                    path = "/" + path
                    if path not in paths:
                        paths.append(path)
    except OSError:
        pass
    return paths


def _controls() -> list[tuple]:
    """(get, set) function pairs of every OpenBLAS loaded in this process."""
    import ctypes  # (here: a rescan that scores nothing never needs it)

    out = []
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                    out.append((get, put))
                    break
            else:
                continue
            break
    return out


def limit_threads() -> list[tuple]:
    """Every loaded OpenBLAS set to one thread; returns (set, count before) pairs to undo it."""
    try:
        controls = _controls()
        before = [(put, get()) for get, put in controls]
        for _, put in controls:
            put(1)
        return before
    except Exception as exc:  # never fail a scan over a speed setting
        log.debug("cannot limit BLAS threads: %s", exc)
        return []


_lock = threading.Lock()
_waiting: list[list] = []  # the undo lists of blocks whose limit waits for numpy (engage())


def engage() -> None:
    """Set the limit of every single_blas_thread() block still waiting for numpy (numpy loaded
    now). Called once a batch: a list's truth test when nothing waits."""
    if _waiting:
        with _lock:
            for undo in _waiting:
                undo.extend(limit_threads())
            _waiting.clear()


@contextmanager
def single_blas_thread() -> Iterator[None]:
    undo: list[tuple] = []
    if "numpy" in sys.modules:  # its OpenBLAS is loaded, so it is found now
        undo.extend(limit_threads())
    else:
        with _lock:
            _waiting.append(undo)
    try:
        yield
    finally:
        with _lock:
            _waiting[:] = [w for w in _waiting if w is not undo]
        for put, n in reversed(undo):
            put(n)
