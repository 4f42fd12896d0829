"""Training the classifier with cross-entropy + lambda * center loss, and embedding images.

Images arrive as one uint8 array (N, H, W, C), each decoded once (the decode-once cache), or as
nn.datasets.StreamedImages, decoded per batch by DataLoader workers (memory flat in the number of
images); the epoch order, the batches and the random shifts are the same either way, so on a
CPU both give the same model. A `transform` (timm's training transform for photo models) runs
on each decoded image in the workers instead of the small random shift. Read top to bottom:
split, loop over epochs, evaluate.

How the network runs (device, mixed precision, memory layout) is nn.runtime's decision: on a CPU
nothing changes (plain float32, the results bit-for-bit those before the runtime existed); on
CUDA the forward pass and cross-entropy run under autocast (bfloat16 where supported, else
float16 with a gradient scaler), and the center loss with its centre update stays float32.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import LENET, TrainSettings
from ..metrics import macro_f1
from . import runtime as rt
from .datasets import (
    BatchList, ChannelHistogram, ImagesDataset, StreamedImages, batches_of, loader_workers, make_loader,
)
from .losses import CenterLoss
from .models import Classifier, LeNet

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    epoch: int
    epochs: int
    loss: float
    ce_loss: float
    center_loss: float
    train_accuracy: float
    val_accuracy: float | None = None
    val_macro_f1: float | None = None


@dataclass
class TrainResult:
    history: list[EpochStats] = field(default_factory=list)
    val_metrics: dict = field(default_factory=dict)
    epochs: int = 0  # trained: more than asked when min_steps raised them (steps_per_epoch says why)
    steps_per_epoch: int = 0
    train_indices: np.ndarray | None = None
    val_indices: np.ndarray | None = None
    centers: np.ndarray | None = None  # the center loss's final centres


# Called after every batch: (epoch, epochs, batch, batches_per_epoch, running_loss, running_accuracy).
BatchCallback = Callable[[int, int, int, int, float, float], None]
EpochCallback = Callable[[EpochStats], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale (std at least 1e-3).

    Exact per-channel histograms, one image at a time: no float copy of the array."""
    hist = ChannelHistogram(images.shape[-1])
    for image in images:
        hist.add(image)
    return hist.mean_std()


def plain(model):
    """The network inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val). Each class gives `fraction` of its images, keeping at least one for training."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * fraction)) if len(idx) >= 2 else 0
        n_val = min(n_val, len(idx) - 1)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def random_shift(x: torch.Tensor, generator: torch.Generator, max_fraction: float = 0.08) -> torch.Tensor:
    """Translate each image by up to `max_fraction` of its size (zero padding)."""
    n, _, h, w = x.shape
    pad = max(1, int(round(max(h, w) * max_fraction)))
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


@dataclass(slots=True)
class _Step:
    """One optimisation step of train_classifier: cross-entropy + center_weight * center loss,
    (scaled on float16 CUDA), the schedule, the centres' update; the batch's sums added up."""

    optimizer: object
    scaler: object
    scheduler: object
    center_weight: float
    device: object
    amp: object
    channels_last: bool

    def __call__(self, model, center_loss, x, y, sums: dict) -> None:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast(self.device, self.amp):
            logits, feats = model(x)
            ce = F.cross_entropy(logits, y)
        feats = feats.float()  # center loss and its centre update in float32 (a no-op on CPU)
        cl = center_loss(feats, y)
        loss = ce + self.center_weight * cl
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:  # float16 on CUDA: scale the loss so small gradients do not underflow
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        center_loss.update_centers(feats, y)
        n = len(y)
        sums["loss"] += loss.item() * n
        sums["ce"] += ce.item() * n
        sums["center"] += cl.item() * n
        sums["correct"] += int((logits.argmax(1) == y).sum())
        sums["seen"] += n


def _epoch_stats(epoch: int, epochs: int, sums: dict) -> "EpochStats":
    seen = max(sums["seen"], 1)
    return EpochStats(epoch, epochs, sums["loss"] / seen, sums["ce"] / seen, sums["center"] / seen, sums["correct"] / seen)


def _accuracy_and_f1(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> tuple[float, float]:
    return float(np.mean(pred == truth)), macro_f1(truth, pred, num_classes)


def train_classifier(
    model: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    mean: list[float],
    std: list[float],
    settings: TrainSettings,
    device: torch.device,
    on_batch: BatchCallback | None = None,
    on_epoch: EpochCallback | None = None,
    transform: Callable | None = None,
    dist=None,
) -> TrainResult:
    """Train `model` in place; returns per-epoch statistics and validation metrics.

    `images`: a uint8 array or nn.datasets.StreamedImages. `transform`: a per-image training
    transform (PIL image -> normalised tensor) that replaces the random shift. `dist`: an
    nn.distributed.Distributed when torchrun started several processes (each trains on its
    share of every batch; nn/distributed.py), else None.
    """
    seed_everything(settings.seed)
    num_classes = model.classifier.out_features
    train_idx, val_idx = stratified_split(labels, settings.val_fraction, settings.seed)
    result = TrainResult(train_indices=train_idx, val_indices=val_idx)

    model.to(device)
    arch = LENET if isinstance(getattr(model, "backbone", None), LeNet) else "timm"
    channels_last = rt.use_channels_last(arch, device, images.shape[1], training=True)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp = rt.amp_dtype(device, training=True)
    scaler = rt.grad_scaler(device, amp)
    center_loss = CenterLoss(num_classes, model.feature_dim, settings.center_alpha).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(train_idx) / settings.batch_size)))
    # A few hundred images make a handful of batches an epoch: train longer so the run still
    # has min_steps updates (300 images: 15 -> 60 epochs, which detected best in docs/method.md).
    # Not logged: the caller reports it (fit's summary, the API's result) from result.epochs.
    epochs = max(settings.epochs, int(np.ceil(settings.min_steps / steps_per_epoch)))
    result.epochs, result.steps_per_epoch = epochs, steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=epochs * steps_per_epoch
    )
    step = _Step(optimizer, scaler, scheduler, settings.center_weight, device, amp, channels_last)
    generator = torch.Generator().manual_seed(settings.seed)
    y_all = torch.from_numpy(labels.astype(np.int64))
    loader, batch_list = _loader(images, transform, device, settings.seed)
    shift_generator = generator
    if dist is not None:
        model, center_loss = dist.wrap(model, center_loss, device)
        # the epoch order must stay the same on every rank: shifts draw from a generator of their own
        shift_generator = torch.Generator().manual_seed(settings.seed + 7919 * (dist.rank + 1))

    for epoch in range(1, epochs + 1):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]
        sums = {"loss": 0.0, "ce": 0.0, "center": 0.0, "correct": 0, "seen": 0}
        batches = _batches(batches_of(order, settings.batch_size), dist, batch_list, loader, images)
        for b, item in enumerate(batches, start=1):
            if item is None:  # every image of this batch failed to decode (changed on disk since)
                continue
            idx, raw = item
            x = raw if transform is not None else _shifted(rt.to_tensor(raw, mean, std), settings.augment, shift_generator)
            y = y_all[idx].to(device)
            step(model, center_loss, x.to(device), y, sums)
            if on_batch is not None:
                on_batch(epoch, epochs, b, steps_per_epoch, sums["loss"] / sums["seen"], sums["correct"] / sums["seen"])

        stats = _epoch_stats(epoch, epochs, sums)
        if len(val_idx):
            logits, _, kept = rt.predict_images(plain(model), images, val_idx, mean, std, device)
            stats.val_accuracy, stats.val_macro_f1 = _accuracy_and_f1(logits.argmax(1), labels[kept], num_classes)
        result.history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)

    del loader  # stops its workers
    result.centers = center_loss.centers.detach().cpu().numpy().copy()
    result.val_metrics = _val_metrics(result.history, len(val_idx), epochs)
    return result


def _loader(images, transform, device, seed: int):
    """(loader, its BatchList) when images are decoded or transformed by loader workers, else (None, None)."""
    if transform is None and not isinstance(images, StreamedImages):
        return None, None
    batch_list = BatchList()
    workers = images.workers if isinstance(images, StreamedImages) else loader_workers()
    return make_loader(ImagesDataset(images, transform), batch_list, device, workers, seed), batch_list


def _batches(epoch_batches: list, dist, batch_list, loader, images):
    """An epoch's (indices, images) batches: this rank's share of each under torchrun; through
    the loader when it decodes or transforms them, else sliced from the array."""
    if dist is not None:
        epoch_batches = [dist.shard(idx) for idx in epoch_batches if len(idx) >= dist.world_size]
    if batch_list is not None:
        batch_list.batches = epoch_batches
        return loader
    return ((idx, images[idx]) for idx in epoch_batches)


def _shifted(x, augment: bool, generator):
    return random_shift(x, generator) if augment else x


def _val_metrics(history: list, val_images: int, epochs: int) -> dict:
    last = history[-1] if history else None
    return {
        "val_images": int(val_images),
        "val_accuracy": last.val_accuracy if last else None,
        "val_macro_f1": last.val_macro_f1 if last else None,
        "train_accuracy": last.train_accuracy if last else None,
        "final_loss": last.loss if last else None,
        "epochs": epochs,
    }
