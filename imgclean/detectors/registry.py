"""Which detectors exist, by name: the CLI's --method choices, evaluate's columns, the model's files.

A method is one registered detector or a combining rule over several ("both"). Adding a detector:
one new module with a `Detector` subclass (base.py), its tests, and one line in REGISTERED below;
fit, scan, evaluate, audit, the model files, `info`, the CLI's help and the registry's
parametrised tests then pick it up from here.

The combining rule lives here only: a combined method rejects an image when any member rejects
it, and its score is the largest of the members' normalised scores.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:  # annotations only: numpy is imported in the functions that use it
    import numpy as np

from .base import Detector, FitContext

# One line per detector, "module:Class" of a module in this package, in the order of evaluate's
# columns, of its ROC colours and of the model's files (mahalanobis first: it is always there,
# and gives the nearest class; a new detector goes at the end).
REGISTERED = (
    "mahalanobis:MahalanobisDetector",
    "energy:EnergyDetector",
    "knn:KNNDetector",
    "head:RejectHead",
    "reviewed:ReviewedDetector",
    "vim:ViMDetector",
)


def _load(entry: str) -> type[Detector]:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


# name -> class (imported here, at once: the same as plain imports, one line per detector above)
DETECTORS: dict[str, type[Detector]] = {cls.name: cls for cls in map(_load, REGISTERED)}
COMBINED: dict[str, tuple[str, ...]] = {"both": ("mahalanobis", "head")}
DEFAULT_METHOD = "mahalanobis"


def default_method(config: Mapping) -> str:
    """The method a scan uses when none is asked for: config.json's `default_method` (what
    `imgclean learn` chose on its evidence) when it names a known method, else DEFAULT_METHOD."""
    chosen = config.get("default_method") if isinstance(config, Mapping) else None
    return chosen if isinstance(chosen, str) and chosen in method_names() else DEFAULT_METHOD


def method_names() -> tuple[str, ...]:
    return (*DETECTORS, *COMBINED)


def members(method: str) -> tuple[str, ...]:
    """The detectors a method needs (itself, for a detector); KeyError for an unknown method."""
    if method in DETECTORS:
        return (method,)
    return COMBINED[method]


def detector_class(name: str) -> type[Detector]:
    return DETECTORS[name]


def unsupervised() -> list[type[Detector]]:
    """The detectors `fit` fits from the training images alone."""
    return [cls for cls in DETECTORS.values() if not cls.supervised]


def fit_unsupervised(context: FitContext, skip: Iterable[str] = ()) -> dict[str, Detector]:
    """Every unsupervised detector (but those in `skip`) made for `context` and fitted on it, by name."""
    skipped = set(skip)
    return {cls.name: cls.for_context(context).fit(context) for cls in unsupervised() if cls.name not in skipped}


def detector_names(supervised: bool | None = None) -> tuple[str, ...]:
    """The registered detectors' names (registry order); only the (un)supervised ones when asked."""
    return tuple(n for n, cls in DETECTORS.items() if supervised is None or cls.supervised == supervised)


def method_list(names: Iterable[str]) -> str:
    """Names as prose for help texts: "a, b and c"."""
    names = list(names)
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1] if names else ""


def state_files() -> tuple[str, ...]:
    """The file each detector's state is saved in, in registry order."""
    return tuple(cls.state_file for cls in DETECTORS.values())


def available_methods(present: Iterable[str]) -> list[str]:
    """The methods a model with the detectors `present` can serve, in registry order."""
    have = set(present)
    return [m for m in method_names() if set(members(m)) <= have]


def missing(method: str, present: Iterable[str]) -> list[str]:
    """The detectors `method` needs that are not in `present`."""
    have = set(present)
    return [name for name in members(method) if name not in have]


def combine(method: str, scores: Mapping[str, np.ndarray]) -> np.ndarray:
    """A method's normalised score from its members' scores (the combining rule: the largest)."""
    import numpy as np
    names = members(method)
    if len(names) == 1:
        return scores[names[0]]
    return np.max(np.stack([scores[n] for n in names]), axis=0)


def score_method(
    detectors: Mapping[str, Detector], method: str, features=None, logits=None,
    known: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """`method`'s normalised score of a batch; `known` holds member scores computed already."""
    scores = dict(known or {})
    for name in members(method):
        if name not in scores:
            scores[name] = detectors[name].score(features=features, logits=logits)
    return combine(method, scores)
