"""The default scan engine: decoding and scoring on this machine (pipeline/scan/scanner.Scorer.scan_items
sends it the files the cache cannot answer; pipeline/engines/ray_engine.RayEngine is the other engine)."""
from __future__ import annotations

import contextlib

from ... import data
from . import worker_scoring
from ..decode import Decoder, default_workers
from .base import Outcome

# Batches decoded ahead of the one being scored: decode of batch n+1 overlaps scoring of batch n.
PREFETCH_BATCHES = 2
# While the network loads, batches are decoded ahead up to this many bytes of pixels and this
# many batches (what is held does not grow with the folder: at most 32 MB of pixels).
LOADING_AHEAD_BYTES = 32 * 2**20
LOADING_AHEAD_BATCHES = 64


def make_engine(scorer, options=None, device: str = "cpu") -> "LocalEngine":
    """The registry's factory (engines/registry.py). On a CPU the scan keeps numpy to one BLAS
    thread: the cores are the decoders' and the network's (pipeline/blas.py)."""
    return LocalEngine(scorer, one_blas_thread=not str(device).startswith("cuda"))


class LocalEngine:
    """Decode and score in this process's pools (the default engine): a Decoder pool decodes the
    next batches while the model scores the current one in the calling thread; or, when the
    Decoder decodes in worker processes on a CPU, the workers score their chunks too
    (pipeline/engines/worker_scoring.py) and only outcomes come back."""

    def __init__(self, scorer, one_blas_thread: bool = False):  # a pipeline.scan.scanner.Scorer
        self.scorer = scorer
        self.token = None
        self.blas = contextlib.ExitStack()
        self.one_blas_thread = one_blas_thread
        finish = failed = None
        if worker_scoring.wanted(scorer.device, scorer.workers or default_workers()):
            self.token = worker_scoring.register(scorer.bundle, scorer.method, scorer.batch_size)
            finish, failed = worker_scoring.ScoreChunk(self.token), worker_scoring.failed
        self.decoder = Decoder(scorer.settings, scorer.workers, finish=finish, failed=failed, finish_if=worker_scoring.fork_is_safe)

    def __enter__(self) -> "LocalEngine":
        if self.one_blas_thread:
            from ..blas import single_blas_thread

            self.blas.enter_context(single_blas_thread())
        try:
            self.decoder.__enter__()
        except BaseException:
            self.blas.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.decoder.__exit__(*exc)
        finally:
            try:
                if self.token is not None:
                    worker_scoring.unregister(self.token)
            finally:
                self.blas.close()

    def submit(self, entries: list[data.FileEntry]):
        pending = self.decoder.submit(entries)
        if not pending.finished:  # scored here: load the network (after the submit: workers fork first)
            self.scorer.preload()
        return pending

    def collect(self, entries: list[data.FileEntry], pending) -> list[Outcome]:
        if pending.finished:
            return pending.result()
        return self.scorer.outcomes(pending.result())

    def cancel(self, pending) -> None:
        pending.cancel()

    def ahead(self) -> int:
        """Batches decoded ahead: more while the network loads (up to LOADING_AHEAD_BYTES of
        pixels, LOADING_AHEAD_BATCHES batches), so the decoders work through the load instead of waiting for it."""
        if not self.scorer.loading_model:
            return PREFETCH_BATCHES
        s, batch = self.scorer.settings, self.scorer.batch_size
        by_bytes = LOADING_AHEAD_BYTES // (batch * s.size * s.size * s.channels)
        return max(PREFETCH_BATCHES, min(LOADING_AHEAD_BATCHES, by_bytes))
