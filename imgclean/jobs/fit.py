"""A fit request: a training folder, the FitConfig to train it with, and where the model goes."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from ..config import FitConfig, TrainSettings
from .base import RequestError, check_output_path, check_ranges, need_folder, optional_path

RANGES = {  # FitConfig / TrainSettings field: (option, low, high, integer)
    "epochs": ("--epochs", 0, None, True),
    "min_steps": ("--min-steps", 0, None, True),
    "batch_size": ("--batch-size", 1, None, True),
    "lr": ("--lr", 0.0, None, False),
    "center_weight": ("--center-weight", 0.0, None, False),
    "val_fraction": ("--val-fraction", 0.0, 0.9, False),
    "percentile": ("--percentile", 0.0, 100.0, False),
    "input_size": ("--input-size", 1, None, True),
}


def fit_config(config: FitConfig | None, settings: dict) -> FitConfig:
    """`config` (default FitConfig()) with `settings` (FitConfig and TrainSettings fields by name)
    put in; a RequestError names a setting that is neither."""
    config = config or FitConfig()
    fit_keys = {f.name for f in fields(FitConfig)} - {"train"}
    train_keys = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(settings) - fit_keys - train_keys)
    if unknown:
        raise RequestError(
            f"unknown setting(s) {', '.join(unknown)}; fit takes {', '.join(sorted(fit_keys | train_keys))}"
        )
    train = TrainSettings(**{**vars(config.train), **{k: v for k, v in settings.items() if k in train_keys}})
    return FitConfig(**{**vars(config), **{k: v for k, v in settings.items() if k in fit_keys}, "train": train})


def check_channel_values(option: str, values, positive: bool = False) -> None:
    """--mean / --std: 1 (grayscale) or 3 (colour) finite numbers (above 0 for --std)."""
    if values is None:
        return
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise RequestError(f"{option} takes 1 (grayscale) or 3 (colour) numbers; got {values!r}") from None
    if len(numbers) not in (1, 3) or not all(math.isfinite(v) for v in numbers):
        raise RequestError(f"{option} takes 1 (grayscale) or 3 (colour) numbers; got {values!r}")
    if positive and any(v <= 0 for v in numbers):
        raise RequestError(f"{option} values must be above 0; got {values!r}")


@dataclass
class FitRequest:
    train_dir: Path
    config: FitConfig
    output: Optional[Path] = None  # None: the model is returned, not saved
    force: bool = False  # replace an existing model directory
    reject_dir: Optional[Path] = None  # also train the supervised reject head on these

    def __post_init__(self):
        self.train_dir, self.output, self.reject_dir = Path(self.train_dir), optional_path(self.output), \
            optional_path(self.reject_dir)

    def check(self) -> None:
        """Every check before training: the folders, the output, and the config's values."""
        from ..store.artifact import check_replaceable

        need_folder(self.train_dir, "training folder")
        self._check_config()
        if self.reject_dir is not None:
            need_folder(self.reject_dir, "--reject-dir")
        if self.output is not None:
            check_output_path("-o", self.output, is_dir=True)
            if self.output.exists() and not self.force:
                raise RequestError(f"{os.fsdecode(self.output)} already exists; pass --force to replace it, "
                                   "or choose another --output")
            check_replaceable(self.output, self.force)  # (ModelError) before training, not after it

    def _check_config(self) -> None:
        config = self.config
        if config.channels not in (None, 1, 3):
            raise RequestError("--channels must be 1 or 3")
        check_ranges({**vars(config.train), "percentile": config.percentile, "input_size": config.input_size}, RANGES)
        crop_pct = getattr(config, "crop_pct", None)
        if crop_pct is not None and not (isinstance(crop_pct, (int, float)) and 0 < crop_pct <= 1):
            raise RequestError(f"--crop-pct must be above 0 and at most 1; got {crop_pct}")
        check_channel_values("--mean", getattr(config, "mean", None))
        check_channel_values("--std", getattr(config, "std", None), positive=True)
        cache_memory = getattr(config, "cache_memory", None)
        if cache_memory is not None and (isinstance(cache_memory, bool) or not isinstance(cache_memory, int)
                                         or cache_memory < 0):
            raise RequestError(f"--cache-memory takes a size in bytes, 0 or more; got {cache_memory!r}")
        from ..data import INTERPOLATIONS

        if config.interpolation is not None and config.interpolation not in INTERPOLATIONS:
            raise RequestError(f"--interpolation takes one of {', '.join(INTERPOLATIONS)}; got {config.interpolation!r}")
        if config.covariance not in ("tied", "class"):
            raise RequestError(f"--covariance must be tied or class; got {config.covariance!r}")
