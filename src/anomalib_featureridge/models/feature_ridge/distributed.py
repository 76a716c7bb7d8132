"""What an exact fit made of sums needs from Lightning's data-parallel strategies (ddp, ddp_spawn, torchrun, SLURM).

Each process sums the statistics of its shard; one float64 all-reduce when the epoch ends gives
every process the sums of the whole training set, so every process solves the same map as one
device would. Two things stand in the way, and are handled here:

- Lightning's ``DistributedSampler`` makes the shards equal by repeating up to ``world - 1``
  images at the end of the shards. Repeated rows would be counted twice, so each process keeps
  only the samples of its shard that are not padding (:func:`unpadded`). The padding is always the
  tail of a shard: the sampler appends it to the global index list before dealing it out.
- ``DistributedDataParallel`` refuses a module without trainable parameters, and there are no
  gradients to average anyway: the processes only need the same weights at the start
  (:func:`synchronise`) and the all-reduce at the end (:class:`AllReduce`: the neighbourhood
  sums of the paper and gaussian heads, the per-position sums of the gaussian and local heads).

A third thing is anomalib's, not Lightning's: its Engine creates a new versioned output folder
in every process, so with Lightning's ``ddp`` launcher (which starts the other processes by
running the command again) the test images of each shard land in a different folder and
``latest`` points to one without the checkpoint. :func:`share_output_folder` makes every process
write into rank 0's folder and removes the empty ones the others made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from anomalib_featureridge.components.run_folders import discard_if_empty, is_version_folder, point_latest

from .ridge import RidgeMoments
from .sums import MapSums


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


def _gather(value: object) -> list[object]:
    values: list[object] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def share_output_folder(trainer: Any) -> None:
    """Make every process write into rank 0's output folder, remove the others' empty ones, repoint ``latest``."""
    folders = [Path(folder) for folder in _gather(str(trainer.default_root_dir))]
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


def synchronise(module: nn.Module, settings: dict[str, Any]) -> None:
    """Refuse processes configured differently, naming them; then give every process rank 0's weights."""
    everyone = _gather(settings)
    differing = [rank for rank, other in enumerate(everyone) if other != everyone[0]]
    if differing:
        msg = (
            f"The processes of this distributed fit are configured differently: rank 0 has {everyone[0]}, "
            f"rank {differing[0]} has {everyone[differing[0]]}. Start every process with the same model settings."
        )
        raise ValueError(msg)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not name.startswith(("statistics.", "positions.")) and tensor.numel():
                dist.broadcast(tensor, src=0)


def _agreed_shape(shape: object, mismatch: Callable[[int, object, int, object], str]) -> object:
    """The statistics' shape every process that saw images agrees on; refuse no images anywhere, or two shapes.

    ``shape`` is this process's (``None`` when it saw no image); ``mismatch`` words the error for two
    ranks and their shapes.
    """
    shapes = {rank: other for rank, other in enumerate(_gather(shape)) if other is not None}
    if not shapes:
        msg = "No process of this distributed fit saw a training image: the training set is empty."
        raise ValueError(msg)
    (first, first_shape), *others = shapes.items()
    for rank, other in others:
        if other != first_shape:
            raise ValueError(mismatch(first, first_shape, rank, other))
    return first_shape


def _ridge_mismatch(first: int, first_shape: object, rank: int, shape: object) -> str:
    (inputs, targets), (other_inputs, other_targets) = first_shape, shape
    return (
        f"The processes' statistics differ in size: rank {first} has {inputs} inputs and {targets} targets, "
        f"rank {rank} has {other_inputs} and {other_targets}. Every process must use the same backbone and layers."
    )


def _map_mismatch(first: int, first_shape: object, rank: int, shape: object) -> str:
    return (
        f"The processes' per-position statistics differ in size: rank {first} has shallow maps of shape "
        f"{first_shape[0]}, rank {rank} {shape[0]}. Every process must use the same backbone, layers and input "
        "size (the pre-processor's resize)."
    )


def all_reduce(
    moments: RidgeMoments | None, distinct: set[float], device: torch.device
) -> tuple[RidgeMoments | None, set[float]]:
    """Sum every process's statistics in float64 (in place) and join their row fingerprints.

    A process that saw no image contributes zeros. Statistics of different sizes (processes
    running different backbones or layers) are refused, naming two of them.
    """
    inputs, targets = _agreed_shape(None if moments is None else tuple(moments.xty.shape), _ridge_mismatch)
    if moments is None:
        zeros = (
            torch.zeros((), dtype=torch.float64, device=device),
            torch.zeros(inputs, dtype=torch.float64, device=device),
            torch.zeros(targets, dtype=torch.float64, device=device),
            torch.zeros(inputs, inputs, dtype=torch.float64, device=device),
            torch.zeros(inputs, targets, dtype=torch.float64, device=device),
        )
        moments = RidgeMoments(*zeros)
    for tensor in moments:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    joined: set[float] = set()
    for fingerprints in _gather(sorted(distinct)):
        joined.update(fingerprints)
    return moments, joined


def all_reduce_sums(sums: MapSums | None, empty: MapSums, device: torch.device) -> MapSums:
    """Sum every process's per-position statistics (the gaussian and local heads') in float64.

    ``empty`` is a new, empty set with the head's settings; a process that saw no image
    contributes its zeros. Maps of different sizes (another backbone, layers or input size) are
    refused, naming two ranks.
    """
    own = None if sums is None or not sums.is_sized else [tuple(getattr(sums, name).shape) for name in sums.SUMS]
    shapes = _agreed_shape(own, _map_mismatch)
    if own is None:
        sums = empty.to(device)
        for name, shape in zip(sums.SUMS, shapes, strict=True):
            setattr(sums, name, torch.zeros(shape, dtype=torch.float64, device=device))
    for tensor in (sums.count, *(getattr(sums, name) for name in sums.SUMS)):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return sums


@dataclass(frozen=True)
class AllReduce:
    """The cross-process sums of a distributed fit on ``device``, as :meth:`FeatureRidgeModel.fit` takes them."""

    device: torch.device

    def moments(self, moments: RidgeMoments | None, distinct: set[float]) -> tuple[RidgeMoments | None, set[float]]:
        """The neighbourhood Ridge sums and row fingerprints of every process."""
        return all_reduce(moments, distinct, self.device)

    def sums(self, sums: MapSums | None, empty: MapSums) -> MapSums:
        """The per-position sums of every process."""
        return all_reduce_sums(sums, empty, self.device)
