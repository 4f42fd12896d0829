"""What every detector is: the protocol the registry, fit, scan, evaluate and the model files use.

A detector has
- `name`: its registry key, which is also its `--method` value, its column in `evaluate` and
  (through `state_file`) its file in the model directory;
- `inputs`: which network outputs it scores, a subset of ("features", "logits");
- `supervised`: False when `fit` fits it from the training images alone (its constructor then
  takes `percentile=`, the model's --percentile); True when it needs examples of what does not
  belong (fitted by `fit --reject-dir` / `fit-head`);
- `fit(features=..., logits=..., labels=..., num_classes=...)`: inputs it does not use are ignored;
- `score(features=..., logits=...)`: the normalised score, higher = more out-of-distribution,
  > 1 = rejected;
- its state: `to_arrays()` (numbers, saved pickle-free), `settings()` (JSON, in config.json),
  `from_state(arrays, settings)` to rebuild it and `check_state(...)` to validate loaded arrays;
- `calibrate(features=..., logits=...)`: held-out in-distribution images move the threshold so
  that new in-distribution images are rejected at the rate the percentile promises (split
  conformal, detectors/calibration.py); a detector with a percentile threshold only implements
  `move_threshold(cut)` (the score `cut` becomes 1). Supervised detectors are not calibrated.

Adding a detector: a module with a subclass of Detector, its tests, and one line in
registry.DETECTORS; tests/test_detectors.py then checks it against this protocol.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # annotations only: numpy is imported in the functions that use it
    import numpy as np

    from .calibration import Cut

from ..errors import ImgcleanError

INPUTS = ("features", "logits")


class NotFittedError(ImgcleanError, RuntimeError):
    """A detector method that needs fit() was called before it."""


def check_features(features, name: str = "features", dim: int | None = None) -> np.ndarray:
    """Return `features` as a finite 2-D float64 array, or raise ValueError saying what is wrong."""
    import numpy as np
    if hasattr(features, "detach"):  # a torch tensor
        features = features.detach().cpu().numpy()
    if features is None:
        raise ValueError(f"this detector needs {name}")
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples x dimensions), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} have {arr.shape[1]} dimensions, the detector was fitted on {dim}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr


class Detector:
    """Base class of the registered detectors (see the module docstring for the protocol)."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    supervised: ClassVar[bool] = False
    state_file: ClassVar[str]  # its file in a model directory: .npz (numpy) or .safetensors
    summary: ClassVar[str] = ""  # one line: what the score is

    def fit(self, features=None, labels=None, *, logits=None, num_classes: int | None = None) -> "Detector":
        raise NotImplementedError

    def score(self, features=None, logits=None) -> np.ndarray:
        """Normalised score per row: higher = more out-of-distribution, > 1 = rejected."""
        raise NotImplementedError

    def predict(self, features=None, logits=None) -> np.ndarray:
        """True where the row is rejected (score > 1)."""
        return self.score(features=features, logits=logits) > 1.0

    def calibrate(self, features=None, logits=None) -> "Cut | None":
        """Move the threshold with held-out in-distribution images (split conformal: the
        ceil((n + 1) p)-th smallest of their normalised scores becomes 1, so a new image of the
        same distribution is rejected with probability at most 1 - p). Returns the Cut (what was
        done and the false-reject rate it promises), None when there is nothing to calibrate on.
        """
        from .calibration import conformal_cut

        scores = self.score(features=features, logits=logits)
        if len(scores) == 0:
            return None
        cut = conformal_cut(scores, self.percentile)
        self.move_threshold(cut.cut)
        return cut

    def move_threshold(self, cut: float) -> None:
        """Move the threshold so that a row that scored `cut` now scores exactly 1 (the order
        of scores is kept; rows above `cut` are the ones rejected)."""
        raise NotImplementedError(f"{type(self).__name__} has no threshold to move")

    def to_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def settings(self) -> dict:
        return {}

    @classmethod
    def from_state(cls, arrays, settings: dict | None = None) -> "Detector":
        raise NotImplementedError

    @classmethod
    def check_state(cls, arrays: dict[str, np.ndarray], feature_dim: int, num_classes: int) -> None:
        """Raise ValueError (one line, what is wrong) when loaded arrays cannot be this detector's."""


def scalar(arrays, key: str, kind: str = "f", low: float | None = None, high: float | None = None,
           low_open: bool = True) -> float:
    """A finite 0-d number from `arrays`, checked; ValueError naming `key` otherwise (check_state's helper)."""
    import numpy as np
    if key not in arrays:
        raise ValueError(f"it lacks {key}")
    a = np.asarray(arrays[key])
    if a.shape != () or a.dtype.kind not in ("iu" if kind == "i" else "fiu"):
        raise ValueError(f"{key} must be a single {'whole ' if kind == 'i' else ''}number")
    v = float(a)
    if not np.isfinite(v):
        raise ValueError(f"{key} is not finite")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{key} must be {'above' if low_open else 'at least'} {low:g}, found {v:g}")
    if high is not None and v > high:
        raise ValueError(f"{key} must be at most {high:g}, found {v:g}")
    return v
