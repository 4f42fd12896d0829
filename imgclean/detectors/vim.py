"""ViM: virtual-logit matching (Wang, Li, Feng and Zhang, 2022, "ViM: Out-Of-Distribution with
Virtual-logit Matching").

The classifier's logits are an affine map of a feature x, logits = W x + b (the fit context's
`classifier_weight` and `classifier_bias`: nn.models.last_layer). ViM moves the origin to
u = -pinv(W) b (where the logits vanish, so logits = W (x - u)), takes the principal subspace of
the training features centred there, and scores what of x - u lies outside it, the residual
r(x) = |(x - u) projected off that subspace|: features the classifier never saw vary in
directions the training images do not. The residual is turned into a virtual logit
alpha * r(x), alpha = sum of the training images' largest logits / sum of their residuals (so the
virtual logit is on the scale of the real ones), and ViM is the softmax probability of that
virtual class among the real ones. Its log-odds, the raw score here,

    raw = alpha * r(x) - logsumexp(logits(x))     (= log p_virtual - log(1 - p_virtual)),

is monotone in that probability and in the paper's energy form: higher = more out-of-distribution.

The feature x: the input of the classifier's last affine map. With --epochs 0 (Gaussian logits)
that is the deep feature row itself. For a trained classifier it is the backbone's output h before
its L2 normalisation (a linear neck, lenet's 84-unit layer, folded into W and b), which a scan
does not keep; it is recovered from the two outputs it does keep: the deep feature f = h / |h|
and the logits = |h| W f + b give |h| = <W f, logits - b> / |W f|^2 exactly (up to float32
rounding of the network's outputs).

Without a network (the API's keyword form, fit(features=..., logits=...)), W and b are estimated
from the training rows by least squares on the features (exact when the logits are an affine map
of the deep features, as the Gaussian logits of --epochs 0 are); `fit` always passes the network's.

D, the principal subspace's dimension: the rule of the paper's code, 1000 for features of 2048 or
more dimensions, 512 for 768 or more, half the dimension below that (lenet's 120: 60); never more
than the training images allow (rows - 1) and always at least one dimension left out of it.

Threshold: detectors/threshold.py's ShiftThreshold at the model's percentile of the training
images' raw scores, like energy: score = 1 + (raw - t) / s, > 1 rejects; held-out images move t
(split conformal, detectors/calibration.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: numpy is imported in the functions that use it
    import numpy as np

from .base import Detector, FitContext, NotFittedError, check_features, scalar
from .threshold import ShiftThreshold, check_percentile

INPUTS = ("features", "unnormalised")  # what x is (FitContext.classifier_input)


def principal_dim(dim: int, rows: int) -> int:
    """D for `dim`-dimensional features from `rows` training images (the module docstring's rule)."""
    d = 1000 if dim >= 2048 else 512 if dim >= 768 else dim // 2
    return max(1, min(d, dim - 1, rows - 1))


def estimated_last_layer(f: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of logits = W f + b by least squares over the rows (no network at hand)."""
    import numpy as np
    solution = np.linalg.lstsq(np.c_[f, np.ones(len(f))], z, rcond=None)[0]
    return np.ascontiguousarray(solution[:-1].T), solution[-1].copy()


def logsumexp(z: np.ndarray) -> np.ndarray:
    import numpy as np
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


class ViMDetector(Detector):
    """Fit on features, logits and the classifier's last layer; score -> 1 + (raw - t) / s (> 1 = rejected)."""

    name = "vim"
    inputs = ("features", "logits")
    supervised = False
    state_file = "detector-vim.npz"
    summary = "1 + (vim - threshold) / spread, vim = alpha * residual norm - logsumexp(logits)"

    def __init__(self, percentile: float = 97.5, dim: int | None = None):
        self.percentile = percentile
        self.dim = dim  # D; None: principal_dim's rule

    def _fit(self, context: FitContext) -> "ViMDetector":
        import numpy as np
        check_percentile(self.percentile)
        if context.classifier_input not in INPUTS:
            raise ValueError(f"classifier_input must be one of {', '.join(INPUTS)}, got {context.classifier_input!r}")
        f = check_features(context.features)
        z = check_features(context.logits, name="logits")
        if len(f) < 2 or len(z) != len(f):
            raise ValueError(f"ViM needs two or more rows of features and logits, got {len(f)} and {len(z)}")
        given = context.classifier_weight is not None and context.classifier_bias is not None
        w, b = (context.classifier_weight, context.classifier_bias) if given else estimated_last_layer(f, z)
        w = check_features(w, name="classifier_weight", dim=f.shape[1])
        b = np.asarray(b, dtype=np.float64)
        if z.shape[1] != len(w) or b.shape != (len(w),) or not np.isfinite(b).all():
            raise ValueError(f"the logits, weight and bias must be of the same {z.shape[1]} classes")
        self.weight_, self.bias_ = w, b
        self.input_ = context.classifier_input if given else "features"
        self.origin_ = -np.linalg.pinv(w) @ b
        x = self._inputs(f, z) - self.origin_
        d = int(self.dim) if self.dim is not None else principal_dim(f.shape[1], len(f))
        if not 1 <= d < f.shape[1]:
            raise ValueError(f"the principal dimension must be 1 to {f.shape[1] - 1}, got {d}")
        _, vectors = np.linalg.eigh(x.T @ x / len(x))  # ascending eigenvalues
        self.residual_basis_ = np.ascontiguousarray(vectors[:, : f.shape[1] - d])  # off the top-D subspace
        residual = np.linalg.norm(x @ self.residual_basis_, axis=1)
        self.alpha_ = self._alpha(z.max(axis=1), residual)
        self.cutoff_ = ShiftThreshold.from_training(self.alpha_ * residual - logsumexp(z), self.percentile)
        return self

    @staticmethod
    def _alpha(max_logits: np.ndarray, residual: np.ndarray) -> float:
        """sum(max logits) / sum(residuals), the paper's; the sum of |max logits| when that sum is
        not positive (shifted logits, such as the Gaussian ones), 1 when the residuals are all 0."""
        import numpy as np
        total = float(residual.sum())
        if not total > 0:
            return 1.0
        top = float(max_logits.sum())
        return (top if top > 0 else float(np.abs(max_logits).sum()) or total) / total

    def _inputs(self, f: np.ndarray, z: np.ndarray) -> np.ndarray:
        """x, the input of the classifier's last affine map (the module docstring says how)."""
        import numpy as np
        if self.input_ == "features":
            return f
        wf = f @ self.weight_.T
        norm2 = (wf * wf).sum(axis=1)
        scale = np.where(norm2 > 0, ((z - self.bias_) * wf).sum(axis=1) / np.where(norm2 > 0, norm2, 1.0), 0.0)
        return f * np.maximum(scale, 0.0)[:, None]

    def _check_fitted(self) -> None:
        if not hasattr(self, "cutoff_"):
            raise NotFittedError("this ViMDetector is not fitted yet; call fit() first")

    def raw_scores(self, features, logits) -> np.ndarray:
        """alpha * residual norm - logsumexp(logits) per row (higher = more out-of-distribution)."""
        import numpy as np
        self._check_fitted()
        f = check_features(features, dim=self.weight_.shape[1])
        z = check_features(logits, name="logits", dim=self.weight_.shape[0])
        if len(f) != len(z):
            raise ValueError(f"{len(f)} feature rows but {len(z)} logit rows")
        residual = np.linalg.norm((self._inputs(f, z) - self.origin_) @ self.residual_basis_, axis=1)
        return self.alpha_ * residual - logsumexp(z)

    def score(self, features=None, logits=None) -> np.ndarray:
        raw = self.raw_scores(features, logits)  # checks it is fitted
        return self.cutoff_.normalise(raw)

    def move_threshold(self, cut: float) -> None:
        self._check_fitted()
        self.cutoff_.move(cut)

    def calibration_metrics(self) -> dict[str, float]:
        return {"vim_threshold_shift": float(self.cutoff_.shift)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        import numpy as np
        self._check_fitted()
        return {
            "percentile": np.array(float(self.percentile)),
            "weight": self.weight_, "bias": self.bias_, "origin": self.origin_,
            "residual_basis": self.residual_basis_, "alpha": np.array(self.alpha_),
            "unnormalised": np.array(int(self.input_ == "unnormalised"), dtype=np.int64),
            "train_median": np.array(self.cutoff_.median), "base_threshold": np.array(self.cutoff_.base),
            "shift": np.array(self.cutoff_.shift), "spread": np.array(self.cutoff_.spread),
        }

    def settings(self) -> dict:
        self._check_fitted()
        dim = self.weight_.shape[1]
        return {"percentile": float(self.percentile), "principal_dim": int(dim - self.residual_basis_.shape[1]),
                "dim_asked": self.dim, "alpha": self.alpha_, "classifier_input": self.input_,
                "threshold": self.cutoff_.value, "threshold_shift": self.cutoff_.shift, "spread": self.cutoff_.spread}

    @classmethod
    def from_state(cls, arrays, settings: dict | None = None) -> "ViMDetector":
        import numpy as np
        asked = (settings or {}).get("dim_asked")
        det = cls(percentile=float(arrays["percentile"]), dim=int(asked) if isinstance(asked, int) else None)
        det.weight_ = np.asarray(arrays["weight"], dtype=np.float64)
        det.bias_ = np.asarray(arrays["bias"], dtype=np.float64)
        det.origin_ = np.asarray(arrays["origin"], dtype=np.float64)
        det.residual_basis_ = np.asarray(arrays["residual_basis"], dtype=np.float64)
        det.alpha_ = float(arrays["alpha"])
        det.input_ = "unnormalised" if int(arrays["unnormalised"]) else "features"
        det.cutoff_ = ShiftThreshold.from_arrays(arrays)
        return det

    @classmethod
    def check_state(cls, arrays, feature_dim: int, num_classes: int) -> None:
        import numpy as np
        scalar(arrays, "percentile", low=0, high=100)
        scalar(arrays, "alpha", low=0)
        scalar(arrays, "unnormalised", kind="i", low=0, high=1, low_open=False)
        for key in ("train_median", "base_threshold", "shift"):
            scalar(arrays, key)
        scalar(arrays, "spread", low=0)
        shapes = {"weight": (num_classes, feature_dim), "bias": (num_classes,), "origin": (feature_dim,)}
        for key, shape in shapes.items():
            if key not in arrays:
                raise ValueError(f"it lacks {key}")
            a = arrays[key]
            if a.shape != shape or a.dtype.kind != "f" or not np.isfinite(a).all():
                raise ValueError(f"{key} must be finite numbers of shape {shape}, found {a.dtype} {a.shape}")
        if "residual_basis" not in arrays:
            raise ValueError("it lacks residual_basis")
        basis = arrays["residual_basis"]
        if basis.ndim != 2 or basis.dtype.kind != "f" or basis.shape[0] != feature_dim \
                or not 1 <= basis.shape[1] < feature_dim or not np.isfinite(basis).all():
            raise ValueError(f"residual_basis must be finite numbers of shape ({feature_dim}, 1..{feature_dim - 1}), "
                             f"found {basis.dtype} {basis.shape}")
