"""Scoring in the decode worker processes, for a CPU scan whose files decode in processes.

Why: a scan of many small images on a CPU spends about as long in the network as in decoding.
Scored in the scanning process, the network runs on one core beside that process's own work (the
walk, records, report, cache), all under one GIL; scored where each chunk was decoded, it runs
on every core, one torch thread a worker, and the scanning process only turns outcomes into
records. It also means the scanning process never imports torch for those batches.

How: before the decode workers are forked, the scan registers (bundle, method, batch size)
under a token; `ScoreChunk(token)` (only the token travels with each chunk) is the decode pool's
`finish` (pipeline/decode_workers.py). In a worker, the first chunk builds the model from the
registered lazy bundle (importing torch there, one thread), and each chunk's decoded list is
answered with scoring.outcomes, exactly as the scanning process would answer it. A worker that
dies on a file gives that file `failed(UNREADABLE, DIED)`, transient (data.TransientMessage: a
scan cache never keeps it); an error in the model (say, weights that cannot be read) reaches
the scan as it would in the scanning process.

Each worker imports torch: ~300 MB of private memory a process (measured: torch 2.14 on Linux),
so it is used for at most MAX_WORKERS workers and only when their imports fit in half of the
memory available (MemAvailable); beyond that the scanning process scores, with torch's own
threads. Only where workers are forked (they inherit the registry), and only when the scanning process
has not imported torch when the workers start (`fork_is_safe`): a process that has run torch's
thread pools (a program that trained a model, then scans through imgclean.api) cannot fork
children that use them (they hang in OpenMP). Elsewhere the scan scores itself, as it does with
IMGCLEAN_SCORE_IN_WORKERS=0 (benchmarks compare both).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable

from ...data import TransientMessage
from .base import Outcome
from ... import tuning
from .scoring import outcomes, predict_scores

ENV = "IMGCLEAN_SCORE_IN_WORKERS"
MAX_WORKERS = 8
WORKER_BYTES = 512 * 2**20  # what one scoring worker is counted to need (torch's import, the model)

_registered: dict[str, tuple] = {}  # token -> (bundle, method, batch_size), set before the fork
_ready: dict[str, Callable] = {}  # in a worker: token -> its score_arrays, once built


def wanted(device: str, workers: int) -> bool:
    """Whether a scan on `device` with `workers` decode workers scores in them (when they are
    processes)."""
    return (str(device) == "cpu" and hasattr(os, "fork")  # (decode_workers forks where it can)
            and tuning.current().score_in_workers
            and workers <= MAX_WORKERS and workers * WORKER_BYTES <= _available_bytes() / 2)


def _available_bytes() -> float:
    """MemAvailable (Linux), or no limit where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return float("inf")


def fork_is_safe() -> bool:
    """Whether workers forked now may run torch: the scanning process has not imported it."""
    return "torch" not in sys.modules


def register(bundle, method: str, batch_size: int) -> str:
    token = os.urandom(8).hex()
    _registered[token] = (bundle, method, batch_size)
    return token


def unregister(token: str) -> None:
    _registered.pop(token, None)
    _ready.pop(token, None)


def failed(status: str, message: str) -> Outcome:
    """The outcome of a file whose worker died on it: transient (killed, out of memory, a crash
    in the image library: nothing lasting about the file), so a scan cache never keeps it."""
    return Outcome(status, TransientMessage(message), -1, -1, None)


class ScoreChunk:
    """A decode pool's `finish`: a chunk's decoded list -> one Outcome each (in the worker)."""

    def __init__(self, token: str):
        self.token = token

    def __call__(self, decoded: list) -> list[Outcome]:
        score_arrays = _ready.get(self.token) or _prepare(self.token)
        return outcomes(decoded, score_arrays)

    def __repr__(self) -> str:
        return f"ScoreChunk({self.token})"


def _prepare(token: str) -> Callable:
    entry = _registered.get(token)
    if entry is None:
        raise RuntimeError("scoring in a decode worker that was not forked from the scan (no model registered)")
    bundle, method, batch_size = entry
    tuning.set_for_process(dataclasses.replace(tuning.current(), torch_threads=1))  # one thread a worker: the workers fill the cores
    from .. import blas
    from ...nn.runtime import prepare_for_inference

    blas.limit_threads()  # one BLAS thread too (the detector's products are small)
    prepare_for_inference(bundle.model, "cpu", bundle.config.get("arch", ""), bundle.input_size)

    def score_arrays(images):
        return predict_scores(bundle, method, images, "cpu", batch_size)

    _ready[token] = score_arrays
    return score_arrays
