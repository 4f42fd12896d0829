"""The default scan engine: decoding and scoring on this machine (pipeline/scan/scanner.Scorer.scan_items
sends it the files the cache cannot answer; pipeline/engines/ray_engine.RayEngine is the other engine)."""
from __future__ import annotations

from ... import data
from . import worker_scoring
from ..decode import Decoder, default_workers
from .scoring import Outcome


class LocalEngine:
    """Decode and score in this process's pools (the default engine): a Decoder pool decodes the
    next batches while the model scores the current one in the calling thread; or, when the
    Decoder decodes in worker processes on a CPU, the workers score their chunks too
    (pipeline/engines/worker_scoring.py) and only outcomes come back."""

    def __init__(self, scorer):  # a pipeline.scan.scanner.Scorer
        self.scorer = scorer
        self.token = None
        finish = failed = None
        if worker_scoring.wanted(scorer.device, scorer.workers or default_workers()):
            self.token = worker_scoring.register(scorer.bundle, scorer.method, scorer.batch_size)
            finish, failed = worker_scoring.ScoreChunk(self.token), worker_scoring.failed
        self.decoder = Decoder(scorer.settings, scorer.workers, finish=finish, failed=failed, finish_if=worker_scoring.fork_is_safe)

    def __enter__(self) -> "LocalEngine":
        self.decoder.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.decoder.__exit__(*exc)
        finally:
            if self.token is not None:
                worker_scoring.unregister(self.token)

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
        return self.scorer._ahead()
