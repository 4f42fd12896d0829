"""A scan request: what `imgclean scan` and `api.scan` were asked, checked before anything runs."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..errors import ImgcleanError
from .base import (
    RequestError, check_method_name, check_outputs, check_ranges, check_served, model_of, need_move_to_for_dry_run, optional_path, quarantine_placement,
    refuse_quarantine_input,
)
from .results import ExitRules

log = logging.getLogger(__name__)

RANGES = {  # field: (option, low, high, integer)
    "batch_size": ("--batch-size", 1, None, True),
    "workers": ("--workers", 0, None, True),
    "review_sample": ("--review-sample", 0, None, True),
    "ray_workers": ("--ray-workers", 0, None, True),
    "ray_gpus_per_worker": ("--ray-gpus-per-worker", 0.0, None, False),
}


class EngineUnavailable(ImgcleanError):
    """--engine ray where Ray is not installed (exit 1: the request is sound, the machine lacks Ray)."""


@dataclass
class ScanPlan:
    """What checking a scan request settled: `target` (pipeline/scan/file_list.ScanTarget), `root`
    (resolved: the walk, the lock, the moves and the review page act on it), `base` (the folder
    as given, for messages), the quarantine's `exclude`, whether the cache is used, and the Ray
    options (None for the local engine)."""

    target: object
    root: Path
    base: Path
    exclude: tuple = ()
    use_cache: bool = False
    ray: object = None


@dataclass
class ScanRequest:
    folder: Path
    model: object = None  # a model directory or a loaded model (store.artifact.ModelBundle)
    move_to: Optional[Path] = None
    dry_run: bool = False
    report: Optional[Path] = None
    overwrite_report: bool = False
    html: Optional[Path] = None
    files: Optional[Iterable] = None  # the names to scan (api: `files`)
    files_from: Optional[Path] = None  # a file listing them (`-`: standard input), read as the scan goes
    null: bool = False  # files_from separates names with NUL bytes
    method: Optional[str] = None  # None: the model's default
    use_cache: bool = True
    cache_dir: Optional[Path] = None  # None: store.cache.default_cache_dir()
    keep_unreadable: bool = False
    batch_size: int = 256
    workers: int = 0
    device: str = "auto"
    engine: str = "local"
    ray_address: Optional[str] = None
    ray_workers: int = 0
    ray_gpus_per_worker: float = 0.0
    review_sample: int = 0
    rules: ExitRules = field(default_factory=ExitRules)

    def __post_init__(self):
        self.move_to, self.report, self.html = optional_path(self.move_to), optional_path(self.report), \
            optional_path(self.html)

    def check(self) -> ScanPlan:
        """Every check a scan makes before it loads the model, in the order the CLI has always said
        them: the first problem is the one refused."""
        check_ranges(vars(self), RANGES)
        check_method_name(self.method)
        target = self._target()
        root = target.root
        base = Path(self.folder) if self.files_from is not None or target.files is None else root
        refuse_quarantine_input(root, base, "review it with `imgclean report`, put files back with `imgclean restore`")
        need_move_to_for_dry_run(self.dry_run, self.move_to)
        ray = self._ray_options()
        exclude = quarantine_placement(base, self.move_to) if self.move_to is not None else ()
        use_cache = self._cache_usable(root, base)
        check_outputs(self.report, self.html, self.move_to, self.overwrite_report)
        self._check_file_list()
        return ScanPlan(target, root, base, exclude, use_cache, ray)

    def _target(self):
        from ..pipeline.scan.file_list import FileListError, scan_target

        if isinstance(self.files, (str, bytes, os.PathLike)):
            raise RequestError("files is a list of paths, not one path")
        if self.files is not None and self.files_from is not None:
            raise RequestError("give the names to scan once: files or --files-from")
        if self.null and self.files_from is None:
            raise RequestError("--null says how --files-from LIST separates names; give --files-from too")
        try:
            return scan_target(self.folder, [] if self.files_from is not None else self.files)
        except FileListError as exc:  # (a FileListError later, reading the list, is an error of the run: exit 1)
            raise RequestError(f"{exc}" if self.files_from is None else f"{exc} (--files-from)") from None

    def _ray_options(self):
        """The Ray options (pipeline/engines/ray_engine.RayOptions) for engine ray, None for local."""
        from ..pipeline.engines import registry as engines

        if self.engine not in engines.names():
            raise RequestError(f"unknown engine {self.engine!r}; use {' or '.join(engines.names())}")
        given = [name for name, value in (("--ray-address", self.ray_address), ("--ray-workers", self.ray_workers),
                                          ("--ray-gpus-per-worker", self.ray_gpus_per_worker)) if value]
        if self.engine != "ray":
            if given:
                raise RequestError(f"{given[0]} needs --engine ray")
            return None
        if self.device not in ("auto", "cpu"):
            raise RequestError(f"--device {self.device} is for the local engine; Ray workers use CUDA with "
                               "--ray-gpus-per-worker")
        import importlib.util

        from ..pipeline.engines.ray_engine import INSTALL_HINT, RayOptions

        if importlib.util.find_spec("ray") is None:
            raise EngineUnavailable(INSTALL_HINT)
        address = self.ray_address
        if address is not None and not address.strip():
            raise RequestError("--ray-address is empty; give host:port or auto")
        return RayOptions(address=address.strip() if address else None, workers=self.ray_workers,
                          gpus_per_worker=self.ray_gpus_per_worker)

    def _cache_usable(self, root: Path, base: Path) -> bool:
        """The cache never lives in the scanned folder: a --cache-dir there is refused; the
        default cache there (a home folder scanned whole) is left out with a warning."""
        if not self.use_cache:
            return False
        from ..store.cache import default_cache_dir

        cache_real = Path(os.path.realpath(self.cache_dir or default_cache_dir()))
        if not cache_real.is_relative_to(root):
            return True
        if self.cache_dir is not None:
            raise RequestError(f"--cache-dir {os.fsdecode(self.cache_dir)} is inside the scanned folder; "
                               f"choose a folder outside {os.fsdecode(base)}")
        log.warning("the scan cache %s is inside the scanned folder; scanning without it", cache_real)
        return False

    def _check_file_list(self) -> None:
        """--files-from LIST may not be a file this run writes over (its --report or --html)."""
        if self.files_from is None or os.fsdecode(self.files_from) == "-":
            return
        for option, path in (("--report", self.report), ("--html", self.html)):
            if path is not None and os.path.realpath(path) == os.path.realpath(self.files_from):
                raise RequestError(f"--files-from {self.files_from} is also the {option} file, which the scan writes over")

    def load_model(self, device: str):
        """The model (loaded lazily: the network at the first file to score) and the method it
        serves for this scan: a model that cannot serve the method is refused (MethodError,
        exit 1) before any file is read."""
        from ..detectors import registry

        bundle = model_of(self.model, device, lazy=True)
        method = self.method if self.method is not None else registry.default_method(bundle.config)
        check_served(bundle, method)
        return bundle, method

    def options(self, plan: ScanPlan, method: str, files=None):
        """pipeline.scan.scanner.ScanOptions for this request (`files`: the names read from files_from)."""
        from ..pipeline.scan.scanner import ScanOptions

        return ScanOptions(
            batch_size=self.batch_size, workers=self.workers, keep_unreadable=self.keep_unreadable,
            exclude=plan.exclude, method=method, use_cache=plan.use_cache,
            cache_dir=Path(self.cache_dir) if self.cache_dir is not None else None, engine=self.engine,
            engine_options=plan.ray,
            files=plan.target.files if files is None else files,
        )
