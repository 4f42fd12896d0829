"""Which detectors exist, by name: the CLI's --method choices, evaluate's columns, the model's files.

A method is one registered detector or a combining rule over several ("both").
"""
from __future__ import annotations

DETECTORS = ("mahalanobis", "head")
# Combining rules: rejected when any member rejects; the score is the largest normalised score.
COMBINED = {"both": ("mahalanobis", "head")}
DEFAULT_METHOD = "mahalanobis"


def method_names() -> tuple[str, ...]:
    return (*DETECTORS, *COMBINED)
