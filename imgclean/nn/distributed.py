"""Many processes under torchrun: DistributedDataParallel training and statistics summed over ranks.

`torchrun --nproc_per_node=N -m imgclean fit DIR ...` starts N copies of fit; torchrun's
environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT) makes `Distributed.from_env` join
them: nccl on GPUs (process r on cuda:LOCAL_RANK), gloo on CPUs. Every rank reads the same
folder, makes the same split and the same epoch order (same seed); each trains on its share of
every global batch (`shard`: positions rank, rank + N, ...: never padded), so --batch-size stays
the global batch. What DDP does not do by itself, done here:

- center loss: its centres are a buffer moved by the paper's rule, not by gradients. Each step
  (and the first-batch initialisation) adds up the per-class feature sums and counts of all
  ranks (`reduce_class_sums`) before applying them: exactly the single-process update over the
  global batch.
- detector statistics: each rank embeds its unpadded share of the images; the Mahalanobis fit
  adds up its sufficient statistics over ranks (`reduce_arrays`, in chunks of CHUNK elements, so
  a per-class covariance of many classes goes through in pieces), and the training distances
  for the thresholds are gathered (`gather_rows`, n floats).
- the other detectors (energy, KNN) and the threshold calibration run on rank 0 on all features,
  gathered there in the original order; only rank 0 prints and saves, the others wait.

Timm models on GPUs get SyncBatchNorm (batch statistics over the global batch).
"""
from __future__ import annotations

import datetime
import os
import sys

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

CHUNK = 1 << 24  # elements per all_reduce call (128 MB of float64)
TIMEOUT_S = 1800
# True once this process has destroyed its process group: it then leaves with leave_process.
group_closed = False


def requested() -> bool:
    """Whether torchrun (or the like) started several processes for this command."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


class Distributed:
    """This process's place in a torchrun group and the collectives fit needs."""

    def __init__(self, rank: int, world_size: int, local_rank: int, backend: str):
        self.rank, self.world_size, self.local_rank, self.backend = rank, world_size, local_rank, backend

    @classmethod
    def from_env(cls, device: str = "auto") -> "Distributed | None":
        """Join the group torchrun set up (None when this is a single process)."""
        if not requested():
            return None
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        cuda = device in ("auto", "cuda") and torch.cuda.is_available() or device.startswith("cuda")
        backend = "nccl" if cuda else "gloo"
        if not tdist.is_initialized():
            kwargs = {"device_id": torch.device("cuda", local)} if cuda else {}
            if cuda:
                torch.cuda.set_device(local)
            tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S), **kwargs)
        return cls(rank, world, local, backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    # ---- training ------------------------------------------------------------------------
    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's share of a batch (or of all images): positions rank, rank + N, ... (unpadded)."""
        return np.asarray(indices)[self.rank :: self.world_size]

    def wrap(self, model: nn.Module, center_loss, device):
        """DDP around the model (SyncBatchNorm for batch-norm models on GPUs); the centre updates
        of center loss summed over ranks."""
        if self.backend == "nccl":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [torch.device(device).index] if torch.device(device).type == "cuda" else None
        center_loss.reduce = self.reduce_class_sums
        return nn.parallel.DistributedDataParallel(model, device_ids=ids), center_loss

    def reduce_class_sums(self, sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.cat([sums, counts[:, None]], dim=1)
        tdist.all_reduce(both)
        return both[:, :-1], both[:, -1]

    # ---- statistics ----------------------------------------------------------------------
    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array))
        return t.to(self.device()) if self.backend == "nccl" else t

    def reduce_arrays(self, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each array summed over ranks (float64), CHUNK elements per call."""
        out = {}
        for key in sorted(stats):  # the same order on every rank
            flat = np.ascontiguousarray(stats[key], dtype=np.float64).reshape(-1).copy()
            for start in range(0, flat.size, CHUNK):
                t = self._tensor(flat[start : start + CHUNK])
                tdist.all_reduce(t)
                flat[start : start + CHUNK] = t.cpu().numpy()
            out[key] = flat.reshape(np.shape(stats[key]))
        return out

    def gather_rows(self, array: np.ndarray) -> np.ndarray:
        """Every rank's rows, concatenated in rank order (on every rank)."""
        array = np.ascontiguousarray(array)
        n = self._tensor(np.array([len(array)], dtype=np.int64))
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        tdist.all_gather(sizes, n)
        sizes = [int(s.item()) for s in sizes]
        padded = np.zeros((max(sizes), *array.shape[1:]), dtype=array.dtype)
        padded[: len(array)] = array
        t = self._tensor(padded)
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        tdist.all_gather(parts, t)
        return np.concatenate([p.cpu().numpy()[:s] for p, s in zip(parts, sizes, strict=True)])

    def barrier(self) -> None:
        if self.backend == "nccl":
            tdist.barrier(device_ids=[self.local_rank])
        else:
            tdist.barrier()

    def close(self) -> None:
        global group_closed
        if tdist.is_initialized():
            tdist.destroy_process_group()
            group_closed = True


def leave_process(code: int):
    """Exit now with `code`, stdout and stderr flushed, skipping the interpreter's teardown.

    After a gloo group is destroyed, a thread of it can still abort the process while the
    interpreter tears down ("terminate called without an active exception", SIGABRT; seen under
    load, after all work was done and the model saved), and torchrun then reports the whole run
    as failed. Everything a command writes is closed before this is called."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
