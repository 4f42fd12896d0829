"""The one inference runtime: where a network runs and how (device, dtype, memory layout, threads).

Training and every kind of embedding (fit's statistics, fit-head, evaluate, scan) go through
here, so these are decided once, each by one small function that needs no GPU to test:

- `pick_device`: the device ("auto" = cuda, then mps, then cpu).
- `amp_dtype`: mixed precision. None (plain float32) anywhere but CUDA. On CUDA, training runs
  under bfloat16 where the GPU supports it, else float16 with a gradient scaler
  (`grad_scaler`); inference runs under float16 (more mantissa than bfloat16 for the scores that
  are compared with thresholds, and eval-mode activations stay well inside its range).
- `use_channels_last`: the memory layout. timm CNNs on CUDA, and for inference on a CPU from
  64 px up; never lenet, and never CPU training (kept exactly as it was).
- `default_batch_size`: the inference batch when the caller gives none (CPU 256, CUDA 1024).

On a CPU every choice here is the identity: no autocast, no scaler, the layout unchanged, so CPU
results are bit-for-bit those of plain float32 PyTorch. The CUDA branches are a handful of
lines each, kept obviously right because no test here can run them.

Room for many processes (torchrun): the device is still chosen here; a distributed run will pass
its local rank's device (cuda:N) in, and nothing below assumes one device per machine.
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from .. import tuning
from ..config import LENET

CPU_BATCH = 256
CUDA_BATCH = 1024
CHANNELS_LAST_MIN_SIZE = 64  # CPU inference: channels_last pays off for timm CNNs from here up


# ---- the decisions ---------------------------------------------------------------------------
def pick_device(requested: str = "auto") -> torch.device:
    """cuda, then mps, then cpu, unless a device is named (then it must be available)."""
    if requested != "auto":
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ValueError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError("--device mps was asked for, but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def amp_dtype(device, training: bool = False, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32 (every device but CUDA).

    `bf16_supported` None asks the GPU (torch.cuda.is_bf16_supported); tests pass it in.
    """
    if not is_cuda(device):
        return None
    if not training:
        return torch.float16
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else torch.float16


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 and float32 do not need it."""
    return dtype == torch.float16


def use_channels_last(arch: str, device, input_size: int, training: bool = False) -> bool:
    """Whether a network runs with channels_last weights and inputs (the one rule)."""
    if arch == LENET:
        return False
    if is_cuda(device):
        return True
    return not training and input_size >= CHANNELS_LAST_MIN_SIZE


def default_batch_size(device) -> int:
    """Inference batch size when the caller gives none."""
    return CUDA_BATCH if is_cuda(device) else CPU_BATCH


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---- applying them ---------------------------------------------------------------------------
def autocast(device, dtype: torch.dtype | None):
    """A context for the forward pass: autocast to `dtype`, or nothing when dtype is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(device, dtype: torch.dtype | None) -> "torch.amp.GradScaler | None":
    """A GradScaler when `dtype` needs one (float16 on CUDA), else None."""
    return torch.amp.GradScaler(torch.device(device).type) if needs_grad_scaler(dtype) else None


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's conv weights are in channels_last layout (inputs then follow them)."""
    conv = next((p for p in model.parameters() if p.dim() == 4), None)
    return conv is not None and not conv.is_contiguous() and conv.is_contiguous(memory_format=torch.channels_last)


def prepare_for_inference(model: nn.Module, device, arch: str, input_size: int) -> nn.Module:
    """Once, before the first batch: thread counts, eval mode, channels_last (use_channels_last).

    On a CPU, decode threads and intra-op threads share the cores: torch gets about half of
    them unless IMGCLEAN_TORCH_THREADS or OMP_NUM_THREADS says otherwise.
    """
    threads = tuning.current().torch_threads
    if threads is not None:
        torch.set_num_threads(threads)
    elif not is_cuda(device) and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, default_threads() // 2))
    if use_channels_last(arch, device, input_size):
        model.to(memory_format=torch.channels_last)
    model.eval()
    return model


def to_tensor(images, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N, H, W, C) array or tensor -> normalised float (N, C, H, W)."""
    raw = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    x = raw.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def predict_arrays(
    model: nn.Module,
    images: np.ndarray,
    mean: list[float],
    std: list[float],
    device,
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, deep features), both float32, for uint8 images (N, H, W, C), in eval mode.

    `batch_size` None: default_batch_size(device). Inputs follow the model's memory layout
    (prepare_for_inference sets it). On CUDA the uint8 batch is pinned and copied
    asynchronously, normalised on the device, and the forward pass runs under
    autocast(amp_dtype(device)); outputs come back as float32. On a CPU: plain float32.
    """
    batch_size = batch_size or default_batch_size(device)
    chunks = (images[start : start + batch_size] for start in range(0, len(images), batch_size))
    return predict_batches(model, chunks, mean, std, device)


def predict_batches(model: nn.Module, batches, mean: list[float], std: list[float], device) -> tuple[np.ndarray, np.ndarray]:
    """predict_arrays over an iterable of uint8 (N, H, W, C) batches (arrays or tensors)."""
    if any(m.training for m in model.modules()):  # eval() itself sets every module's flag: ~0.5 ms a call
        model.eval()
    device = torch.device(device)
    cuda = device.type == "cuda"
    channels_last = is_channels_last(model)
    dtype = amp_dtype(device)
    logits, feats = [], []
    with torch.inference_mode():
        if cuda:
            m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
            s = torch.tensor(std, device=device).view(1, -1, 1, 1)
        for chunk in batches:
            if cuda:
                raw = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(chunk))
                raw = raw if raw.is_pinned() else raw.pin_memory()
                x = raw.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
                x = (x - m) / s
            else:
                x = to_tensor(chunk, mean, std).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                lo, fe = model(x)
            logits.append(lo.float().cpu().numpy())
            feats.append(fe.float().cpu().numpy())
    if not logits:
        return (
            np.zeros((0, model.classifier.out_features), dtype=np.float32),
            np.zeros((0, model.feature_dim), dtype=np.float32),
        )
    return np.concatenate(logits), np.concatenate(feats)


def predict_images(model: nn.Module, images, indices: np.ndarray | None, mean: list[float], std: list[float],
                   device, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, features, indices kept) for `images[indices]`: an in-memory uint8 array, or
    nn.datasets.StreamedImages decoded by DataLoader workers (an image whose decode fails now is
    left out; the third array says which rows came back). `indices` None: all of them."""
    from .datasets import StreamedImages, iterate

    if not isinstance(images, StreamedImages):
        if indices is None:  # all of them: no copy of the array
            logits, feats = predict_arrays(model, images, mean, std, device, batch_size)
            return logits, feats, np.arange(len(images))
        indices = np.asarray(indices, dtype=np.int64)
        logits, feats = predict_arrays(model, images[indices], mean, std, device, batch_size)
        return logits, feats, indices
    indices = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    kept: list[np.ndarray] = []

    def batches():
        for idx, x in iterate(images, indices, batch_size or default_batch_size(device), device):
            kept.append(idx.numpy())
            yield x

    logits, feats = predict_batches(model, batches(), mean, std, device)
    return logits, feats, (np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64))
