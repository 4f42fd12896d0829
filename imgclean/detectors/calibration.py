"""Held-out calibration shared by every detector with a percentile threshold (split conformal).

A detector's threshold is set on its training images at the percentile p asked for (97.5 by
default), but the network and the class statistics were fitted on those very images, so new
images of the same classes score higher and more than 1 - p of them would be rejected (measured
on Fashion-MNIST splits: 6-8% with frozen pretrained features, 10.5% after a short fine-tune,
for a promised 2.5%). Scaling by a ratio of medians moves the bulk, not the tail.

Split-conformal calibration (Vovk et al.; Angelopoulos and Bates, "A gentle introduction to
conformal prediction", 2021) uses the held-out images' own normalised scores s_1..s_n: with
k = ceil((n + 1) p), the k-th smallest of them becomes the new "1" (`Cut.cut`). A new image
exchangeable with the held-out ones then scores above it with probability (n + 1 - k) / (n + 1)
<= 1 - p (no ties), and given the held-out set its false-reject rate is Beta(n + 1 - k, k)
distributed: that is the interval reported. It needs k <= n, i.e. n >= p / (1 - p) held-out images
(39 for p = 0.975); with fewer the largest held-out score is used, the rate promised is then only
1 / (n + 1), and `Needs` says how many images are missing.

Each detector moves its own threshold (`Detector.move_threshold(cut)`: the score `cut` becomes
1); the arithmetic lives here once.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: numpy is imported in the functions that use it
    import numpy as np

INTERVAL = 0.90  # the central probability of the false-reject interval reported
METHOD = "split-conformal"


def _fraction(percentile: float) -> Fraction:
    """p = percentile / 100 as an exact fraction (97.5 -> 39/40), so ranks do not suffer rounding."""
    if not 0.0 < float(percentile) < 100.0:
        raise ValueError(f"percentile must be between 0 and 100, got {percentile}")
    return Fraction(float(percentile)).limit_denominator(1_000_000) / 100


def needed_held_out(percentile: float) -> int:
    """The fewest held-out images for which the conformal rank ceil((n + 1) p) is at most n:
    n >= p / (1 - p) = 1 / (1 - p) - 1 (39 for the 97.5th percentile, 99 for the 99th)."""
    p = _fraction(percentile)
    return math.ceil(p / (1 - p))


def conformal_rank(n: int, percentile: float) -> int:
    """k = ceil((n + 1) p), at most n (the largest score when there are too few), at least 1."""
    p = _fraction(percentile)
    return max(1, min(int(n), math.ceil((n + 1) * p)))


def false_reject_interval(n: int, k: int, level: float = INTERVAL) -> tuple[float, float, float]:
    """(expected, low, high): the false-reject rate of a threshold at the k-th smallest of n
    held-out scores. Given the held-out set it is Beta(n + 1 - k, k) distributed; its mean is
    (n + 1 - k) / (n + 1) and low..high is its central `level` interval."""
    from scipy.stats import beta

    a, b = n + 1 - k, k
    tail = (1.0 - level) / 2
    return a / (n + 1), float(beta.ppf(tail, a, b)), float(beta.ppf(1.0 - tail, a, b))


@dataclass(frozen=True)
class Cut:
    """Where the held-out scores put the threshold, and what that promises."""

    cut: float  # the k-th smallest held-out score: the detector's new "1"
    held_out: int  # n
    rank: int  # k
    percentile: float
    expected_false_reject_rate: float
    interval: tuple[float, float]
    enough: bool  # n >= needed_held_out(percentile): the rate promised is 1 - p

    def to_dict(self) -> dict:
        out = asdict(self)
        out["interval"] = list(self.interval)
        return out


def conformal_cut(scores, percentile: float) -> Cut:
    """The split-conformal cut of held-out normalised scores (see the module docstring)."""
    import numpy as np

    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if len(s) == 0:
        raise ValueError("calibration needs at least one held-out score")
    if not np.isfinite(s).all():
        raise ValueError("held-out scores contain NaN or infinite values")
    n = len(s)
    k = conformal_rank(n, percentile)
    expected, low, high = false_reject_interval(n, k)
    return Cut(cut=float(s[k - 1]), held_out=n, rank=k, percentile=float(percentile),
               expected_false_reject_rate=expected, interval=(low, high), enough=n >= needed_held_out(percentile))


@dataclass
class Needs:
    """Whether a fit's held-out images can carry the calibration, and what is missing.

    Overall: `needed` held-out images (needed_held_out). Per class (imgclean's rule, not a
    theorem): its share of them, ceil(needed / classes), so that no class is calibrated by the
    others' images alone, and `min_training` training images, below which a class's threshold is
    not its own (Mahalanobis borrows the pooled one).
    """

    percentile: float
    held_out: int
    needed: int
    val_fraction: float
    per_class_needed: int
    min_training: int
    short_classes: list[dict] = field(default_factory=list)  # {"class", "held_out", "training"}

    @property
    def enough(self) -> bool:
        return self.held_out >= self.needed and not self.short_classes

    def images_needed(self) -> int | None:
        """About how many images in the folder give `needed` held-out ones (None: nothing is held out)."""
        if self.val_fraction <= 0:
            return None
        return math.ceil(self.needed / self.val_fraction)

    def warning(self) -> str | None:
        """One line for the user when the calibration rests on too few images; None when it does not."""
        if self.enough:
            return None
        pct = f"{self.percentile:g}th percentile"
        if self.held_out == 0:
            how = (f"raise --val-fraction (0 holds nothing out) so that {self.needed} or more images are held out"
                   if self.val_fraction <= 0 else f"add images: about {self.images_needed()} in all")
            return (f"no held-out images calibrate the thresholds, so the false-reject rate is unknown and "
                    f"likely above {100 - self.percentile:g}%: {self.needed} are needed for the {pct}; {how}")
        parts = []
        if self.held_out < self.needed:
            more = self.images_needed()
            at = f"about {more} images in all at --val-fraction {self.val_fraction:g}" if more else "raise --val-fraction"
            parts.append(f"the thresholds are calibrated on {self.held_out} held-out image(s); {self.needed} are "
                         f"needed for the {pct} ({at}), so the rate promised is only "
                         f"{100 / (self.held_out + 1):.1f}%, not {100 - self.percentile:g}%")
        if self.short_classes:
            shown = ", ".join(f"{c['class']!r} ({c['held_out']} held out, {c['training']} training)"
                              for c in self.short_classes[:5])
            more = f" and {len(self.short_classes) - 5} more" if len(self.short_classes) > 5 else ""
            parts.append(f"class {shown}{more} have too few images (each class needs {self.per_class_needed} "
                         f"held out and {self.min_training} for training)")
        return "calibration rests on too few images: " + "; ".join(parts) + "; add images for reliable thresholds"

    def to_dict(self) -> dict:
        return {"held_out_images": self.held_out, "needed_held_out_images": self.needed,
                "needed_images": self.images_needed(), "per_class_needed_held_out": self.per_class_needed,
                "per_class_needed_training": self.min_training, "short_classes": self.short_classes,
                "enough": self.enough}


def assess(class_names: list[str], held_out: np.ndarray, training: np.ndarray, percentile: float,
           val_fraction: float, min_training: int) -> Needs:
    """Needs for held-out and training image counts per class (arrays in class order)."""
    needed = needed_held_out(percentile)
    per_class = max(1, math.ceil(needed / max(len(class_names), 1)))
    short = [{"class": name, "held_out": int(h), "training": int(t)}
             for name, h, t in zip(class_names, held_out, training, strict=True)
             if h < per_class or t < min_training]
    return Needs(percentile=float(percentile), held_out=int(sum(held_out)), needed=needed,
                 val_fraction=float(val_fraction), per_class_needed=per_class, min_training=int(min_training),
                 short_classes=short)
