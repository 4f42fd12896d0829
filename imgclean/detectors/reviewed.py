"""The learned rule: what a person's review teaches, as a detector (`imgclean learn` fits it).

Inputs per image: its deep feature and the log of its Mahalanobis ratio d_k / t_k to each class
(the label-free detector's view of it), standardised. An ensemble of small MLPs (ReLU) is trained
with binary cross-entropy to tell the reviewer's rejects (label 0, like the head: "does not
belong") from the training images and the files the reviewer restored or accepted (label 1).
Rows carry weights (pipeline/learn/rule.py balances the two kinds and the sources within each);
batches are drawn with probability proportional to them, so a few hundred rejects are seen as
often as thirty thousand training images.

raw(x) is the members' mean logit of "does not belong". The score is

    exp(raw(x) - t), or mahalanobis(x) / s where that is larger and above 1

- t, the threshold, is set on in-distribution images held out of the fit (`calibration=`), jointly
  with the second term: the two together reject 100 - percentile per cent of those images (the
  rate the label-free rule was calibrated to) less one standard error of that estimate, so that
  new in-class files are rejected at the nominal rate or below, not above it.
- s, the safety factor, is the `safety_percentile` (99.5) of the Mahalanobis scores of the same
  images: whatever lies far from every class is still rejected, even when it resembles none of
  the rejects the MLPs were shown (a network says nothing reliable about inputs unlike all of
  its training rows).
So score > 1 exactly when either term rejects; higher = more out-of-distribution. Below s the
Mahalanobis term plays no part: the files the rule keeps are ranked by what it learned.

State (detector-reviewed.npz, numbers only): the standardisation, the Mahalanobis parameters it
reads (means, precisions, thresholds: its own copy, so it scores alone), each layer's weights
stacked over the members, t and s. Scoring is numpy only; fitting imports torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: numpy is imported in the functions that use it
    import numpy as np

from .base import Detector, FitContext, NotFittedError, check_features, scalar
from .mahalanobis import MahalanobisDetector

RAW_CLIP = 50.0  # exp(raw - t) is computed with raw - t clipped to +-RAW_CLIP (no overflow)
MAX_MEMBERS = 64
MAX_WIDTH = 4096


def log_ratios(maha: MahalanobisDetector, x: np.ndarray) -> np.ndarray:
    """log(d_k / t_k) of each row to each class, floored at log(1e-6)."""
    import numpy as np
    return np.log(np.maximum(maha.ratios(x), 1e-6))


def mahalanobis_from(means: np.ndarray, precisions: np.ndarray, thresholds: np.ndarray) -> MahalanobisDetector:
    """A Mahalanobis detector that scores with the given parameters (no training distances)."""
    import numpy as np
    det = MahalanobisDetector(covariance="tied" if len(precisions) == 1 else "class")
    det.means_ = np.asarray(means, dtype=np.float64)
    det.precisions_ = np.asarray(precisions, dtype=np.float64)
    det.thresholds_ = np.asarray(thresholds, dtype=np.float64)
    det.threshold_scale_ = 1.0
    return det


def mlp_logits(layers: list[tuple[np.ndarray, np.ndarray]], u: np.ndarray) -> np.ndarray:
    """Each member's output logit for standardised inputs u: shape (members, n)."""
    import numpy as np
    h = np.broadcast_to(u, (layers[0][0].shape[0], *u.shape))
    for i, (w, b) in enumerate(layers):
        h = np.matmul(h, w) + b[:, None, :]
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h[..., 0]


class ReviewedDetector(Detector):
    """fit(features, labels) with labels 1 = belongs, 0 = reject (as the head); score() > 1 rejects."""

    name = "reviewed"
    inputs = ("features",)
    supervised = True
    state_file = "detector-reviewed.npz"
    summary = "learned from the review: exp(ensemble logit - t), or mahalanobis / s above 1"

    def __init__(self, hidden: tuple[int, ...] = (128, 128), members: int = 5, min_steps: int = 800,
                 batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-4,
                 percentile: float = 97.5, safety_percentile: float = 99.5, seed: int = 0):
        self.hidden = tuple(hidden)
        self.members = members
        self.min_steps = min_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.percentile = percentile
        self.safety_percentile = safety_percentile
        self.seed = seed

    # ---- fitting -------------------------------------------------------------------------
    def _check_settings(self) -> None:
        if not 0.0 < self.percentile < 100.0 or not 0.0 < self.safety_percentile <= 100.0:
            raise ValueError("percentile and safety_percentile must be between 0 and 100")
        if not 1 <= self.members <= MAX_MEMBERS or not all(1 <= h <= MAX_WIDTH for h in self.hidden):
            raise ValueError(f"members must be 1..{MAX_MEMBERS} and each hidden width 1..{MAX_WIDTH}")
        if self.min_steps < 1 or self.batch_size < 1:
            raise ValueError("min_steps and batch_size must be at least 1")

    def _fit(self, context: FitContext, *, weights=None, mahalanobis: MahalanobisDetector | None = None,
             calibration=None, member_rows=None) -> "ReviewedDetector":
        """Train on rows labelled 1 (belongs) / 0 (reject) with optional row `weights` (default:
        each label weighs half in total). `mahalanobis`: the model's label-free detector (default:
        one Gaussian fitted to the rows that belong). `calibration`: in-distribution features held
        out of this fit, for t and s (default: the rows that belong, which is optimistic).
        `member_rows`: a (members, rows) boolean array, the rows each member trains on (default:
        all rows for each of `members`); learn() leaves a fold of the decisions out of each."""
        import numpy as np
        self._check_settings()
        x = check_features(context.features)
        y = np.asarray(context.labels)
        if y.shape != (len(x),) or not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be 1 (belongs) or 0 (reject), one per feature row")
        y = y.astype(np.int64)
        if not (y == 1).any() or not (y == 0).any():
            raise ValueError(f"the learned rule needs both kinds; got {int((y == 1).sum())} that belong and "
                             f"{int((y == 0).sum())} rejects")
        w = self._weights(weights, y)
        masks = self._member_rows(member_rows, len(x))
        if mahalanobis is None:
            mahalanobis = MahalanobisDetector().fit(x[y == 1], np.zeros(int((y == 1).sum()), dtype=np.int64), num_classes=1)
        self.maha_ = mahalanobis_from(mahalanobis.means_, mahalanobis.precisions_, mahalanobis.thresholds_)
        u = np.c_[x, log_ratios(self.maha_, x)]
        self.input_mean_ = u[y == 1].mean(axis=0)
        var = u[y == 1].var(axis=0)
        # each input's spread floored at a share of the average one (as the head): a unit that barely
        # varies in training must not be blown up by a huge factor
        self.input_std_ = np.sqrt(var + 0.1 * var.mean() + 1e-12)
        self.layers_ = self._train((u - self.input_mean_) / self.input_std_, 1 - y, w, masks)
        self.dim_ = x.shape[1]
        cal = x[y == 1] if calibration is None else check_features(calibration, "calibration", dim=self.dim_)
        self._calibrate(cal)
        self.fit_counts_ = (int((y == 1).sum()), int((y == 0).sum()), int(len(cal)))
        return self

    def _member_rows(self, member_rows, n: int) -> np.ndarray:
        import numpy as np
        if member_rows is None:
            return np.ones((self.members, n), dtype=bool)
        masks = np.asarray(member_rows)
        if masks.dtype != bool or masks.ndim != 2 or masks.shape[1] != n or not 1 <= len(masks) <= MAX_MEMBERS:
            raise ValueError(f"member_rows must be a (members, {n}) boolean array, at most {MAX_MEMBERS} members")
        if not masks.any(axis=1).all():
            raise ValueError("every member needs rows to train on")
        self.members = len(masks)
        return masks

    @staticmethod
    def _weights(weights, y: np.ndarray) -> np.ndarray:
        import numpy as np
        if weights is None:
            n1, n0 = (y == 1).sum(), (y == 0).sum()
            return np.where(y == 1, 0.5 / n1, 0.5 / n0)
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != y.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be finite, non-negative, one per row, and not all zero")
        return w

    def _train(self, u: np.ndarray, target: np.ndarray, w: np.ndarray, masks: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each member trained on its rows from its own seed; returns [(weights (members, in, out), biases (members, out))]."""
        import numpy as np
        import torch

        xt = torch.from_numpy(u.astype(np.float32))
        yt = torch.from_numpy(target.astype(np.float32))
        per_member = []
        for m in range(self.members):
            wm = np.where(masks[m], w, 0.0)
            if wm.sum() <= 0:
                raise ValueError(f"member {m} has no weighted rows to train on")
            p = torch.from_numpy(wm / wm.sum())
            gen = torch.Generator().manual_seed(self.seed * 1000 + m)
            with torch.random.fork_rng(devices=[]):  # the initial weights from the seed; the caller's RNG untouched
                torch.manual_seed(self.seed * 1000 + m)
                net = self._build(u.shape[1])
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            for _ in range(self.min_steps):
                idx = torch.multinomial(p, self.batch_size, replacement=True, generator=gen)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[idx]).squeeze(1), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            linear = [mod for mod in net if isinstance(mod, torch.nn.Linear)]
            per_member.append([(mod.weight.detach().double().numpy().T.copy(), mod.bias.detach().double().numpy().copy())
                               for mod in linear])
        return [(np.stack([pm[i][0] for pm in per_member]), np.stack([pm[i][1] for pm in per_member]))
                for i in range(len(per_member[0]))]

    def _build(self, width: int):
        from torch import nn
        layers = []
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        return nn.Sequential(*layers)

    def _calibrate(self, cal: np.ndarray) -> None:
        """t and s from held-out in-distribution rows: together they reject 100 - percentile per cent."""
        import numpy as np
        maha = self.maha_.score(cal)
        self.safety_ = max(float(np.percentile(maha, self.safety_percentile)), 1e-12)
        self.threshold_ = self.threshold_for(self.raw(cal), maha)
        self.calibration_rejected_ = float(np.mean(self.score(cal) > 1.0))

    def threshold_for(self, raw: np.ndarray, maha: np.ndarray) -> float:
        """The t at which the rule (combine) rejects 100 - percentile per cent of these rows."""
        import numpy as np
        # the nominal share less one standard error of its estimate from these rows: a threshold set
        # on a few hundred images is as often too tight as too loose, and a folder of new in-class
        # files must not find it loose (800 rows: 1.95% for a nominal 2.5%; 3,000: 2.2%)
        nominal = (100.0 - self.percentile) / 100.0
        share = max(0.0, nominal - float(np.sqrt(nominal * (1 - nominal) / len(raw))))
        allowed = int(np.floor(share * len(raw)))
        # the rows the safety term accepts, their raw scores from the highest: t is the value
        # below the first one that would take the rejected count over `allowed`
        free = np.sort(raw[maha <= self.safety_])[::-1]
        budget = allowed - int(np.sum(maha > self.safety_))
        if len(free) == 0:
            return float(raw.max())
        if budget <= 0:
            return float(free[0])  # the learned term rejects none of them
        if budget < len(free):
            return float(free[budget])  # the `budget` highest are above it
        return float(free[-1]) - 1.0

    # ---- scoring -------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "layers_"):
            raise NotFittedError("this ReviewedDetector is not fitted yet; run `imgclean learn` (or call fit())")

    def member_raw(self, features) -> np.ndarray:
        """Each member's logit of "does not belong": shape (members, rows)."""
        import numpy as np
        self._check_fitted()
        x = check_features(features, dim=self.dim_)
        out = np.empty((self.layers_[0][0].shape[0], len(x)))
        for start in range(0, len(x), 4096):
            chunk = x[start : start + 4096]
            u = (np.c_[chunk, log_ratios(self.maha_, chunk)] - self.input_mean_) / self.input_std_
            out[:, start : start + 4096] = mlp_logits(self.layers_, u)
        return out

    def raw(self, features) -> np.ndarray:
        """The members' mean logit of "does not belong" per row."""
        return self.member_raw(features).mean(axis=0)

    def score(self, features=None, logits=None) -> np.ndarray:
        """exp(raw - t), raised to mahalanobis / s where that is above 1: > 1 = rejected, higher =
        more out-of-distribution."""
        return self.combine(self.raw(features), self.threshold_, self.maha_.score(features) / self.safety_)

    @staticmethod
    def combine(raw: np.ndarray, threshold: float, safety_ratio: np.ndarray) -> np.ndarray:
        """The rule, in one place: exp(raw - t); where the safety ratio (mahalanobis / s) is above 1,
        the larger of the two. Below s the Mahalanobis score plays no part, so the files the rule
        keeps are ranked by the learned term alone (a plain max ranks them by distance instead,
        and on the near split cost 0.03 AUROC)."""
        import numpy as np
        learned = np.exp(np.clip(raw - threshold, -RAW_CLIP, RAW_CLIP))
        return np.where(safety_ratio > 1.0, np.maximum(learned, safety_ratio), learned)

    # ---- persistence ---------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        import numpy as np
        self._check_fitted()
        out = {
            "input_mean": self.input_mean_, "input_std": self.input_std_,
            "maha_means": self.maha_.means_, "maha_precisions": self.maha_.precisions_,
            "maha_thresholds": self.maha_.thresholds_,
            "threshold": np.array(self.threshold_), "safety": np.array(self.safety_),
            "fit_counts": np.array(self.fit_counts_, dtype=np.int64),
        }
        for i, (w, b) in enumerate(self.layers_):
            out[f"layer{i}_weight"], out[f"layer{i}_bias"] = w, b
        return {k: np.array(v, order="C") for k, v in out.items()}

    def settings(self) -> dict:
        return {"hidden": list(self.hidden), "members": self.members, "min_steps": self.min_steps,
                "batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay,
                "percentile": self.percentile, "safety_percentile": self.safety_percentile, "seed": self.seed}

    @classmethod
    def from_state(cls, arrays, settings: dict | None = None) -> "ReviewedDetector":
        import numpy as np
        settings = dict(settings or {})
        kwargs = {k: settings[k] for k in ("members", "min_steps", "batch_size", "lr", "weight_decay", "percentile",
                                          "safety_percentile", "seed") if k in settings}
        det = cls(hidden=tuple(int(h) for h in settings.get("hidden", (128, 128))), **kwargs)
        det.maha_ = mahalanobis_from(arrays["maha_means"], arrays["maha_precisions"], arrays["maha_thresholds"])
        det.input_mean_ = np.asarray(arrays["input_mean"], dtype=np.float64)
        det.input_std_ = np.asarray(arrays["input_std"], dtype=np.float64)
        det.threshold_ = float(arrays["threshold"])
        det.safety_ = float(arrays["safety"])
        det.fit_counts_ = tuple(int(v) for v in np.asarray(arrays["fit_counts"]))
        det.dim_ = det.maha_.means_.shape[1]
        n = sum(1 for k in arrays if k.startswith("layer") and k.endswith("_weight"))
        det.layers_ = [(np.asarray(arrays[f"layer{i}_weight"], dtype=np.float64),
                        np.asarray(arrays[f"layer{i}_bias"], dtype=np.float64)) for i in range(n)]
        return det

    @classmethod
    def check_state(cls, arrays, feature_dim: int, num_classes: int) -> None:
        import numpy as np
        for key in ("input_mean", "input_std", "maha_means", "maha_precisions", "maha_thresholds", "fit_counts"):
            if key not in arrays:
                raise ValueError(f"it lacks {key}")
            if not np.isfinite(np.asarray(arrays[key], dtype=np.float64)).all():
                raise ValueError(f"{key} holds NaN or infinite values")
        scalar(arrays, "threshold")
        scalar(arrays, "safety", low=0)
        means, prec, thr = arrays["maha_means"], arrays["maha_precisions"], arrays["maha_thresholds"]
        if means.ndim != 2 or means.shape[0] not in (1, num_classes):
            raise ValueError(f"maha_means must be classes x features, found shape {means.shape}")
        if means.shape[1] != feature_dim:
            raise ValueError(f"it was fitted on {means.shape[1]} features, the model has {feature_dim}")
        k = means.shape[0]
        if prec.shape not in ((1, feature_dim, feature_dim), (k, feature_dim, feature_dim)) or thr.shape != (k,) or (thr <= 0).any():
            raise ValueError("the Mahalanobis parameters have inconsistent shapes or thresholds")
        width = feature_dim + k
        if arrays["input_mean"].shape != (width,) or arrays["input_std"].shape != (width,) or (arrays["input_std"] <= 0).any():
            raise ValueError(f"input_mean and input_std must be {width} numbers, the std positive")
        cls._check_layers(arrays, width)

    @staticmethod
    def _check_layers(arrays, width: int) -> None:
        import numpy as np
        n = sum(1 for k in arrays if k.startswith("layer") and k.endswith("_weight"))
        if n < 1:
            raise ValueError("it has no layers")
        members = None
        for i in range(n):
            w, b = arrays.get(f"layer{i}_weight"), arrays.get(f"layer{i}_bias")
            if w is None or b is None or w.ndim != 3 or b.ndim != 2:
                raise ValueError(f"layer {i} is missing or not members x in x out")
            members = w.shape[0] if members is None else members
            out = 1 if i == n - 1 else w.shape[2]
            if w.shape != (members, width, out) or b.shape != (members, out) or not 1 <= members <= MAX_MEMBERS \
                    or out > MAX_WIDTH:
                raise ValueError(f"layer {i} has shape {w.shape}, expected ({members}, {width}, {out})")
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ValueError(f"layer {i} holds NaN or infinite values")
            width = out
