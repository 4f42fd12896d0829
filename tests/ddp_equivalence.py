"""Run under torchrun by tests/test_fit_distributed.py (not a test module itself).

Every rank trains the same tiny lenet with --lr 0 and no augmentation (features fixed, so the centres move by the
paper's rule only), then embeds its shard and fits the Mahalanobis detector from statistics
summed over ranks. Rank 0 writes what it got to OUT (an .npz); `single()` is the one-process
reference over the same data.
"""
import os
import sys

import numpy as np


def data(n=64, size=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = (rng.random((n, size, size, 1)) * 60 + labels[:, None, None, None] * 60).astype(np.uint8)
    return images, labels.astype(np.int64)


def run(dist=None, covariance="tied"):
    import torch

    from imgclean.config import FitConfig, TrainSettings
    from imgclean.detectors import MahalanobisDetector
    from imgclean.nn.models import build_model
    from imgclean.nn.runtime import predict_arrays
    from imgclean.nn.training import seed_everything, train_classifier
    from imgclean.pipeline.fit.fit_model import embed_distributed

    torch.set_num_threads(1)
    images, labels = data()
    settings = TrainSettings(epochs=2, batch_size=16, min_steps=0, lr=0.0, val_fraction=0.25, augment=False)
    seed_everything(0)
    model = build_model("lenet", 3, 1, 16)
    result = train_classifier(model, images, labels, [0.5], [0.25], settings, torch.device("cpu"), dist=dist)
    config = FitConfig(covariance=covariance, train=settings)
    if dist is None:
        logits, feats = predict_arrays(model, images, [0.5], [0.25], "cpu")
        fit_idx = result.train_indices
        det = MahalanobisDetector(config.percentile, covariance).fit(feats[fit_idx], labels[fit_idx], num_classes=3)
    else:
        logits, feats, _, det = embed_distributed(model, images, labels, [0.5], [0.25], "cpu", result, config, 3, dist)
    order = np.lexsort((det.train_distances_, det.train_labels_))  # thresholds need the set, not the order
    return {
        "centers": result.centers, "feats": feats, "logits": logits, "means": det.means_,
        "precisions": det.precisions_, "shrinkage": det.shrinkage_, "thresholds": det.thresholds_,
        "distances": det.train_distances_[order], "dist_labels": det.train_labels_[order],
    }


if __name__ == "__main__":
    from imgclean.nn.distributed import Distributed

    dist = Distributed.from_env("cpu")
    try:
        out = run(dist, sys.argv[2])
        if dist.is_main:
            np.savez(sys.argv[1], world_size=dist.world_size, **out)
    finally:
        dist.barrier()
        dist.close()
    from imgclean.nn.distributed import leave_process

    leave_process(0 if os.path.exists(sys.argv[1]) or not dist.is_main else 1)
