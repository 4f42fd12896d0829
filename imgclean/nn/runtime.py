"""The one inference runtime: where a network runs and how (device, dtype, memory layout, threads).

Training and every kind of embedding (fit's statistics, fit-head, evaluate, scan) go through
here, so the device rules, channels_last and mixed precision are decided once.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .models import Classifier


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def prepare_for_inference(model: Classifier, device, arch: str, input_size: int) -> Classifier:
    """Once, before the first batch: thread counts, eval mode, channels_last for timm CNNs.

    On a CPU, decode threads and intra-op threads share the cores: torch gets about half of
    them unless IMGCLEAN_TORCH_THREADS or OMP_NUM_THREADS says otherwise.
    """
    on_cuda = str(device).startswith("cuda")
    if os.environ.get("IMGCLEAN_TORCH_THREADS", "").isdigit():
        torch.set_num_threads(max(1, int(os.environ["IMGCLEAN_TORCH_THREADS"])))
    elif not on_cuda and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, default_threads() // 2))
    if arch != "lenet" and (on_cuda or input_size >= 64):
        model.to(memory_format=torch.channels_last)
    model.eval()
    return model


def to_tensor(images: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float (N, C, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def predict_arrays(
    model: Classifier,
    images: np.ndarray,
    mean: list[float],
    std: list[float],
    device: torch.device,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, deep features) for uint8 images, in eval mode, a batch at a time.

    On CUDA the uint8 batch is pinned and copied asynchronously, normalised on the device, and the
    forward pass runs under autocast (float16); outputs come back as float32. CPU is unchanged.
    """
    model.eval()
    device = torch.device(device)
    cuda = device.type == "cuda"
    conv = next((p for p in model.parameters() if p.dim() == 4), None)
    channels_last = conv is not None and not conv.is_contiguous() and conv.is_contiguous(memory_format=torch.channels_last)
    logits, feats = [], []
    with torch.inference_mode():
        if cuda:
            m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
            s = torch.tensor(std, device=device).view(1, -1, 1, 1)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            if cuda:
                raw = torch.from_numpy(np.ascontiguousarray(chunk)).pin_memory()
                x = raw.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
                x = (x - m) / s
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.float16):
                    lo, fe = model(x)
            else:
                x = to_tensor(chunk, mean, std).to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lo, fe = model(x)
            logits.append(lo.float().cpu().numpy())
            feats.append(fe.float().cpu().numpy())
    if not logits:
        return np.zeros((0, model.classifier.out_features)), np.zeros((0, model.feature_dim))
    return np.concatenate(logits), np.concatenate(feats)
