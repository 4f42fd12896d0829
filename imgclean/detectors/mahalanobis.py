"""The paper's semi-supervised detector: per-class Gaussians on deep features.

For each class k: a mean mu_k, a covariance S_k and a threshold t_k at the given percentile of
the Mahalanobis distances of that class's own training features. A sample is out-of-distribution
when d_k(x) > t_k for every class k. The score is min_k d_k(x) / t_k: higher means more
out-of-distribution, and score > 1 is exactly the paper's rule.

Covariances are shrunk towards a scaled identity with the Ledoit-Wolf estimate, which keeps them
invertible when a class has fewer images than feature dimensions.

The "own distances" behind the thresholds are cross-fitted by default: each training point's
distance comes from a Gaussian fitted without it (K folds per class). In-sample distances (the
paper's rule, cv_folds=0) are biased low when a class has not many more images than feature
dimensions, and then reject far more than (100 - percentile)% of new in-distribution images.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

from .base import NotFittedError, check_features

log = logging.getLogger(__name__)

# Below this many images a class's own percentile is meaningless; its threshold is taken from
# the distances of all training images to their own class instead.
MIN_IMAGES_FOR_OWN_THRESHOLD = 10


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of the rows of `x` and the shrinkage used (0..1)."""
    n, p = x.shape
    xc = x - x.mean(axis=0)
    emp = xc.T @ xc / n
    mu = np.trace(emp) / p
    if n < 2 or mu <= 0:
        return emp, 1.0
    x2 = xc**2
    beta_ = np.sum(x2.T @ x2) / n
    delta_ = np.sum(emp**2)
    beta = (beta_ / n - delta_ / n) / p
    delta = (delta_ - 2 * mu * np.trace(emp) + p * mu**2) / p
    shrinkage = 0.0 if delta <= 0 else float(min(beta, delta) / delta)
    shrunk = (1 - shrinkage) * emp
    shrunk.flat[:: p + 1] += shrinkage * mu
    return shrunk, shrinkage


class MahalanobisDetector:
    """Fit on (features, labels); score(features) -> min_k d_k / t_k (higher = more OOD)."""

    def __init__(self, percentile: float = 97.5, cv_folds: int = 10):
        self.percentile = percentile
        self.cv_folds = cv_folds

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, features, labels, num_classes: int | None = None) -> "MahalanobisDetector":
        if not 0.0 < self.percentile < 100.0:
            raise ValueError(f"percentile must be between 0 and 100, got {self.percentile}")
        x = check_features(features)
        y = np.asarray(labels, dtype=np.int64)
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels must have one entry per feature row, got {y.shape} for {x.shape[0]} rows")
        k = int(num_classes if num_classes is not None else y.max() + 1)
        counts = np.bincount(y, minlength=k)
        if (counts == 0).any():
            empty = np.flatnonzero(counts == 0).tolist()
            raise ValueError(f"classes {empty} have no training features")
        n, d = x.shape
        # A ridge relative to the overall feature scale guarantees positive definiteness.
        ridge = 1e-6 * max(float(np.mean(np.var(x, axis=0))), 1e-12)
        pooled_cov, _ = ledoit_wolf(x - self._class_means(x, y, k)[y]) if n > 1 else (np.eye(d), 1.0)

        means = np.empty((k, d))
        precisions = np.empty((k, d, d))
        shrinkages = np.empty(k)
        for j in range(k):
            means[j], precisions[j], shrinkages[j] = self._gaussian(x[y == j], ridge, pooled_cov)
        few = [j for j in range(k) if counts[j] <= d]
        if few:
            warnings.warn(
                f"{len(few)} class(es) have no more images than the {d} feature dimensions; "
                "their covariances rely on shrinkage", stacklevel=2
            )

        self.means_, self.precisions_, self.shrinkage_ = means, precisions, shrinkages
        self.class_counts_ = counts
        own = self._distances(x)[np.arange(n), y]
        if self.cv_folds >= 2:
            own = self._cross_fitted_distances(x, y, k, ridge, pooled_cov, own)
        self.train_distances_, self.train_labels_ = own, y
        self.thresholds_ = self.thresholds_at(self.percentile)
        return self

    @staticmethod
    def _gaussian(xj: np.ndarray, ridge: float, pooled_cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(mean, precision, shrinkage) of one class; one image borrows the pooled covariance."""
        d = xj.shape[1]
        if len(xj) >= 2:
            cov, shrinkage = ledoit_wolf(xj)
        else:
            cov, shrinkage = pooled_cov, 1.0
        cov = cov.copy()
        cov.flat[:: d + 1] += ridge
        precision = np.linalg.inv(cov)
        return xj.mean(axis=0), (precision + precision.T) / 2, shrinkage

    def _cross_fitted_distances(self, x, y, k, ridge, pooled_cov, in_sample) -> np.ndarray:
        """Each point's distance to its class Gaussian fitted on the other folds of that class."""
        out = in_sample.copy()
        rng = np.random.default_rng(0)
        for j in range(k):
            idx = np.flatnonzero(y == j)
            folds = min(self.cv_folds, len(idx))
            if folds < 2 or len(idx) < 3:
                continue  # too few images to hold any out; such classes use the pooled threshold
            assignment = rng.permutation(np.arange(len(idx)) % folds)
            for f in range(folds):
                held, kept = idx[assignment == f], idx[assignment != f]
                mu, prec, _ = self._gaussian(x[kept], ridge, pooled_cov)
                diff = x[held] - mu
                out[held] = np.sqrt(np.maximum(np.einsum("nd,de,ne->n", diff, prec, diff), 0.0))
        return out

    @staticmethod
    def _class_means(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
        return np.stack([x[y == j].mean(axis=0) for j in range(k)])

    def thresholds_at(self, percentile: float) -> np.ndarray:
        """Per-class thresholds at `percentile` of each class's own training distances.

        This is how the paper moves all thresholds together to draw a ROC curve.
        """
        self._check_fitted()
        pooled = np.percentile(self.train_distances_, percentile)
        out = np.empty(len(self.means_))
        for j in range(len(self.means_)):
            own = self.train_distances_[self.train_labels_ == j]
            few = len(own) < MIN_IMAGES_FOR_OWN_THRESHOLD
            out[j] = pooled if few else np.percentile(own, percentile)
        return np.maximum(out, 1e-12)

    # ---- scoring -------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise NotFittedError("this MahalanobisDetector is not fitted yet; call fit() first")

    def _distances(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], len(self.means_)))
        for j, (mu, prec) in enumerate(zip(self.means_, self.precisions_)):
            diff = x - mu
            out[:, j] = np.einsum("nd,nd->n", diff @ prec, diff)  # a BLAS matmul, not a generic einsum
        return np.sqrt(np.maximum(out, 0.0))

    def distances(self, features) -> np.ndarray:
        """Mahalanobis distance of each row to each class: shape (n, classes)."""
        self._check_fitted()
        return self._distances(check_features(features, dim=self.means_.shape[1]))

    def score(self, features, thresholds: np.ndarray | None = None) -> np.ndarray:
        """min_k d_k / t_k per row. Higher = more out-of-distribution; > 1 = rejected."""
        self._check_fitted()
        t = self.thresholds_ if thresholds is None else thresholds
        return (self.distances(features) / t).min(axis=1)

    def nearest(self, features) -> np.ndarray:
        """Index of the class whose threshold the row is least far outside (or most inside)."""
        return (self.distances(features) / self.thresholds_).argmin(axis=1)

    def predict(self, features) -> np.ndarray:
        """True where the row is out-of-distribution (beyond every class's threshold)."""
        return self.score(features) > 1.0

    # ---- persistence ---------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        return {
            "percentile": np.array(self.percentile),
            "cv_folds": np.array(self.cv_folds),
            "means": self.means_,
            "precisions": self.precisions_,
            "shrinkage": self.shrinkage_,
            "class_counts": self.class_counts_,
            "thresholds": self.thresholds_,
            "train_distances": self.train_distances_,
            "train_labels": self.train_labels_,
        }

    @classmethod
    def from_arrays(cls, arrays) -> "MahalanobisDetector":
        cv = int(arrays["cv_folds"]) if "cv_folds" in arrays else 0
        det = cls(percentile=float(arrays["percentile"]), cv_folds=cv)
        det.means_ = np.asarray(arrays["means"], dtype=np.float64)
        det.precisions_ = np.asarray(arrays["precisions"], dtype=np.float64)
        det.shrinkage_ = np.asarray(arrays["shrinkage"])
        det.class_counts_ = np.asarray(arrays["class_counts"])
        det.thresholds_ = np.asarray(arrays["thresholds"], dtype=np.float64)
        det.train_distances_ = np.asarray(arrays["train_distances"], dtype=np.float64)
        det.train_labels_ = np.asarray(arrays["train_labels"], dtype=np.int64)
        k, d = det.means_.shape
        if det.precisions_.shape != (k, d, d) or det.thresholds_.shape != (k,):
            raise ValueError("detector arrays have inconsistent shapes")
        return det
