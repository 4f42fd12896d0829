"""From a network's outputs to a verdict: (predicted class, nearest class, score) per image.

The score is the chosen method's normalised score: higher = more out-of-distribution, > 1 =
rejected. The nearest class is the one whose Mahalanobis threshold the image is least far
outside.
"""
from __future__ import annotations

import os

import numpy as np

from ..detectors.registry import method_names


def check_method(bundle, method: str) -> None:
    """ValueError when `method` is unknown or needs a head the model does not have."""
    if method not in method_names():
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(method_names())}")
    if method != "mahalanobis" and bundle.head is None:
        where = f" {os.fsdecode(bundle.path)}" if bundle.path else ""
        raise ValueError(
            f"the model{where} has no supervised head, which --method {method} needs; "
            f"add one with `imgclean fit-head --reject-dir DIR -m MODEL`"
        )


def score_outputs(bundle, method: str, logits: np.ndarray, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted class index, nearest class index, score) from a batch's logits and deep features."""
    det = bundle.detector
    ratios = det.distances(feats) / det.thresholds_
    score = ratios.min(1)
    if method != "mahalanobis":
        head_score = bundle.head.normalised_score(feats)
        score = head_score if method == "head" else np.maximum(score, head_score)
    return logits.argmax(1), ratios.argmin(1), score
