"""What every model of this package needs from Lightning's multi-process strategies (ddp, ddp_spawn, torchrun, SLURM).

Two things stand between several processes and the figures one device would give:

- Lightning's ``DistributedSampler`` makes the shards equal by repeating up to ``world - 1``
  images at the end of the shards. Repeated images would be counted twice by the metrics (and,
  in a fit made of sums, by the statistics), so each process keeps only the samples of its shard
  that are not padding (:func:`unpadded`). The padding is always the tail of a shard: the
  sampler appends it to the global index list before dealing it out.
- anomalib's Engine creates a new versioned output folder in every process, so with Lightning's
  ``ddp`` launcher (which starts the other processes by running the command again) the test
  images of each shard land in a different folder and ``latest`` points to one without the
  checkpoint. :func:`share_output_folder` makes every process write into rank 0's folder and
  removes the empty ones the others made.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch.utils.data import DistributedSampler

from .run_folders import discard_if_empty, is_version_folder, point_latest


def world_size() -> int:
    """The number of processes of the job (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def unpadded(loader: Any, seen: int, size: int) -> int:
    """How many of the next ``size`` samples, after ``seen`` of this process's shard, are not sampler padding."""
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return size
    # Shard r holds the global positions r, r + world, ...; positions past the data set are repeats.
    genuine = len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))
    return max(0, min(size, genuine - seen))


def broadcast_from_rank_zero(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite every process's ``tensors`` with rank 0's, in place; every process passes the same ones, in order."""
    with torch.no_grad():
        for tensor in tensors:
            if tensor.numel():
                dist.broadcast(tensor, src=0)


def gather_objects(value: object) -> list[object]:
    """Every process's ``value``, in rank order."""
    values: list[object] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def share_output_folder(trainer: Any) -> None:
    """Make every process write into rank 0's output folder, remove the others' empty ones, repoint ``latest``."""
    folders = [Path(folder) for folder in gather_objects(str(trainer.default_root_dir))]
    main, own = folders[0], folders[dist.get_rank()]
    if own != main:
        # Lightning has no public setter; everything that writes files (visualiser, loggers, export) reads it.
        trainer._default_root_dir = str(main)
        for callback in trainer.callbacks:
            dirpath = getattr(callback, "dirpath", None)
            if isinstance(dirpath, str | Path) and Path(dirpath).is_relative_to(own):
                callback.dirpath = str(main / Path(dirpath).relative_to(own))
        discard_if_empty(own)
    dist.barrier()
    if dist.get_rank() == 0 and is_version_folder(main) and not (main.parent / "latest").exists():
        point_latest(main)
    dist.barrier()
