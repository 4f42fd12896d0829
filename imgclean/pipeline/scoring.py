"""From a network's outputs to a verdict: (predicted class, nearest class, score) per image.

The score is the chosen method's normalised score: higher = more out-of-distribution, > 1 =
rejected. The nearest class is the one whose Mahalanobis threshold the image is least far
outside.
"""
from __future__ import annotations

import numpy as np


def score_outputs(bundle, method: str, logits: np.ndarray, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted class index, nearest class index, score) from a batch's logits and deep features."""
    det = bundle.detector
    ratios = det.distances(feats) / det.thresholds_
    score = ratios.min(1)
    if method != "mahalanobis":
        head_score = bundle.head.normalised_score(feats)
        score = head_score if method == "head" else np.maximum(score, head_score)
    return logits.argmax(1), ratios.argmin(1), score
