"""imgclean: learn what belongs in an image dataset, and quarantine what does not.

Method: a CNN trained with cross-entropy + lambda * center loss, per-class Mahalanobis
distances on its deep features, and per-class thresholds (Vareldzhan, Yurkov, Ushenin, 2021).
Scores are "higher = more out-of-distribution" everywhere.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
