"""Training images as a stream: files decoded per batch by DataLoader workers, or one in-memory array.

`fit` reads the training set once (pipeline/fit/trainset.py: every file's status, the channel
statistics, and the decoded images kept when they fit the cache budget). What the training loop
and the embedding pass then get is either

- a uint8 array (N, H, W, C): the decode-once cache, exactly what training used before, or
- `StreamedImages`: the files that decoded, read again per batch by DataLoader workers with the
  caller's decode function (imgclean's safe decoder, pipeline.decode.decode_one: this module is
  in nn/ and takes it as a picklable callable). Memory stays flat in the number of images.

A file that decoded in the first pass but fails later (changed on disk meanwhile) is dropped
from its batch by `collate_ok`; the batch's index tensor says which images it holds.

The cache budget (`cache_budget`): decoded images are kept in memory when all of them fit in
min(CACHE_CAP_BYTES, CACHE_FRACTION of the available memory), unless `fit --cache-memory`
names a size (0 = always stream).
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

CACHE_FRACTION = 0.25
CACHE_CAP_BYTES = 1 << 30  # 1 GiB: 40,000 96-px RGB images (1.1 GB) stream, 60,000 28-px digits (47 MB) are cached
MAX_WORKERS = 8


def fixed_mmap_threshold(size: int = 1 << 17) -> bool:
    """glibc only: serve every allocation above `size` bytes from mmap, returned to the system
    when freed. By default glibc raises that threshold after the first large free, and then a
    batch's large tensors come from the heap, which fragments: measured, a streamed fit's
    memory then grew by about 29 KB an image during the embedding; with the fixed threshold it
    stays flat. Returns whether it was set (False on other C libraries)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(size)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable), or total memory / 2."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def cache_budget(requested: int | None = None) -> int:
    """Bytes the decoded training images may take in memory: `requested`, or the automatic budget."""
    if requested is not None:
        return max(0, int(requested))
    return int(min(CACHE_CAP_BYTES, CACHE_FRACTION * available_memory()))


def parse_size(text: str) -> int:
    """'0', '512M', '2G', '1.5GB', '300000' -> bytes; ValueError with the accepted forms otherwise."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        value = float(t[: len(t) - len(unit)] if unit else t)
    except ValueError:
        raise ValueError(f"size {text!r}: use a number of bytes or K, M, G (e.g. 512M, 2G; 0 = off)") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"size {text!r} must be 0 or more")
    return int(value * units[unit])


def loader_workers(cpus: int | None = None) -> int:
    """DataLoader worker processes: one per CPU but one (the training loop's), 1 to MAX_WORKERS."""
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus - 1))


class ChannelHistogram:
    """Per-channel histograms of uint8 pixel values: exact running statistics, no float copies."""

    def __init__(self, channels: int):
        self.counts = np.zeros((channels, 256), dtype=np.int64)

    def add(self, image: np.ndarray) -> None:
        flat = np.asarray(image).reshape(-1, self.counts.shape[0])
        for c in range(self.counts.shape[0]):
            self.counts[c] += np.bincount(flat[:, c], minlength=256)

    def merge(self, counts: np.ndarray) -> None:
        self.counts += counts

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std on the 0..1 scale (std at least 1e-3), as channel_stats gives."""
        values = np.arange(256, dtype=np.float64) / 255.0
        n = np.maximum(self.counts.sum(axis=1), 1).astype(np.float64)
        mean = (self.counts * values).sum(axis=1) / n
        var = (self.counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
        return mean.tolist(), np.maximum(np.sqrt(var), 1e-3).tolist()


# ---- datasets --------------------------------------------------------------------------------
class StreamedImages:
    """Training images read from their files when needed: items (paths or data.FileEntry) and a
    picklable `decode(item)` returning an object with .array (uint8 H x W x C or None), .status
    and .message (pipeline.decode.Decoded)."""

    def __init__(self, items: Sequence, decode: Callable, shape: tuple[int, int, int], workers: int | None = None):
        self.items = list(items)
        self.decode = decode
        self.shape = tuple(shape)
        self.workers = loader_workers() if workers is None else workers

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ndim(self) -> int:  # shape-alike with the in-memory array
        return 4


class ImagesDataset(Dataset):
    """(index, image) for an in-memory array or StreamedImages; `transform(PIL image) -> tensor`
    when given (timm's training transform), else the uint8 array. A failed decode gives None."""

    def __init__(self, source, transform: Callable | None = None):
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        if isinstance(self.source, StreamedImages):
            decoded = self.source.decode(self.source.items[i])
            array = decoded.array
            if array is None:
                return i, None
        else:
            array = self.source[i]
        if self.transform is None:
            return i, array
        from PIL import Image

        image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        return i, self.transform(image)


def collate_ok(batch):
    """(indices int64 tensor, images): uint8 (N, H, W, C) tensor or a float (N, C, H, W) tensor
    from a transform; items that failed to decode are left out (an empty batch gives None)."""
    kept = [(i, x) for i, x in batch if x is not None]
    if not kept:
        return None
    idx = torch.tensor([i for i, _ in kept], dtype=torch.int64)
    first = kept[0][1]
    if isinstance(first, torch.Tensor):
        return idx, torch.stack([x for _, x in kept])
    return idx, torch.from_numpy(np.stack([x for _, x in kept]))


class BatchList(Sampler):
    """A batch sampler that yields the index batches it was last given (one epoch's order).

    The training loop sets the batches each epoch, so the order comes from the loop's own
    generator exactly as with in-memory images; workers stay alive between epochs."""

    def __init__(self, batches: list | None = None):
        self.batches = batches or []

    def __iter__(self):
        return iter([list(map(int, b)) for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(dataset: Dataset, batches: BatchList, device, workers: int, seed: int = 0,
                persistent: bool = True) -> DataLoader:
    """A DataLoader over `dataset` with these batches: `workers` processes (kept between epochs
    when `persistent`), pinned memory on CUDA, failed decodes dropped (collate_ok)."""
    cuda = torch.device(device).type == "cuda"
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        pin_memory=cuda,
        collate_fn=collate_ok,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


def batches_of(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]


def iterate(source, indices: np.ndarray, batch_size: int, device, transform: Callable | None = None, seed: int = 0):
    """(indices, images) batches of `source` over `indices` in order: slices of an in-memory
    array (no transform), or a DataLoader (StreamedImages, or any transform)."""
    if transform is None and not isinstance(source, StreamedImages):
        for idx in batches_of(np.asarray(indices), batch_size):
            yield torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(np.ascontiguousarray(source[idx]))
        return
    workers = source.workers if isinstance(source, StreamedImages) else loader_workers()
    loader = make_loader(ImagesDataset(source, transform), BatchList(batches_of(np.asarray(indices), batch_size)),
                         device, workers, seed, persistent=False)
    try:
        for batch in loader:
            if batch is not None:
                yield batch
    finally:
        del loader
