"""One BLAS thread while a scan runs (what threadpoolctl does, for OpenBLAS only, without the dependency).

numpy's OpenBLAS starts a thread per core and, after each product, lets them spin for a while
waiting for the next one. A scan multiplies small matrices (a batch of features by the detector's
whitening matrix) between long stretches of other work, so those threads mostly spin, taking a
core from the decoders and the network: measured on 20,000 28-px PNGs on 2 cores, one BLAS
thread cut the scan's CPU time by a quarter. `single_blas_thread()` sets OpenBLAS (as loaded by
numpy, whatever its symbol prefix) to one thread and puts the old count back on exit; where no
OpenBLAS is found it does nothing.
"""
from __future__ import annotations

import ctypes
import logging
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


@contextmanager
def single_blas_thread() -> Iterator[None]:
    import numpy  # noqa: F401  (loads numpy's OpenBLAS, so that it is found)

    try:
        controls = _controls()
        before = [get() for get, _ in controls]
        for _, put in controls:
            put(1)
    except Exception as exc:  # never fail a scan over a speed setting
        log.debug("cannot limit BLAS threads: %s", exc)
        controls, before = [], []
    try:
        yield
    finally:
        for (_, put), n in zip(controls, before, strict=True):
            put(n)
