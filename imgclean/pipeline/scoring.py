"""From a network's outputs to a verdict: (predicted class, nearest class, score) per image.

The score is the chosen method's normalised score (detectors/registry.py): higher = more
out-of-distribution, > 1 = rejected. The nearest class is the one whose Mahalanobis threshold
the image is least far outside, whatever the method.
"""
from __future__ import annotations

import os

import numpy as np

from ..detectors import registry


def check_method(bundle, method: str) -> None:
    """ValueError when `method` is unknown or needs a detector the model does not have."""
    if method not in registry.method_names():
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(registry.method_names())}")
    lacking = registry.missing(method, bundle.detectors)
    if not lacking:
        return
    where = f" {os.fsdecode(bundle.path)}" if bundle.path else ""
    name = lacking[0]
    if registry.detector_class(name).supervised:
        raise ValueError(
            f"the model{where} has no supervised {name}, which --method {method} needs; "
            f"add one with `imgclean fit-head --reject-dir DIR -m MODEL`"
        )
    raise ValueError(
        f"the model{where} has no {name} detector, which --method {method} needs (it was fitted by an "
        f"older imgclean); refit it with `imgclean fit TRAIN_DIR -o MODEL`"
    )


def score_outputs(bundle, method: str, logits: np.ndarray, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted class index, nearest class index, score) from a batch's logits and deep features."""
    ratios = bundle.detector.ratios(feats)
    score = registry.score_method(
        bundle.detectors, method, features=feats, logits=logits, known={"mahalanobis": ratios.min(1)}
    )
    return logits.argmax(1), ratios.argmin(1), score
