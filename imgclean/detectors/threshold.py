"""The percentile threshold every unsupervised detector uses: percentile -> threshold -> spread ->
calibration shift, written once.

A detector turns its raw score (a distance, an energy, a ViM log-odds) into the normalised score
(> 1 rejects) in one of two forms:

- `RatioThreshold` (a raw score that is a distance, >= 0: Mahalanobis per class, KNN):
  score = raw / t, t = the percentile of the training images' raw scores (floored at 1e-12).
  Calibration multiplies t by the held-out cut (the score `cut` becomes 1).
- `ShiftThreshold` (a raw score of any sign: energy, ViM): score = 1 + (raw - t) / s, with
  t = the percentile of the training scores and s = t - their median (the distance from a typical
  training image to the threshold; their standard deviation should that be 0 up to rounding; 1
  should that be 0 too). The score is 0 for the median training image and grows by 1 per s beyond
  t. Calibration moves t by (cut - 1) s (`shift`), s stays.

The held-out cut itself is detectors/calibration.py's (split conformal).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: numpy is imported in the functions that use it
    import numpy as np

FLOOR = 1e-12  # a ratio threshold or scale never goes below this (a zero would divide by zero)


def check_percentile(percentile: float) -> float:
    """`percentile` as a float strictly between 0 and 100; ValueError otherwise."""
    p = float(percentile)
    if not 0.0 < p < 100.0:
        raise ValueError(f"percentile must be between 0 and 100, got {percentile}")
    return p


def percentile_of(raw, percentile: float, what: str = "training images") -> float:
    """The `percentile` of the raw training scores; ValueError when there are none."""
    import numpy as np
    raw = np.asarray(raw, dtype=np.float64)
    if raw.size == 0:
        raise ValueError(f"no {what} to set a threshold on")
    return float(np.percentile(raw, check_percentile(percentile)))


def moved_scale(scale: float, cut: float) -> float:
    """A ratio threshold's scale after a calibration cut (a score of `cut` becomes 1)."""
    return float(scale) * max(float(cut), FLOOR)


@dataclass(slots=True)
class RatioThreshold:
    """score = raw / value; value = max(base * scale, 1e-12)."""

    base: float
    scale: float = 1.0

    @classmethod
    def from_training(cls, raw, percentile: float) -> "RatioThreshold":
        return cls(base=max(percentile_of(raw, percentile), FLOOR))

    @property
    def value(self) -> float:
        return max(self.base * self.scale, FLOOR)

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        return raw / self.value

    def move(self, cut: float) -> None:
        self.scale = moved_scale(self.scale, cut)


@dataclass(slots=True)
class ShiftThreshold:
    """score = 1 + (raw - (base + shift)) / spread."""

    base: float
    spread: float
    median: float
    shift: float = 0.0

    @classmethod
    def from_training(cls, raw, percentile: float) -> "ShiftThreshold":
        import numpy as np
        raw = np.asarray(raw, dtype=np.float64)
        base = percentile_of(raw, percentile)
        median = float(np.median(raw))
        tiny = 1e-9 * max(1.0, abs(base))  # below this, a spread is rounding noise
        spread = base - median
        if not spread > tiny:
            spread = float(np.std(raw))
        return cls(base=base, spread=spread if spread > tiny else 1.0, median=median)

    @classmethod
    def from_arrays(cls, arrays) -> "ShiftThreshold":
        """The threshold a detector saved (its base_threshold, spread, train_median and shift arrays)."""
        return cls(base=float(arrays["base_threshold"]), spread=float(arrays["spread"]),
                   median=float(arrays["train_median"]), shift=float(arrays["shift"]))

    @property
    def value(self) -> float:
        return self.base + self.shift

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        return 1.0 + (raw - self.value) / self.spread

    def move(self, cut: float) -> None:
        self.shift += (float(cut) - 1.0) * self.spread
