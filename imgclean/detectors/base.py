"""What every detector is: the protocol the registry, fit, scan, evaluate and the model files use.

A detector has
- `name`: its registry key, which is also its `--method` value, its column in `evaluate` and
  (through `state_file`) its file in the model directory;
- `inputs`: which network outputs it scores, a subset of ("features", "logits");
- `supervised`: False when `fit` fits it from the training images alone; True when it needs
  examples of what does not belong (fitted by `fit --reject-dir` / `fit-head`, `learn`);
- `for_context(context)`: a new, unfitted detector with the context's settings (the model's
  percentile; Mahalanobis its covariance);
- `fit(context)`: fits on a `FitContext` (the training images' features, logits, labels, class
  names, the percentile and the classifier's last layer); what it does not use it ignores. For
  convenience the context's fields may be passed as keywords instead (`fit(features=x, labels=y)`);
- `score(features=..., logits=...)`: the normalised score, higher = more out-of-distribution,
  > 1 = rejected;
- `calibrate(features=..., logits=...)`: held-out in-distribution images move the threshold so
  that new in-distribution images are rejected at the rate the percentile promises (split
  conformal, detectors/calibration.py); a detector with a percentile threshold (threshold.py: the
  shared percentile -> threshold -> spread -> shift arithmetic) only implements
  `move_threshold(cut)` (the score `cut` becomes 1). Supervised detectors return None;
- `calibration_metrics()`: what fit records in the model's metrics about its calibration;
- `own_curve(...)`: the ROC curve `evaluate` draws when the detector has a sweep of its own
  (Mahalanobis: the paper's percentile sweep), None for the plain ROC of the score;
- its state: `to_arrays()` (numbers, saved pickle-free), `settings()` (JSON, in config.json),
  `from_state(arrays, settings)` to rebuild it and `check_state(...)` to validate loaded arrays.

Adding a detector: a module with a subclass of Detector, its tests, and one line in
registry.REGISTERED; tests/test_detectors.py and tests/test_detector_contract.py then check it
against this protocol.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

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


@dataclass(slots=True, frozen=True)
class FitContext:
    """What a detector is fitted on: the training images' network outputs and the model's settings.

    `classifier_weight` (classes x dim) and `classifier_bias` (classes) are the classifier's last
    layer as one affine map, logits = W x + b (nn.models.last_layer): x is the deep feature row
    itself when `classifier_input` is "features" (the Gaussian logits of --epochs 0), or the
    backbone's output before its L2 normalisation, h = |h| * feature, when it is "unnormalised"
    (a trained classifier). None when the caller has no network (a detector that needs them says so).
    """

    features: Any = None  # (n, dim) deep features (L2-normalised)
    logits: Any = None  # (n, classes)
    labels: Any = None  # (n,) class indices
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    percentile: float = 97.5
    covariance: str = "tied"  # Mahalanobis: "tied" or "class"
    classifier_weight: Any = None
    classifier_bias: Any = None
    classifier_input: str = "features"

    def classes(self) -> int | None:
        """The number of classes: num_classes, else the class names', else the labels' largest + 1."""
        import numpy as np
        if self.num_classes is not None:
            return int(self.num_classes)
        if self.class_names:
            return len(self.class_names)
        if self.labels is not None and len(self.labels):
            return int(np.max(self.labels)) + 1
        return None

    def rows(self, index) -> "FitContext":
        """The same context on a subset of the rows (features, logits and labels indexed alike)."""
        def take(a):
            return None if a is None else a[index]
        return replace(self, features=take(self.features), logits=take(self.logits), labels=take(self.labels))


FIT_FIELDS = frozenset(f.name for f in fields(FitContext))


class Detector:
    """Base class of the registered detectors (see the module docstring for the protocol)."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    supervised: ClassVar[bool] = False
    state_file: ClassVar[str]  # its file in a model directory: .npz (numpy) or .safetensors
    summary: ClassVar[str] = ""  # one line: what the score is

    @classmethod
    def for_context(cls, context: FitContext) -> "Detector":
        """A new detector with the settings the context carries (unsupervised: its percentile)."""
        return cls() if cls.supervised else cls(percentile=context.percentile)

    def fit(self, context: FitContext | None = None, labels=None, num_classes: int | None = None, /,
            **given) -> "Detector":
        """Fit on `context`. Without one, the keywords that name FitContext fields (features,
        logits, labels, num_classes, ...) make it, and an array as first argument is the features
        (with labels and num_classes after it, the older positional form); other keywords are the
        detector's own fitting options (the learned rule's row weights, say)."""
        if not isinstance(context, FitContext):
            given = {"features": context, "labels": labels, "num_classes": num_classes, **given}
            context = FitContext(**{k: v for k, v in given.items() if k in FIT_FIELDS})
            given = {k: v for k, v in given.items() if k not in FIT_FIELDS}
        elif labels is not None or num_classes is not None:
            raise TypeError("fit(context) takes no labels or num_classes beside the context")
        return self._fit(context, **given)

    def _fit(self, context: FitContext, **options) -> "Detector":
        """The detector's own fitting (what `fit` calls with the context)."""
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

    def calibration_metrics(self) -> dict[str, float]:
        """Figures about the calibration for the model's metrics (fit), keyed as they are stored."""
        return {}

    def own_curve(self, inside: dict, outside: dict) -> dict | None:
        """A ROC curve of the detector's own ({"fpr", "tpr", "setting"}, from (1, 1) to (0, 0)) for
        the in- and out-of-distribution outputs ({"features", "logits"}), or None: evaluate then
        draws the plain ROC of the score."""
        return None

    curve_setting: ClassVar[str] = "score_threshold"  # what own_curve's settings are (evaluate's CSV header)

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
