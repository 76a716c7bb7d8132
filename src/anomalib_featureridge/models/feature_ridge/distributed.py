"""What an exact fit made of sums needs from Lightning's data-parallel strategies, beyond what every model needs.

Each process sums the statistics of its shard (without the sampler's repeats:
``components.distributed.unpadded``); one float64 all-reduce when the epoch ends gives every
process the sums of the whole training set, so every process solves the same map as one device
would. ``DistributedDataParallel`` refuses a module without trainable parameters, and there are
no gradients to average anyway: the processes only need the same weights at the start
(:func:`synchronise`) and the all-reduce at the end (:class:`AllReduce`: whichever sums the head fits from).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

from anomalib_featureridge.components.distributed import broadcast_from_rank_zero, gather_objects

from .ridge import RidgeMoments
from .sums import MapSums


def synchronise(module: nn.Module, settings: dict[str, Any]) -> None:
    """Refuse processes configured differently, naming them; then give every process rank 0's weights."""
    everyone = gather_objects(settings)
    differing = [rank for rank, other in enumerate(everyone) if other != everyone[0]]
    if differing:
        msg = (
            f"The processes of this distributed fit are configured differently: rank 0 has {everyone[0]}, "
            f"rank {differing[0]} has {everyone[differing[0]]}. Start every process with the same model settings."
        )
        raise ValueError(msg)
    # The sums are each process's own until the fit's all-reduce; everything else is rank 0's.
    sums = tuple(f"head.{name}." for name in module.head.committed_sums())
    broadcast_from_rank_zero(tensor for name, tensor in module.state_dict().items() if not name.startswith(sums))


def _agreed_shape(shape: object, mismatch: Callable[[int, object, int, object], str]) -> object:
    """The statistics' shape every process that saw images agrees on; refuse no images anywhere, or two shapes.

    ``shape`` is this process's (``None`` when it saw no image); ``mismatch`` words the error for two
    ranks and their shapes.
    """
    shapes = {rank: other for rank, other in enumerate(gather_objects(shape)) if other is not None}
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
    for fingerprints in gather_objects(sorted(distinct)):
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
