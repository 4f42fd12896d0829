"""The paper's semi-supervised detector: class Gaussians on deep features.

For each class k: a mean mu_k, a covariance and a threshold t_k at the given percentile of the
Mahalanobis distances of that class's own training features. A sample is out-of-distribution
when d_k(x) > t_k for every class k. The score is min_k d_k(x) / t_k: higher means more
out-of-distribution, and score > 1 is exactly the paper's rule.

Covariance: "tied" (default) pools the class-centred features of all classes into one
covariance; "class" fits one per class, as the paper does. Both are shrunk towards a scaled
identity with the Ledoit-Wolf estimate, so they stay invertible with fewer images than
dimensions. Measured on MNIST (docs/method.md): with 30 images a class in 120 dimensions the
per-class estimate is poor (AUROC 0.981 vs 0.996 tied), and with 800 a class the two are on a
par.

`threshold_scale_` (default 1) multiplies every threshold; `calibrate()` sets it from held-out
images (split conformal, detectors/calibration.py): a class's own training distances are
optimistic, the more so the fewer images it has, and after calibration the share of new
in-distribution images rejected is the 1 - percentile promised.
"""
from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: numpy is imported in the functions that use it
    import numpy as np

from .base import Detector, FitContext, NotFittedError, check_features
from .threshold import FLOOR, check_percentile, moved_scale

log = logging.getLogger(__name__)

COVARIANCES = ("tied", "class")
# Below this many images a class's own percentile is meaningless; its threshold is taken from
# the distances of all training images to their own class instead.
MIN_IMAGES_FOR_OWN_THRESHOLD = 10
SWEEP_PERCENTILES = tuple(i / 2 for i in range(201))  # evaluate's ROC: 0, 0.5, ..., 100


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of the rows of `x` and the shrinkage used (0..1)."""
    import numpy as np
    xc = x - x.mean(axis=0)
    return ledoit_wolf_from(len(x), xc.T @ xc, float(np.sum(np.sum(xc**2, axis=1) ** 2)))


def ledoit_wolf_from(n: int, scatter: np.ndarray, quartic: float) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf from sufficient statistics of n centred rows xc: scatter = sum xc xc^T and
    quartic = sum ||xc||^4 (both additive over chunks and processes)."""
    import numpy as np
    p = scatter.shape[0]
    emp = scatter / max(n, 1)
    mu = np.trace(emp) / p
    if n < 2 or mu <= 0:
        return emp, 1.0
    beta_ = quartic / n  # = sum((xc**2).T @ (xc**2)) / n
    delta_ = np.sum(emp**2)
    beta = (beta_ / n - delta_ / n) / p
    delta = (delta_ - 2 * mu * np.trace(emp) + p * mu**2) / p
    shrinkage = 0.0 if delta <= 0 else float(min(beta, delta) / delta)
    shrunk = (1 - shrinkage) * emp
    shrunk.flat[:: p + 1] += shrinkage * mu
    return shrunk, shrinkage


# ---- sufficient statistics (one pass each, additive over chunks and processes) ---------------
FIT_CHUNK_ROWS = 16384  # rows converted to float64 at a time


def first_moments(x: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per-class counts and feature sums of one chunk."""
    import numpy as np
    x = np.asarray(x, dtype=np.float64)
    sums = np.zeros((num_classes, x.shape[1]))
    np.add.at(sums, y, x) if len(x) < 64 else _class_sums(sums, x, y)
    return {"count": np.bincount(y, minlength=num_classes).astype(np.float64), "sum": sums}


def _class_sums(sums: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    import numpy as np
    for j in np.unique(y):
        sums[j] += x[y == j].sum(axis=0)


def second_moments(
    x: np.ndarray, y: np.ndarray, means: np.ndarray, grand_mean: np.ndarray, per_class: bool
) -> dict[str, np.ndarray]:
    """Around the class means: the pooled scatter and sum ||xc||^4 (Ledoit-Wolf), per class too
    when `per_class`, and sum (x - grand mean)^2 per dimension (the ridge's scale)."""
    import numpy as np
    x = np.asarray(x, dtype=np.float64)
    xc = x - means[y]
    q = np.sum(xc**2, axis=1) ** 2
    out = {"scatter": xc.T @ xc, "quartic": np.array(q.sum()), "dev2": ((x - grand_mean) ** 2).sum(axis=0)}
    if per_class:
        k, d = means.shape
        out["class_scatter"] = np.zeros((k, d, d))
        out["class_quartic"] = np.zeros(k)
        for j in np.unique(y):
            rows = xc[y == j]
            out["class_scatter"][j] = rows.T @ rows
            out["class_quartic"][j] = q[y == j].sum()
    return out


def _add(total: dict | None, part: dict) -> dict:
    import numpy as np
    if total is None:
        return {k: np.array(v, dtype=np.float64, copy=True) for k, v in part.items()}
    for k, v in part.items():
        total[k] += v
    return total


def _chunks_of(x: np.ndarray, y: np.ndarray, rows: int = FIT_CHUNK_ROWS):
    for start in range(0, len(x), rows):
        yield x[start : start + rows], y[start : start + rows]


def _precision(cov: np.ndarray, ridge: float) -> np.ndarray:
    import numpy as np
    cov = cov.copy()
    cov.flat[:: cov.shape[0] + 1] += ridge
    precision = np.linalg.inv(cov)
    return (precision + precision.T) / 2


class MahalanobisDetector(Detector):
    """Fit on (features, labels); score(features) -> min_k d_k / t_k (higher = more OOD)."""

    name = "mahalanobis"
    inputs = ("features",)
    supervised = False
    state_file = "detector.npz"
    summary = "min over classes of mahalanobis distance / class threshold"

    curve_setting = "percentile"

    def __init__(self, percentile: float = 97.5, covariance: str = "tied"):
        self.percentile = percentile
        self.covariance = covariance

    @classmethod
    def for_context(cls, context: FitContext) -> "MahalanobisDetector":
        return cls(percentile=context.percentile, covariance=context.covariance)

    # ---- fitting -------------------------------------------------------------------------
    def _fit(self, context: FitContext) -> "MahalanobisDetector":
        import numpy as np
        features, labels, num_classes = context.features, context.labels, context.classes()
        if labels is None:
            raise ValueError("the Mahalanobis detector needs the class labels of its training features")
        if hasattr(features, "detach"):  # a torch tensor
            features = features.detach().cpu().numpy()
        x = np.asarray(features) if features is not None else check_features(None)
        if x.ndim != 2 or x.dtype.kind not in "fiu":
            x = check_features(x)  # says what is wrong
        y = np.asarray(labels, dtype=np.int64)
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels must have one entry per feature row, got {y.shape} for {x.shape[0]} rows")
        k = int(num_classes if num_classes is not None else y.max() + 1)
        # float32 features stay float32; each chunk is checked and converted on its own
        return self.fit_chunks(lambda: ((check_features(a), b) for a, b in _chunks_of(x, y)), k)

    def fit_chunks(self, chunks, num_classes: int, reduce=None, gather=None) -> "MahalanobisDetector":
        """Fit from (features, labels) chunks without holding the features in float64 at once.

        `chunks()` gives a fresh iterable of (features (n, d), int labels (n,)) each time it is
        called; it is read three times: class sums, the scatter around the class means (and
        what Ledoit-Wolf needs), the training distances. Many processes (torchrun): each passes
        its own unpadded shard, `reduce(dict of arrays) -> the same dict summed over processes`
        and `gather(array) -> the arrays of all processes concatenated in rank order`. Equal to
        fit() on all the rows in one process (up to float64 rounding).
        """
        import numpy as np
        check_percentile(self.percentile)
        if self.covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {', '.join(COVARIANCES)}, got {self.covariance!r}")
        reduce = reduce or (lambda stats: stats)
        gather = gather or (lambda arr: arr)
        k = int(num_classes)
        first = None
        for x, y in chunks():
            first = _add(first, first_moments(x, np.asarray(y, dtype=np.int64), k))
        if first is None:
            raise ValueError("no training features")
        first = reduce(first)
        counts = first["count"].round().astype(np.int64)
        if (counts == 0).any():
            empty = np.flatnonzero(counts == 0).tolist()
            raise ValueError(f"classes {empty} have no training features")
        n, d = int(counts.sum()), first["sum"].shape[1]
        means = first["sum"] / counts[:, None]
        grand_mean = first["sum"].sum(axis=0) / n
        per_class = self.covariance == "class"
        second = None
        for x, y in chunks():
            second = _add(second, second_moments(x, np.asarray(y, dtype=np.int64), means, grand_mean, per_class))
        second = reduce(second)
        # A ridge relative to the overall feature scale guarantees positive definiteness.
        ridge = 1e-6 * max(float(np.mean(second["dev2"] / n)), 1e-12)
        pooled_cov, pooled_shrinkage = ledoit_wolf_from(n, second["scatter"], float(second["quartic"]))

        if self.covariance == "tied":
            precisions = _precision(pooled_cov, ridge)[None]
            shrinkages = np.array([pooled_shrinkage])
            small = n - k <= d
        else:
            precisions = np.empty((k, d, d))
            shrinkages = np.empty(k)
            for j in range(k):
                # A one-image class has no spread of its own: it borrows the pooled covariance.
                cov, shrinkages[j] = (
                    ledoit_wolf_from(int(counts[j]), second["class_scatter"][j], float(second["class_quartic"][j]))
                    if counts[j] >= 2 else (pooled_cov, 1.0)
                )
                precisions[j] = _precision(cov, ridge)
            small = (counts <= d).any()
        if small:
            warnings.warn(
                f"fewer training images than the {d} feature dimensions for a {self.covariance} "
                "covariance; it relies on shrinkage", stacklevel=2
            )

        self.means_, self.precisions_, self.shrinkage_ = means, precisions, shrinkages
        self._whiten = None
        self.class_counts_ = counts
        self.threshold_scale_ = 1.0
        own, labels = [], []
        for x, y in chunks():
            y = np.asarray(y, dtype=np.int64)
            own.append(self._distances(np.asarray(x, dtype=np.float64))[np.arange(len(y)), y])
            labels.append(y)
        self.train_distances_ = gather(np.concatenate(own))
        self.train_labels_ = gather(np.concatenate(labels))
        self.thresholds_ = self.thresholds_at(self.percentile)
        return self

    def set_threshold_scale(self, scale: float) -> "MahalanobisDetector":
        """Multiply every threshold by `scale` (a calibration measured on held-out images)."""
        import numpy as np
        self._check_fitted()
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"threshold scale must be a positive number, got {scale}")
        self.threshold_scale_ = float(scale)
        self.thresholds_ = self.thresholds_at(self.percentile)
        return self

    def move_threshold(self, cut: float) -> None:
        """Calibration: every threshold times `cut` (a held-out score of `cut` becomes 1)."""
        self.set_threshold_scale(moved_scale(self.threshold_scale_, cut))

    def calibration_metrics(self) -> dict[str, float]:
        return {"threshold_scale": float(self.threshold_scale_)}

    def thresholds_at(self, percentile: float) -> np.ndarray:
        """Per-class thresholds at `percentile` of each class's own training distances.

        This is how the paper moves all thresholds together to draw a ROC curve.
        """
        import numpy as np
        self._check_fitted()
        pooled = np.percentile(self.train_distances_, percentile)
        out = np.empty(len(self.means_))
        for j in range(len(self.means_)):
            own = self.train_distances_[self.train_labels_ == j]
            out[j] = pooled if len(own) < MIN_IMAGES_FOR_OWN_THRESHOLD else np.percentile(own, percentile)
        return np.maximum(out * self.threshold_scale_, FLOOR)

    # ---- scoring -------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise NotFittedError("this MahalanobisDetector is not fitted yet; call fit() first")

    def _distances(self, x: np.ndarray) -> np.ndarray:
        import numpy as np
        if len(self.precisions_) == 1:
            return self._tied_distances(x)
        out = np.empty((x.shape[0], len(self.means_)))
        for j, (mu, prec) in enumerate(zip(self.means_, self.precisions_, strict=True)):
            diff = x - mu
            out[:, j] = np.einsum("nd,nd->n", diff @ prec, diff)  # a BLAS matmul, not a generic einsum
        return np.sqrt(np.maximum(out, 0.0))

    def _tied_distances(self, x: np.ndarray) -> np.ndarray:
        # One shared precision P = L L^T: whiten once (z = x L), then d_j^2 = ||z - mu_j L||^2.
        # One n x d x d product instead of one per class.
        import numpy as np
        whiten = getattr(self, "_whiten", None)
        if whiten is None:
            whiten = np.linalg.cholesky(self.precisions_[0])
            self._whiten, self._white_means = whiten, self.means_ @ whiten
        z = x @ whiten
        m = self._white_means
        d2 = (z * z).sum(axis=1)[:, None] - 2.0 * z @ m.T + (m * m).sum(axis=1)[None, :]
        return np.sqrt(np.maximum(d2, 0.0))

    def distances(self, features) -> np.ndarray:
        """Mahalanobis distance of each row to each class: shape (n, classes)."""
        self._check_fitted()
        return self._distances(check_features(features, dim=self.means_.shape[1]))

    def ratios(self, features) -> np.ndarray:
        """d_k / t_k of each row to each class: shape (n, classes); score = min, nearest = argmin."""
        return self.distances(features) / self.thresholds_

    def score(self, features=None, logits=None, *, thresholds: np.ndarray | None = None) -> np.ndarray:
        """min_k d_k / t_k per row. Higher = more out-of-distribution; > 1 = rejected."""
        self._check_fitted()
        t = self.thresholds_ if thresholds is None else thresholds
        return (self.distances(features) / t).min(axis=1)

    def nearest(self, features) -> np.ndarray:
        """Index of the class whose threshold the row is least far outside (or most inside)."""
        return self.ratios(features).argmin(axis=1)

    def own_curve(self, inside: dict, outside: dict) -> dict:
        """The paper's ROC: every class threshold at the same percentile of its own training
        distances (0..100, then beyond every distance), from (1, 1) to (0, 0)."""
        import numpy as np
        d_in, d_ood = self.distances(inside["features"]), self.distances(outside["features"])
        fpr, tpr, setting = [1.0], [1.0], ["zero"]  # thresholds 0: everything rejected
        for p in SWEEP_PERCENTILES:
            t = self.thresholds_at(float(p))
            fpr.append(float(np.mean((d_in / t).min(1) > 1)))
            tpr.append(float(np.mean((d_ood / t).min(1) > 1)))
            setting.append(f"{p:g}")
        fpr.append(0.0)  # thresholds beyond every distance: nothing rejected
        tpr.append(0.0)
        setting.append("beyond_max")
        return {"fpr": np.array(fpr), "tpr": np.array(tpr), "setting": np.array(setting)}

    # ---- persistence ---------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        import numpy as np
        self._check_fitted()
        return {
            "percentile": np.array(self.percentile),
            "covariance": np.array(self.covariance),
            "threshold_scale": np.array(self.threshold_scale_),
            "means": self.means_,
            "precisions": self.precisions_,
            "shrinkage": self.shrinkage_,
            "class_counts": self.class_counts_,
            "thresholds": self.thresholds_,
            "train_distances": self.train_distances_,
            "train_labels": self.train_labels_,
        }

    def settings(self) -> dict:
        return {"percentile": self.percentile, "covariance": self.covariance,
                "threshold_scale": float(getattr(self, "threshold_scale_", 1.0))}

    @classmethod
    def from_state(cls, arrays, settings: dict | None = None) -> "MahalanobisDetector":
        """Rebuild from to_arrays()'s arrays (they hold the settings too; `settings` is not needed)."""
        import numpy as np
        det = cls(percentile=float(arrays["percentile"]), covariance=str(arrays["covariance"]))
        det.threshold_scale_ = float(arrays["threshold_scale"])
        det.means_ = np.asarray(arrays["means"], dtype=np.float64)
        det.precisions_ = np.asarray(arrays["precisions"], dtype=np.float64)
        det.shrinkage_ = np.asarray(arrays["shrinkage"])
        det.class_counts_ = np.asarray(arrays["class_counts"])
        det.thresholds_ = np.asarray(arrays["thresholds"], dtype=np.float64)
        det.train_distances_ = np.asarray(arrays["train_distances"], dtype=np.float64)
        det.train_labels_ = np.asarray(arrays["train_labels"], dtype=np.int64)
        k, d = det.means_.shape
        expected = 1 if det.covariance == "tied" else k
        if det.precisions_.shape != (expected, d, d) or det.thresholds_.shape != (k,):
            raise ValueError("detector arrays have inconsistent shapes")
        return det
