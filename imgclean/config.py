"""Settings as dataclasses. Defaults live here; the CLI overrides them with flags."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


DEFAULT_MODEL_DIR = Path("imgclean-model")
DEFAULT_PERCENTILE = 97.5
# Images at most this size (and grayscale) default to lenet; larger ones to a timm model.
LENET_MAX_SIZE = 64
DEFAULT_TIMM_ARCH = "efficientnet_b0"
DEFAULT_TIMM_SIZE = 224


@dataclass
class TrainSettings:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 5e-4
    center_weight: float = 0.1
    center_alpha: float = 0.5
    val_fraction: float = 0.1
    augment: bool = True
    seed: int = 0


@dataclass
class FitConfig:
    arch: str = "auto"  # "auto", "lenet", or a timm model name
    input_size: int | None = None  # None: detected from the data
    channels: int | None = None  # None: detected from the data (1 grayscale, 3 colour)
    pretrained: bool = False
    weights: Path | None = None
    percentile: float = DEFAULT_PERCENTILE
    device: str = "auto"
    train: TrainSettings = field(default_factory=TrainSettings)
