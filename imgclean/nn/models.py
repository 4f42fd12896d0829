"""Classifiers with one shape: forward(x) -> (logits, deep features).

`lenet` is the paper's modified LeNet (max-pooling and ReLU instead of average pooling and tanh).
Any other name is a timm model; timm is imported only then.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LENET
from ..data import INTERPOLATIONS
from ..errors import ImgcleanError
from .pretrained import PretrainedError, load_pretrained
from .weights import Checkpoint, WeightsError, WeightsMapping, load_backbone_weights, read_state_dict  # noqa: F401
# Where a model runs is the runtime's decision (nn.runtime); the name stays importable from here
# for callers written before it moved (pipeline.fit, cli.common).

log = logging.getLogger(__name__)


class LeNet(nn.Module):
    """The paper's modified LeNet: conv5-pool-conv5-pool-fc120-fc84 with ReLU and max-pooling.

    As a backbone it returns the 120-unit ReLU layer; the 84-unit layer is the `neck` that feeds
    the class logits (see Classifier).
    """

    def __init__(self, in_channels: int, input_size: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, input_size, input_size)).shape[1]
        self.fc1 = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(inplace=True))
        self.num_features = 120
        self.neck_features = 84

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features
        if torch.is_grad_enabled() or len(f) != 7:
            return self.fc1(f(x))
        # Inference (a scan): the same numbers, faster. max_pool2d(relu(c)) == relu(max(c's 2x2
        # cells)) exactly; on one CPU thread max_pool2d took a third of lenet's time.
        return self.fc1(_pool2_relu(f[3](_pool2_relu(f[0](x)))).flatten(1))

    def make_neck(self) -> nn.Module:
        return nn.Linear(120, self.neck_features)


def _pool2_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(max_pool2d(x, 2)) as the maximum of strided views (odd sizes floored, as max_pool2d
    does): exactly max_pool2d's values (NaN included), several times faster on a CPU."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = torch.maximum(x[..., 0:h:2, :w], x[..., 1:h:2, :w])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2]).relu_()


class Classifier(nn.Module):
    """backbone -> h; logits = classifier(neck(h)); deep features = h / ||h||.

    The deep features the center loss pulls together and the detectors model are the backbone's
    output, L2-normalised. Measured on MNIST vs Fashion-MNIST (docs/method.md), normalising was
    the largest single gain: raw features gave AUROC 0.93-0.98, normalised ones 0.995-0.999, and
    center loss on raw features hurt detection at every lambda while on normalised ones it helps
    slightly. For lenet the backbone ends at the 120-unit layer and the 84-unit layer is the
    neck; timm backbones end at their pooled features and have no neck.
    """

    weights_mapping = None  # build_model: how a local weights file was loaded (nn.weights.WeightsMapping)

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, neck: nn.Module | None = None, neck_dim: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.neck = neck if neck is not None else nn.Identity()
        self.classifier = nn.Linear(neck_dim or feature_dim, num_classes)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return self.classifier(self.neck(h)), F.normalize(h, dim=1)


class L2Normalize(nn.Module):
    """h -> h / ||h||: the neck of a Gaussian classifier (no parameters)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(h, dim=1)


LOGITS = ("linear", "gaussian")


def set_gaussian_logits(model: Classifier, means, precision, scale: float) -> None:
    """Make the classifier the Gaussian (linear discriminant) classifier of the deep features:
    logit_k = (f . P mu_k - mu_k . P mu_k / 2) / scale, so argmax = the class of smallest
    Mahalanobis distance under the shared precision P (the model must be built with
    logits='gaussian': its neck normalises h, so the classifier sees the deep features f)."""
    import numpy as np

    w = np.asarray(means, dtype=np.float64) @ np.asarray(precision, dtype=np.float64)
    b = -0.5 * np.einsum("kd,kd->k", w, np.asarray(means, dtype=np.float64))
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(w / scale))
        model.classifier.bias.copy_(torch.from_numpy(b / scale))


def last_layer(model: Classifier):
    """(weight W, bias b, input) of the classifier's logits as one affine map, logits = W x + b,
    float64 numpy: a linear neck (lenet's 84-unit layer) is folded in (W = W2 W1, b = W2 b1 + b2).
    `input` names x: "features" when the neck L2-normalises (the Gaussian logits of --epochs 0:
    x is the deep feature row), "unnormalised" otherwise (x is the backbone's output h before its
    normalisation; the deep features are h / |h|). ViM's origin -pinv(W) b comes from these."""
    import numpy as np

    def numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float64).numpy()

    w, b = numpy(model.classifier.weight), numpy(model.classifier.bias)
    neck = model.neck
    if isinstance(neck, L2Normalize):
        return w, b, "features"
    if isinstance(neck, nn.Linear):
        w1 = numpy(neck.weight)
        b1 = numpy(neck.bias) if neck.bias is not None else np.zeros(w1.shape[0])
        return w @ w1, w @ b1 + b, "unnormalised"
    if isinstance(neck, nn.Identity):
        return w, b, "unnormalised"
    raise ValueError(f"the classifier's neck ({type(neck).__name__}) is not affine")


class ModelBuildError(ImgcleanError, ValueError):
    """The network cannot be built; the message is one line naming the model and the reason."""


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _timm_pretrained_cfg(arch: str):
    """timm's registered defaults for `arch` (None when it has none); unknown names fail here."""
    import timm  # heavy; only for timm architectures

    if arch.startswith(("hf-hub:", "local-dir:")):  # timm reads these configs when creating the model
        return None
    if not timm.is_model(arch):
        raise ModelBuildError(
            f"unknown architecture {arch!r}: use 'lenet' or a timm model name "
            "(e.g. efficientnet_b0, resnet18; see timm.list_models())"
        )
    try:
        return timm.models.get_pretrained_cfg(arch)
    except Exception as exc:  # e.g. an unknown pretrained tag: resnet18.nonsense
        raise ModelBuildError(f"cannot build {arch}: {_one_line(exc)}") from None


def _needs_img_size(pretrained_cfg, input_size: int | None) -> bool:
    """A model with a fixed input size (e.g. a ViT's position embedding) is built for this size."""
    if pretrained_cfg is None or input_size is None or not getattr(pretrained_cfg, "fixed_input_size", False):
        return False
    return tuple(pretrained_cfg.input_size[-2:]) != (input_size, input_size)


def _timm_backbone(arch: str, in_channels: int, pretrained: bool, input_size: int | None) -> nn.Module:
    """timm.create_model without a classifier. Fixed-size models get img_size=input_size, a pure
    function of (arch, input_size), so loading a saved model rebuilds the same network."""
    import timm

    pretrained_cfg = _timm_pretrained_cfg(arch)
    kwargs = {"num_classes": 0, "in_chans": in_channels}
    if _needs_img_size(pretrained_cfg, input_size):
        kwargs["img_size"] = input_size

    def create():
        return timm.create_model(arch, pretrained=pretrained, **kwargs)

    try:
        return load_pretrained(arch, create) if pretrained else create()
    except (ModelBuildError, PretrainedError):
        raise  # already one line naming the model
    except ValueError as exc:
        raise ModelBuildError(f"cannot build {arch}: {_one_line(exc)}") from None
    except TypeError as exc:
        if "img_size" in kwargs and "img_size" in str(exc):
            fixed = pretrained_cfg.input_size[-1]
            raise ModelBuildError(
                f"{arch} takes only {fixed}x{fixed} inputs and cannot be built for {input_size}; "
                f"drop --input-size or use --input-size {fixed}"
            ) from None
        raise ModelBuildError(f"cannot build {arch}: {_one_line(exc)}") from None
    except Exception as exc:  # timm raises RuntimeError, AssertionError, ... for bad arguments
        size = f" for {input_size}x{input_size} inputs" if input_size else ""
        raise ModelBuildError(f"cannot build {arch}{size}: {_one_line(exc)}") from None


def timm_data_config(backbone: nn.Module) -> dict:
    """timm's own data configuration for a created model: input_size (pixels, square side),
    interpolation, crop_pct, mean, std (per channel, 0..1 scale)."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(backbone)
    interpolation = str(cfg.get("interpolation") or "bilinear")
    return {
        "input_size": int(cfg["input_size"][-1]),
        "interpolation": interpolation if interpolation in INTERPOLATIONS else "bilinear",
        "crop_pct": float(cfg.get("crop_pct") or 1.0),
        "mean": [float(m) for m in cfg["mean"]],
        "std": [float(s) for s in cfg["std"]],
    }


def timm_train_transform(backbone: nn.Module, input_size: int, channels: int, mean: list[float],
                         std: list[float], interpolation: str):
    """timm's standard training transform for this model (random resized crop, horizontal flip,
    colour jitter: timm.data.create_transform(is_training=True) on the model's data config),
    for the decoded image (PIL, input_size pixels), normalised with `mean` and `std`."""
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(backbone)
    cfg.update(input_size=(channels, input_size, input_size), mean=tuple(mean), std=tuple(std),
               interpolation=interpolation)
    cfg.pop("crop_mode", None)
    return create_transform(**cfg, is_training=True)


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    input_size: int | None,
    pretrained: bool = False,
    weights: Path | Checkpoint | None = None,
    logits: str = "linear",
) -> Classifier:
    """Build a classifier; `weights` is a local state dict for the backbone (a path, or a
    Checkpoint already read), loaded by nn.weights' rules; what it did is the classifier's
    `weights_mapping` (a WeightsMapping; None without weights).

    `logits` "gaussian": the class logits come from the normalised deep features through one
    linear layer set by set_gaussian_logits (fit --epochs 0: a frozen backbone, no training);
    "linear" (default): the trained classifier head.

    For a timm model `input_size` None means its own default size (timm_data_config).
    Raises ModelBuildError (a ValueError) with one line for any model that cannot be built.
    """
    if logits not in LOGITS:
        raise ModelBuildError(f"logits must be one of {', '.join(LOGITS)}, got {logits!r}")
    if arch == LENET:
        if pretrained:
            raise ModelBuildError("--pretrained needs a timm architecture; lenet has no pretrained weights")
        if input_size is None:
            raise ModelBuildError("lenet needs an input size")
        lenet = LeNet(in_channels, input_size)
        mapping = _load_weights(lenet, weights, arch, logits)
        if logits == "gaussian":
            model = Classifier(lenet, lenet.num_features, num_classes, L2Normalize(), lenet.num_features)
        else:
            model = Classifier(lenet, lenet.num_features, num_classes, lenet.make_neck(), lenet.neck_features)
        model.weights_mapping = mapping
        return model
    backbone = _timm_backbone(arch, in_channels, pretrained, input_size)
    mapping = _load_weights(backbone, weights, arch, logits)
    size = input_size or timm_data_config(backbone)["input_size"]
    dim = _output_dim(backbone, arch, in_channels, size)
    model = Classifier(backbone, dim, num_classes, L2Normalize(), dim) if logits == "gaussian" \
        else Classifier(backbone, dim, num_classes)
    model.weights_mapping = mapping
    return model


def _load_weights(backbone: nn.Module, weights, arch: str, logits: str) -> WeightsMapping | None:
    """The local weights file into `backbone` (gaussian logits: a frozen backbone, every tensor needed)."""
    if weights is None:
        return None
    mapping = load_backbone_weights(backbone, weights, arch, frozen=logits == "gaussian")
    log.info("%s", mapping.describe())
    return mapping


def _output_dim(backbone: nn.Module, arch: str, in_channels: int, input_size: int) -> int:
    """Width of what the backbone returns. Not always num_features: MobileNetV3, for one, adds
    a conv head after pooling. Also proves the model takes inputs of this size."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            dim = backbone(torch.zeros(1, in_channels, input_size, input_size)).shape[1]
    except Exception as exc:
        raise ModelBuildError(
            f"{arch} cannot take {input_size}x{input_size} inputs ({_one_line(exc)}); choose another --input-size"
        ) from None
    finally:
        backbone.train(was_training)
    return int(dim)
