"""The energy score (Liu, Wang, Owens and Li, 2020, "Energy-based out-of-distribution detection").

E(x) = -T * logsumexp(logits(x) / T), with T = 1 as in the paper: low energy = the classifier is
confident that x is one of its classes; higher energy = more out-of-distribution. It needs only
the classifier's logits, no feature statistics.

Threshold (detectors/threshold.py's ShiftThreshold, shared with ViM): t = the model's percentile
(97.5 by default) of the training images' energies. E can be negative (it usually is), so the
score is not a ratio but a shift:

    score = 1 + (E - t) / s,   s = t - median(training energies)

s is the distance from a typical training image to the threshold, a positive spread of the
training energies (should it be 0 up to rounding, their standard deviation; should that be 0 too,
1). The score is monotone in E, is > 1 exactly when E > t, is 0 for the median training image and
grows by 1 per s of energy beyond the threshold, so it sits on a scale like the Mahalanobis
ratio's (typical in-distribution images well below 1).

Calibration: the network is trained on the very images whose energies set t, and its logits are
more confident on them than on new images of the same classes, so t is optimistic. With held-out
images `calibrate()` (split conformal, detectors/calibration.py) moves t to the energy of the
ceil((n + 1) p)-th smallest held-out score, up or down: `shift_` = t - the training percentile;
s is left as it was.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: numpy is imported in the functions that use it
    import numpy as np

from .base import Detector, FitContext, NotFittedError, check_features, scalar
from .threshold import ShiftThreshold, check_percentile


def energy(logits, temperature: float = 1.0) -> np.ndarray:
    """-T * logsumexp(logits / T) per row, computed stably (float64)."""
    import numpy as np
    z = check_features(logits, name="logits") / temperature
    m = z.max(axis=1)
    return -temperature * (m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


class EnergyDetector(Detector):
    """Fit on the training logits; score(logits=...) -> 1 + (E - t) / s (> 1 = rejected)."""

    name = "energy"
    inputs = ("logits",)
    supervised = False
    state_file = "detector-energy.npz"
    summary = "1 + (energy - threshold) / spread, energy = -logsumexp(logits)"

    def __init__(self, percentile: float = 97.5, temperature: float = 1.0):
        self.percentile = percentile
        self.temperature = temperature

    def _fit(self, context: FitContext) -> "EnergyDetector":
        import numpy as np
        check_percentile(self.percentile)
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        e = energy(context.logits, self.temperature)
        if len(e) == 0:
            raise ValueError("the energy detector needs at least one training image")
        self.classes_ = int(np.asarray(context.logits).shape[1])
        self.cutoff_ = ShiftThreshold.from_training(e, self.percentile)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "cutoff_"):
            raise NotFittedError("this EnergyDetector is not fitted yet; call fit() first")

    @property
    def threshold_(self) -> float:
        return self.cutoff_.value

    @property
    def base_threshold_(self) -> float:
        return self.cutoff_.base

    @property
    def train_median_(self) -> float:
        return self.cutoff_.median

    @property
    def shift_(self) -> float:
        return self.cutoff_.shift

    @property
    def spread_(self) -> float:
        return self.cutoff_.spread

    def move_threshold(self, cut: float) -> None:
        """Calibration: t moves to the energy whose score was `cut` (E = t + (cut - 1) s)."""
        self._check_fitted()
        self.cutoff_.move(cut)

    def calibration_metrics(self) -> dict[str, float]:
        return {"energy_threshold_shift": float(self.shift_)}

    def energies(self, logits) -> np.ndarray:
        self._check_fitted()
        z = check_features(logits, name="logits", dim=self.classes_)
        return energy(z, self.temperature)

    def score(self, features=None, logits=None) -> np.ndarray:
        raw = self.energies(logits)  # checks it is fitted
        return self.cutoff_.normalise(raw)

    def to_arrays(self) -> dict[str, np.ndarray]:
        import numpy as np
        self._check_fitted()
        return {
            "percentile": np.array(float(self.percentile)),
            "temperature": np.array(float(self.temperature)),
            "classes": np.array(self.classes_, dtype=np.int64),
            "train_median": np.array(self.cutoff_.median),
            "base_threshold": np.array(self.cutoff_.base),
            "shift": np.array(self.cutoff_.shift),
            "spread": np.array(self.cutoff_.spread),
        }

    def settings(self) -> dict:
        self._check_fitted()
        return {"percentile": float(self.percentile), "temperature": float(self.temperature),
                "threshold": self.threshold_, "threshold_shift": self.shift_, "spread": self.spread_}

    @classmethod
    def from_state(cls, arrays, settings: dict | None = None) -> "EnergyDetector":
        det = cls(percentile=float(arrays["percentile"]), temperature=float(arrays["temperature"]))
        det.classes_ = int(arrays["classes"])
        det.cutoff_ = ShiftThreshold.from_arrays(arrays)
        return det

    @classmethod
    def check_state(cls, arrays, feature_dim: int, num_classes: int) -> None:
        scalar(arrays, "percentile", low=0, high=100)
        scalar(arrays, "temperature", low=0)
        classes = scalar(arrays, "classes", kind="i")
        if classes != num_classes:
            raise ValueError(f"it was fitted on {classes:g} classes, the model has {num_classes}")
        for key in ("train_median", "base_threshold"):
            scalar(arrays, key)
        scalar(arrays, "shift")  # a held-out calibration may lower t (models before it only raised it)
        scalar(arrays, "spread", low=0)
