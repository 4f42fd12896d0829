"""Tiny synthetic images: three pattern classes and an out-of-distribution blob.

Shared by the tests (conftest.py) and benchmarks/fault_campaign.py.
"""
from __future__ import annotations

import numpy as np

SIZE = 16
CLASSES = ("stripes_h", "stripes_v", "checker")


def class_image(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A 16x16 grayscale pattern of the given class, with a random phase and noise."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    period, phase = int(rng.integers(3, 5)), int(rng.integers(0, 4))
    if kind == "stripes_h":
        img = ((y + phase) // 2 % 2) * 200
    elif kind == "stripes_v":
        img = ((x + phase) // 2 % 2) * 200
    else:
        img = (((x + phase) // period + (y + phase) // period) % 2) * 200
    img = img + rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def ood_image(rng: np.random.Generator) -> np.ndarray:
    """Something none of the classes looks like: a bright blob on grey."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    cy, cx = rng.integers(4, 12, 2)
    img = 90 + 160 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 10.0)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
