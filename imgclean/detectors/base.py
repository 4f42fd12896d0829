"""Shared pieces of the detectors."""
from __future__ import annotations

import numpy as np
from ..errors import ImgcleanError


class NotFittedError(ImgcleanError, RuntimeError):
    """A detector method that needs fit() was called before it."""


def check_features(features, name: str = "features", dim: int | None = None) -> np.ndarray:
    """Return `features` as a finite 2-D float64 array, or raise ValueError saying what is wrong."""
    if hasattr(features, "detach"):  # a torch tensor
        features = features.detach().cpu().numpy()
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples x dimensions), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} have {arr.shape[1]} dimensions, the detector was fitted on {dim}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr
