"""The paper's supervised detector: a small MLP on frozen deep features.

Trained with binary cross-entropy on examples of what does NOT belong (rejects, label 0) and the
training images (label 1). Architecture as in the paper: 256 ReLU -> 256 ReLU -> 1 sigmoid.

Class imbalance (a handful of rejects against thousands of training images) is handled with
BCE's ``pos_weight = n_rejects / n_normal``: the loss of the two classes then weighs the same in
total, whatever their sizes. Features are standardised with the training mean and std first.

``raw_score()`` is 1 - p(in-distribution): higher = more out-of-distribution. ``predict()`` is
True where p < threshold (0.5 by default). ``score()`` is raw_score / (1 - threshold), so that,
like every detector's score, > 1 means rejected.

State: ``to_arrays()`` gives numpy arrays named ``head.*`` (the network's layers and the
standardisation), saved as head.safetensors; ``settings()`` goes to config.json.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: numpy is imported in the functions that use it
    import numpy as np

from .base import Detector, FitContext, NotFittedError, check_features

PREFIX = "head."


class RejectHead(Detector):
    """fit(features, labels) with labels 1 = belongs, 0 = reject; score() higher = more OOD."""

    name = "head"
    inputs = ("features",)
    supervised = True
    state_file = "head.safetensors"
    summary = "(1 - sigmoid) / (1 - threshold) of a reject head trained on known rejects"

    def __init__(
        self,
        hidden: tuple[int, ...] = (256, 256),
        epochs: int = 30,
        min_steps: int = 300,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        threshold: float = 0.5,
        seed: int = 0,
    ):
        self.hidden = tuple(hidden)
        self.epochs = epochs
        self.min_steps = min_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.threshold = threshold
        self.seed = seed

    # ---- fitting -------------------------------------------------------------------------
    def _build(self, dim: int):
        from torch import nn

        layers, width = [], dim
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        return nn.Sequential(*layers)

    def _fit(self, context: FitContext) -> "RejectHead":
        import numpy as np
        import torch

        features, labels = context.features, context.labels

        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        x = check_features(features)
        y = np.asarray(labels)
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels must have one entry per feature row, got {y.shape} for {x.shape[0]} rows")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be 1 (belongs) or 0 (reject)")
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if n_pos == 0 or n_neg == 0:
            raise ValueError(
                f"the head needs both kinds of example; got {n_pos} normal and {n_neg} reject images"
            )
        mean = x.mean(axis=0)
        # Standardise, but floor each feature's spread at a share of the average one: a feature
        # that barely varies in training (a ReLU unit that is almost always off) must not be
        # blown up by a huge factor, or any activation of it on a new image swamps the head.
        var = x.var(axis=0)
        std = np.sqrt(var + 0.1 * var.mean() + 1e-12)
        self.feature_mean_, self.feature_std_ = mean, std
        self.pos_weight_ = n_neg / n_pos

        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        net = self._build(x.shape[1])
        xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
        yt = torch.from_numpy(y.astype(np.float32))
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(self.pos_weight_, dtype=torch.float32))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        n = len(xt)
        bs = max(1, min(self.batch_size, n))
        batches = (n + bs - 1) // bs
        steps = max(self.epochs * batches, self.min_steps)
        net.train()
        step, losses = 0, []
        while step < steps:
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                loss = loss_fn(net(xt[idx]).squeeze(1), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
                step += 1
                if step >= steps:
                    break
        net.eval()
        self.net_ = net
        self.dim_ = x.shape[1]
        self.steps_ = steps
        self.final_loss_ = float(np.mean(losses[-batches:]))
        return self

    # ---- scoring -------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise NotFittedError("this RejectHead is not fitted yet; call fit() first")

    def predict_proba(self, features) -> np.ndarray:
        """p(belongs) = sigmoid(logit) per row."""
        import numpy as np
        import torch

        self._check_fitted()
        x = check_features(features, dim=self.dim_)
        xt = torch.from_numpy(((x - self.feature_mean_) / self.feature_std_).astype(np.float32))
        out = []
        with torch.no_grad():
            for start in range(0, len(xt), 4096):
                out.append(torch.sigmoid(self.net_(xt[start : start + 4096]).squeeze(1)).double().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def raw_score(self, features) -> np.ndarray:
        """1 - p(belongs): higher = more out-of-distribution."""
        return 1.0 - self.predict_proba(features)

    def score(self, features=None, logits=None) -> np.ndarray:
        """raw_score / (1 - threshold): > 1 exactly when predict() rejects (like every detector's score)."""
        return self.raw_score(features) / (1.0 - self.threshold)

    def predict(self, features=None, logits=None) -> np.ndarray:
        """True where the row is out-of-distribution (p(belongs) < threshold)."""
        return self.predict_proba(features) < self.threshold

    curve_setting = "sigmoid_threshold"

    def own_curve(self, inside: dict, outside: dict) -> dict:
        """ROC as the sigmoid threshold moves (reject when p(belongs) <= threshold), from (1, 1)
        (a threshold at or above every p) down to (0, 0)."""
        import numpy as np

        from ..metrics import roc_curve

        p_in, p_ood = self.predict_proba(inside["features"]), self.predict_proba(outside["features"])
        labels = np.r_[np.zeros(len(p_in)), np.ones(len(p_ood))]
        fpr, tpr, thr = roc_curve(labels, 1.0 - np.r_[p_in, p_ood])
        setting = np.array(["below_min" if np.isinf(t) else f"{1.0 - t:.6g}" for t in thr])
        return {"fpr": fpr[::-1], "tpr": tpr[::-1], "setting": setting[::-1]}

    # ---- persistence ---------------------------------------------------------------------
    def calibrate(self, features=None, logits=None) -> None:
        """Nothing to calibrate: the head's threshold is a probability its training against known
        rejects chose, not a percentile of in-distribution scores (so no false-reject rate is
        promised; `evaluate` measures it)."""
        return None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays to save (names start with 'head.'; the layers float32); settings go to settings()."""
        import numpy as np
        self._check_fitted()
        out = {f"{PREFIX}net.{k}": v.detach().cpu().contiguous().numpy().copy() for k, v in self.net_.state_dict().items()}
        out[f"{PREFIX}feature_mean"] = np.ascontiguousarray(self.feature_mean_, dtype=np.float64)
        out[f"{PREFIX}feature_std"] = np.ascontiguousarray(self.feature_std_, dtype=np.float64)
        return out

    def settings(self) -> dict:
        return {
            "hidden": list(self.hidden),
            "epochs": self.epochs,
            "min_steps": self.min_steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "threshold": self.threshold,
            "seed": self.seed,
        }

    @classmethod
    def from_state(cls, arrays, settings: dict | None = None) -> "RejectHead":
        """Rebuild from to_arrays()'s arrays (numpy, or torch tensors) and settings()."""
        import numpy as np
        import torch

        settings = settings or {}
        tensors = {k: torch.from_numpy(np.array(v.detach().cpu().numpy() if hasattr(v, "detach") else v)) for k, v in arrays.items()}
        head = cls(
            hidden=tuple(int(h) for h in settings.get("hidden", (256, 256))),
            threshold=float(settings.get("threshold", 0.5)),
            **{k: settings[k] for k in ("epochs", "min_steps", "batch_size", "lr", "weight_decay", "seed") if k in settings},
        )
        mean = tensors[f"{PREFIX}feature_mean"].double().numpy()
        net = head._build(len(mean))
        state = {k[len(PREFIX) + 4 :]: v for k, v in tensors.items() if k.startswith(f"{PREFIX}net.")}
        net.load_state_dict(state, strict=True)
        net.eval()
        head.net_ = net
        head.dim_ = len(mean)
        head.feature_mean_ = mean
        head.feature_std_ = tensors[f"{PREFIX}feature_std"].double().numpy()
        return head
