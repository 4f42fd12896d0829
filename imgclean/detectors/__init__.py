"""Out-of-distribution detectors that work on deep-feature arrays, not images."""
from .base import NotFittedError
from .head import RejectHead
from .mahalanobis import MahalanobisDetector

__all__ = ["MahalanobisDetector", "NotFittedError", "RejectHead"]
