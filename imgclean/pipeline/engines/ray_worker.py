"""The worker half of `scan --engine ray` (pipeline/engines/ray_engine.py is the driver's half).

A ScoreWorker runs as a Ray actor on any machine of the cluster. It only reads: it rebuilds the
model from the files the driver put in the object store, refuses it unless its config (and so
its fingerprint) is the driver's, then decodes batches of paths (bytes: any file name) with
imgclean's own decoder, so every status is the local engine's, and scores them. It never
writes, caches or moves anything; the driver applies what it returns.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

from ...errors import ImgcleanError
from .scoring import outcomes, predict_scores


class RayEngineError(ImgcleanError, RuntimeError):
    """Ray is missing, the cluster cannot be reached, or its workers failed."""



class ScoreWorker:
    """One Ray worker: a model rebuilt from its files, scoring batches of paths (bytes).

    The model's files come with each call, as a one-item list holding the ObjectRef of the one
    copy in the object store (Ray does not fetch a nested reference; only its id travels): the
    worker fetches and loads them at its first call, and again after Ray restarts it. The
    constructor takes no object-store argument, so a restart never depends on one.
    """

    def __init__(self, config: dict, method: str, batch_size: int, device: str, kill_at: str = ""):
        self.config, self.method, self.device, self.kill_at = config, method, device, kill_at
        self.batch_size = None if device == "cuda" else batch_size
        self.bundle = None
        self.batches = 0

    def _load(self, files) -> None:
        """`files`: name -> bytes of the model's files, or [ObjectRef of that dict]."""
        from ...nn.runtime import prepare_for_inference
        from ...store.artifact import load_model
        from ..decode import DecodeSettings
        from .scoring import check_method

        if isinstance(files, list):
            import ray

            files = ray.get(files[0])
        folder = tempfile.mkdtemp(prefix="imgclean-model-")
        try:
            for name, blob in files.items():
                if os.sep in name or name in ("", ".", ".."):
                    raise RayEngineError(f"model file name {name!r} is not a plain name")
                with open(os.path.join(folder, name), "wb") as fh:
                    fh.write(blob)
            bundle = load_model(Path(folder), device=self.device)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if bundle.config != self.config:
            raise RayEngineError(
                f"the worker's model (fingerprint {bundle.fingerprint[:12]}) is not the driver's "
                f"({str(self.config.get('fingerprint', ''))[:12]}); was the model replaced during the scan?"
            )
        check_method(bundle, self.method)
        prepare_for_inference(bundle.model, self.device, self.config.get("arch", ""), bundle.input_size)
        self.settings = DecodeSettings.from_model(bundle)
        self.bundle = bundle

    def ready(self, files) -> str:
        """Load the model (once); its fingerprint."""
        if self.bundle is None:
            self._load(files)
        return self.bundle.fingerprint

    def score(self, files, paths: list[bytes]) -> tuple[list[bytes], list[tuple]]:
        """(paths, outcomes) for one batch, in its order (pipeline/engines/base.Outcome)."""
        from ..decode import decode_one

        if self.bundle is None:
            self._load(files)
        self.batches += 1
        self._maybe_die(paths)
        return paths, outcomes([decode_one(p, self.settings) for p in paths], self.score_arrays)

    def score_arrays(self, images):
        return predict_scores(self.bundle, self.method, images, self.device, self.batch_size)

    def _maybe_die(self, paths: list[bytes]) -> None:
        if not self.kill_at:
            return
        at, _, marker = self.kill_at.partition(":")
        if at == "poison":  # every batch holding a file of this name kills its worker
            if any(os.path.basename(p) == os.fsencode(marker) for p in paths):
                os.kill(os.getpid(), signal.SIGKILL)
            return
        if self.batches == int(at):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)
