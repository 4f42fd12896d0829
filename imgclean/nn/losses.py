"""Center loss (Wen et al., ECCV 2016), as used by the paper.

L_C = 1/2 * mean_i ||x_i - c_{y_i}||^2 over a batch. The gradient flows into the features only.
The centres are a buffer updated by the paper's rule rather than by the optimiser:

    delta c_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)      c_j <- c_j - alpha * delta c_j

where n_j is the number of batch samples of class j. The 1 + n_j keeps a class that is rare in
a batch from jerking its centre about.

The centres, the loss and the update are float32 always: under mixed precision (nn.runtime) the
features are cast up first, so a centre never moves by a half-precision step.
"""
from __future__ import annotations

import torch
from torch import nn


class CenterLoss(nn.Module):
    def __init__(self, num_classes: int, feature_dim: int, alpha: float = 0.5):
        super().__init__()
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"center learning rate alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.register_buffer("centers", torch.zeros(num_classes, feature_dim))
        self.register_buffer("initialised", torch.zeros(num_classes, dtype=torch.bool))
        # Many processes (nn.distributed): reduce(sums, counts) -> the sums and counts of all of them.
        self.reduce = None

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = features.float()  # a no-op for float32 features
        self._initialise_missing(features, labels)
        diff = features - self.centers[labels]
        return 0.5 * diff.pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def _initialise_missing(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        # A centre starts at the first batch mean of its class instead of the origin, so early
        # training is not dominated by pulling every class towards zero.
        if self.reduce is not None:  # the mean over the global batch, whichever rank saw the class
            sums, counts = self.reduce(*self.class_sums(features, labels))
            new = (counts > 0) & ~self.initialised
            self.centers[new] = sums[new] / counts[new][:, None]
            self.initialised |= new
            return
        for j in torch.unique(labels):
            if not self.initialised[j]:
                self.centers[j] = features[labels == j].detach().mean(dim=0)
                self.initialised[j] = True

    @torch.no_grad()
    def update_centers(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Apply one step of the Wen et al. update rule with this batch."""
        sums, counts = self.class_sums(features, labels)
        if self.reduce is not None:
            sums, counts = self.reduce(sums, counts)
        self.apply_class_sums(sums, counts)

    @torch.no_grad()
    def class_sums(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class feature sums (k, d) and counts (k,) of a batch, float32. The update needs only
        these, so processes that each see part of a batch can add theirs up before applying."""
        features = features.detach().float()
        num_classes = self.centers.shape[0]
        counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
        sums = torch.zeros_like(self.centers).index_add_(0, labels, features)
        return sums, counts

    @torch.no_grad()
    def apply_class_sums(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """c_j <- c_j - alpha * (n_j c_j - sum_j) / (1 + n_j)."""
        delta = (counts[:, None] * self.centers - sums) / (1.0 + counts[:, None])
        self.centers -= self.alpha * delta
