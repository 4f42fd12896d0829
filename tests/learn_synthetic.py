"""Small synthetic features for the learning tests: class clusters, near and far misfits, a model-like bundle."""
from __future__ import annotations

import numpy as np

from imgclean.detectors import MahalanobisDetector
from imgclean.pipeline.learn.rule import LabelledFeatures, LearnSettings

DIM, CLASSES = 8, 3
# a few small MLPs, few steps and three folds: a learn() call takes about a second
FAST = LearnSettings(folds=3, fit_rows=300, calibration_rows=300,
                     detector=dict(min_steps=150, hidden=(32, 32)))


def inliers(n: int, rng: np.random.Generator) -> np.ndarray:
    y = np.arange(n) % CLASSES
    return np.eye(CLASSES, DIM)[y] * 4 + rng.normal(0, 1, (n, DIM))


def near_misfits(n: int, rng: np.random.Generator) -> np.ndarray:
    """In-class on every dimension but one, where they sit at 2.5 +- 0.3: the label-free rule
    misses about half, a supervised rule learns them."""
    x = inliers(n, rng)
    x[:, DIM - 1] = 2.5 + rng.normal(0, 0.3, n)
    return x


def far_misfits(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(-12, 1, (n, DIM))


class Bundle:
    """What learn() and review_sample() read of a model: its detectors and config."""

    def __init__(self, maha: MahalanobisDetector, config: dict | None = None):
        self.detectors = {"mahalanobis": maha}
        self.config = dict(config or {})

    @property
    def detector(self) -> MahalanobisDetector:
        return self.detectors.get("mahalanobis")


def training(seed: int = 0, n: int = 1500) -> tuple[np.ndarray, Bundle]:
    rng = np.random.default_rng(seed)
    x = inliers(n, rng)
    maha = MahalanobisDetector().fit(x, np.arange(n) % CLASSES, num_classes=CLASSES)
    return x, Bundle(maha)


def review_of(bundle: Bundle, rng: np.random.Generator, n_near: int = 60, n_far: int = 0,
              n_in: int = 30) -> LabelledFeatures:
    """The decisions a reviewer of a night makes: the label-free rule's rejects left in the
    quarantine (or restored when they belong), its misses rejected, in-class files accepted."""
    x_in, x_near, x_far = inliers(n_in, rng), near_misfits(n_near, rng), far_misfits(n_far, rng)
    feats, kinds = [], []
    caught = bundle.detector.score(x_in) > 1
    feats += [x_in]
    kinds += ["restored" if c else "accepted" for c in caught]
    for block in (x_near, x_far):
        caught = bundle.detector.score(block) > 1
        feats.append(block)
        kinds += ["left" if c else "rejected" for c in caught]
    return LabelledFeatures(np.concatenate(feats), tuple(kinds))
