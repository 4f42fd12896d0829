"""Settings as dataclasses. Defaults live here; the CLI overrides them with flags."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


DEFAULT_MODEL_DIR = Path("imgclean-model")
DEFAULT_PERCENTILE = 97.5
LENET = "lenet"  # the built-in architecture (nn.models.LeNet); every other name is a timm model
# Images at most this size (and grayscale) default to lenet; larger ones to a timm model.
LENET_MAX_SIZE = 64
DEFAULT_TIMM_ARCH = "efficientnet_b0"
DEFAULT_TIMM_SIZE = 224


@dataclass
class TrainSettings:
    epochs: int = 15
    min_steps: int = 300  # small data sets train for more epochs, so that at least this many batches run
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
    input_size: int | None = None  # None: the timm model's own (its data config), or from the data for lenet
    channels: int | None = None  # None: detected from the data (1 grayscale, 3 colour)
    pretrained: bool = False
    weights: Path | None = None
    percentile: float = DEFAULT_PERCENTILE
    covariance: str = "tied"  # "tied" (pooled over classes) or "class" (one per class, as the paper)
    device: str = "auto"
    # How images become model inputs (timm's evaluation transform). None: from timm's data config
    # for the chosen model; for lenet bilinear, crop_pct 1.0 and mean/std measured on the data.
    interpolation: str | None = None  # a key of data.INTERPOLATIONS
    crop_pct: float | None = None  # 0 < x <= 1: share of the shorter side kept by the centre crop
    mean: list[float] | None = None  # per channel, on the 0..1 scale
    std: list[float] | None = None
    cache_memory: int | None = None  # bytes of decoded training images kept in memory; None: automatic, 0: stream
    train: TrainSettings = field(default_factory=TrainSettings)


def decode_options(model_config: dict) -> dict:
    """The decode_image keyword arguments a saved model's config.json asks for.

    Models written before these keys existed mean bilinear, no crop.
    """
    return {
        "interpolation": str(model_config.get("interpolation") or "bilinear"),
        "crop_pct": float(model_config.get("crop_pct") or 1.0),
    }
