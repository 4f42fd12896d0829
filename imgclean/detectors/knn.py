"""k-nearest-neighbour distance on L2-normalised deep features (Sun, Ming, Zhu and Li, 2022,
"Out-of-distribution detection with deep nearest neighbors").

The bank is the training images' features, each scaled to unit length. A row's raw score is the
Euclidean distance from its (normalised) feature to its k-th nearest bank row; the threshold is
the model's percentile (97.5 by default) of the training images' own k-th-NN distances, each
computed leave-one-out (the image itself is excluded from its neighbours, or every training
image would find itself at distance 0 and the threshold would be far too tight). The normalised
score is distance / threshold: > 1 = rejected, like the Mahalanobis ratio. Leave-one-out makes a
training image's distance close to what a new image of the same distribution gets when the
features are not fitted to the training images; a trained network's are (its training images lie
closer together than new ones), so with held-out images `calibrate()` scales the threshold as
the other detectors do (split conformal, detectors/calibration.py).

k: 50 by default, the paper's setting for its smaller data set (CIFAR-10, 5,000 images a class),
and never more than the bank allows: at most bank rows - 1 and, when the class labels are given,
at most the smallest class's rows in the bank - 1. Beyond that the k-th neighbour of every image
of that class is by necessity an image of another class, and the score measures the distance
between classes rather than to the data: on the tests' 3 classes of about 22 images, k = 50
ranked the OOD blobs *below* the training images (AUROC about 0.1); capped at 21, AUROC 1.0.

Bounded: the bank keeps at most `max_bank` rows (50,000 by default, float32: 50,000 x 512
features is 100 MB), a uniform sample drawn with a fixed seed when there are more training images.
The search is numpy only (no faiss) and chunked: a block of queries against the whole bank, the
block sized so that its similarity matrix stays under CHUNK_BYTES (32 MiB). For unit vectors
||a - b||^2 = 2 - 2 a.b, so the k-th nearest row is the k-th largest dot product.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: numpy is imported in the functions that use it
    import numpy as np

from .base import Detector, FitContext, NotFittedError, check_features, scalar
from .threshold import RatioThreshold, check_percentile

DEFAULT_K = 50
MAX_BANK = 50_000
CHUNK_BYTES = 32 << 20
MAX_STORED_BANK = 2_000_000  # what a model file may hold at most (a larger max_bank through the API)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32."""
    import numpy as np
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def kth_distances(queries: np.ndarray, bank: np.ndarray, k: int, leave_one_out: bool = False,
                  chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """Distance of each (unit) query row to its k-th nearest (unit) bank row, chunked.

    leave_one_out: the queries are the bank itself, and row i does not count as its own neighbour.
    """
    import numpy as np
    n, m = len(queries), len(bank)
    rows = max(1, chunk_bytes // (4 * max(m, 1)))
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, rows):
        sims = queries[start : start + rows] @ bank.T  # (rows, m) float32
        if leave_one_out:
            idx = np.arange(start, min(start + rows, n))
            sims[idx - start, idx] = -np.inf
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]  # the k-th largest similarity
        out[start : start + rows] = np.sqrt(np.maximum(2.0 - 2.0 * kth.astype(np.float64), 0.0))
    return out


class KNNDetector(Detector):
    """Fit on the training features; score(features) -> k-th-NN distance / threshold (> 1 = rejected)."""

    name = "knn"
    inputs = ("features",)
    supervised = False
    state_file = "detector-knn.npz"
    summary = "distance to the k-th nearest training feature (L2-normalised) / threshold"

    def __init__(self, percentile: float = 97.5, k: int = DEFAULT_K, max_bank: int = MAX_BANK, seed: int = 0):
        self.percentile = percentile
        self.k = k
        self.max_bank = max_bank
        self.seed = seed

    def _fit(self, context: FitContext) -> "KNNDetector":
        import numpy as np
        check_percentile(self.percentile)
        features, labels = context.features, context.labels
        if self.k < 1 or self.max_bank < 2:
            raise ValueError(f"k must be at least 1 and max_bank at least 2, got {self.k} and {self.max_bank}")
        x = check_features(features)
        if len(x) < 2:
            raise ValueError("the KNN detector needs at least two training images")
        y = None if labels is None else np.asarray(labels)
        if y is not None and y.shape != (len(x),):
            raise ValueError(f"labels must have one entry per feature row, got {y.shape} for {len(x)} rows")
        self.training_rows_ = len(x)
        if len(x) > self.max_bank:
            keep = np.sort(np.random.default_rng(self.seed).choice(len(x), self.max_bank, replace=False))
            x, y = x[keep], (None if y is None else y[keep])
        self.bank_ = normalise(x)
        limit = len(self.bank_) - 1
        if y is not None:
            _, counts = np.unique(y, return_counts=True)
            limit = min(limit, int(counts.min()) - 1)
        self.k_ = int(max(1, min(self.k, limit)))
        self.train_distances_ = kth_distances(self.bank_, self.bank_, self.k_, leave_one_out=True)
        self.cutoff_ = RatioThreshold.from_training(self.train_distances_, self.percentile)
        return self

    @property
    def threshold_(self) -> float:
        return self.cutoff_.value

    def _check_fitted(self) -> None:
        if not hasattr(self, "bank_"):
            raise NotFittedError("this KNNDetector is not fitted yet; call fit() first")

    def distances(self, features) -> np.ndarray:
        """Distance of each row's normalised feature to its k-th nearest bank row."""
        self._check_fitted()
        x = check_features(features, dim=self.bank_.shape[1])
        return kth_distances(normalise(x), self.bank_, self.k_)

    def score(self, features=None, logits=None) -> np.ndarray:
        raw = self.distances(features)  # checks it is fitted
        return self.cutoff_.normalise(raw)

    def move_threshold(self, cut: float) -> None:
        """Calibration: the threshold times `cut` (a held-out distance that scored `cut` becomes 1)."""
        self._check_fitted()
        self.cutoff_.move(cut)

    def to_arrays(self) -> dict[str, np.ndarray]:
        import numpy as np
        self._check_fitted()
        return {
            "percentile": np.array(float(self.percentile)),
            "k": np.array(self.k_, dtype=np.int64),
            "threshold": np.array(self.threshold_),
            "training_rows": np.array(self.training_rows_, dtype=np.int64),
            "bank": self.bank_,
        }

    def settings(self) -> dict:
        self._check_fitted()
        return {"percentile": float(self.percentile), "k": self.k_, "k_asked": int(self.k), "max_bank": int(self.max_bank),
                "seed": int(self.seed), "bank_rows": int(len(self.bank_)), "training_rows": int(self.training_rows_),
                "threshold": self.threshold_}

    @classmethod
    def from_state(cls, arrays, settings: dict | None = None) -> "KNNDetector":
        import numpy as np
        settings = settings or {}
        det = cls(percentile=float(arrays["percentile"]), k=int(settings.get("k_asked", int(arrays["k"]))),
                  max_bank=int(settings.get("max_bank", MAX_BANK)), seed=int(settings.get("seed", 0)))
        det.bank_ = np.ascontiguousarray(arrays["bank"], dtype=np.float32)
        det.k_ = int(arrays["k"])
        det.cutoff_ = RatioThreshold(base=float(arrays["threshold"]))
        det.training_rows_ = int(arrays["training_rows"])
        return det

    @classmethod
    def check_state(cls, arrays, feature_dim: int, num_classes: int) -> None:
        import numpy as np
        scalar(arrays, "percentile", low=0, high=100)
        scalar(arrays, "threshold", low=0)
        if "bank" not in arrays:
            raise ValueError("it lacks bank")
        bank = arrays["bank"]
        if bank.dtype != np.float32 or bank.ndim != 2:
            raise ValueError(f"bank must be a float32 matrix, found {bank.dtype} with shape {bank.shape}")
        rows, dim = bank.shape
        if dim != feature_dim:
            raise ValueError(f"bank has {dim} features, the model has {feature_dim}")
        if not 2 <= rows <= MAX_STORED_BANK:
            raise ValueError(f"bank has {rows} rows, not between 2 and {MAX_STORED_BANK}")
        if not np.isfinite(bank).all():
            raise ValueError("bank holds NaN or infinite values")
        norms = np.linalg.norm(bank.astype(np.float64), axis=1)
        if not ((np.abs(norms - 1.0) < 1e-3) | (norms == 0)).all():
            raise ValueError("bank rows must be L2-normalised")
        k = scalar(arrays, "k", kind="i", low=1, low_open=False)
        if k > rows - 1:
            raise ValueError(f"k is {k:g}, more than the bank's {rows} rows allow")
        scalar(arrays, "training_rows", kind="i", low=rows, low_open=False)
