"""From a network's outputs to a verdict: (predicted class, nearest class, score) per image.

The score is the chosen method's normalised score (detectors/registry.py): higher = more
out-of-distribution, > 1 = rejected. The nearest class is the one whose Mahalanobis threshold
the image is least far outside, whatever the method.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: numpy is imported in the functions that use it
    import numpy as np

from ...detectors import registry
from .base import Outcome


def check_method(bundle, method: str) -> None:
    """ValueError when `method` is unknown or needs a detector the model does not have."""
    if method not in registry.method_names():
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(registry.method_names())}")
    names = getattr(bundle, "detector_names", None)  # a lazy bundle's, without parsing the states
    lacking = registry.missing(method, bundle.detectors if names is None else names)
    if not lacking:
        return
    where = f" {os.fsdecode(bundle.path)}" if bundle.path else ""
    name = lacking[0]
    if registry.detector_class(name).supervised:
        raise ValueError(
            f"the model{where} has no supervised {name}, which --method {method} needs; "
            + ("learn it from a review with `imgclean learn QUARANTINE -m MODEL`" if name == "reviewed"
               else "add one with `imgclean fit-head --reject-dir DIR -m MODEL`")
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




def predict_scores(bundle, method: str, images: np.ndarray, device: str, batch_size: int | None):
    """(predicted class index, nearest class index, score) for uint8 images (the network must be
    prepared for inference: nn.runtime.prepare_for_inference)."""
    from ...nn.runtime import predict_arrays
    from ..blas import engage

    engage()  # a single_blas_thread() block waiting for numpy (pipeline/blas.py): loaded by now
    cfg = bundle.config
    logits, feats = predict_arrays(bundle.model, images, cfg["mean"], cfg["std"], device, batch_size=batch_size)
    return score_outputs(bundle, method, logits, feats)


def outcomes(decoded: list, score_arrays) -> list[Outcome]:
    """One Outcome per decode.Decoded, the decoded arrays scored with `score_arrays` in one call."""
    import numpy as np
    from ...data import OK
    from ...reports.records import OOD

    out: list[Outcome] = [Outcome(d.status, d.message, -1, -1, None) for d in decoded]
    good = [i for i, d in enumerate(decoded) if d.ok]
    if good:
        pred, near, score = score_arrays(np.stack([decoded[i].array for i in good]))
        for i, p, n, s in zip(good, np.asarray(pred).tolist(), np.asarray(near).tolist(),
                              np.asarray(score, dtype=float).tolist(), strict=True):
            out[i] = Outcome(OOD if s > 1.0 else OK, "", p, n, s)
    return out
