"""Out-of-distribution detectors that work on network outputs (deep features, logits), not images."""
from .base import Detector, NotFittedError
from .energy import EnergyDetector
from .head import RejectHead
from .knn import KNNDetector
from .mahalanobis import MahalanobisDetector

__all__ = ["Detector", "EnergyDetector", "KNNDetector", "MahalanobisDetector", "NotFittedError", "RejectHead"]
