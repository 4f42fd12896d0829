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
    train: TrainSettings = field(default_factory=TrainSettings)


def decode_options(model_config: dict) -> dict:
    """The decode_image keyword arguments a saved model's config.json asks for.

    Models written before these keys existed mean bilinear, no crop.
    """
    return {
        "interpolation": str(model_config.get("interpolation") or "bilinear"),
        "crop_pct": float(model_config.get("crop_pct") or 1.0),
    }


# ---- settings files (imgclean.yaml) -----------------------------------------------------
# A YAML file with one section per command, keyed by option name (dashes or underscores):
#     fit:  {epochs: 20, center_weight: 0.1}
#     scan: {model: models/digits, batch_size: 512}
# Precedence: built-in defaults < the file < command-line flags.
CONFIG_SECTIONS = ("fit", "scan")


class SettingsFileError(ValueError):
    """A settings file that cannot be used; the message names the file and the key."""


def read_settings_file(path: Path, command: str, allowed: set[str]) -> dict:
    """The settings for `command` from a YAML file, with every key checked against `allowed`."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsFileError(f"settings file {path} does not exist; `imgclean init-config` writes one") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsFileError(f"cannot read settings file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SettingsFileError(f"{path} is not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsFileError(f"{path} must be a mapping with sections {', '.join(CONFIG_SECTIONS)}")
    unknown = [str(k) for k in raw if k not in CONFIG_SECTIONS]
    if unknown:
        raise SettingsFileError(f"{path}: unknown section {unknown[0]!r}; use {', '.join(CONFIG_SECTIONS)}")
    section = raw.get(command) or {}
    if not isinstance(section, dict):
        raise SettingsFileError(f"{path}: section {command!r} must be a mapping of option: value")
    settings = {}
    for key, value in section.items():
        name = str(key).replace("-", "_")
        if name not in allowed:
            raise SettingsFileError(f"{path}: unknown key {command}.{key}; see `imgclean {command} -h` for the options")
        settings[name] = value
    return settings
