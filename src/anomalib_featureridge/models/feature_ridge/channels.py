"""Which channels of each feature map the local heads keep (``channels``): a seeded random subset.

The local heads keep a Gaussian per position, so their size grows with the square of the channels: with
wide backbones they would not fit any budget. Keeping a random subset of each map's channels, as Padim
keeps a random subset of its features, shrinks them by the square of the fraction kept, and neighbouring
channels share much of what they carry (docs/method.md has the measurement). The subset is seeded, so
every process of a distributed fit and every fit of one setting keep the same channels, and the model
saves the indices, so a checkpoint scores with the subset it was fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Seeds the choice: the same subset of a backbone's layers for a given count, in every process and every fit.
CHANNEL_SEED = 0


def channel_subsets(channels: Sequence[int], available: Sequence[int], layers: Sequence[str]) -> list[torch.Tensor]:
    """``channels[i]`` of the ``available[i]`` channels of ``layers[i]``, for each map, in ascending order.

    Raises:
        ValueError: Unless ``channels`` holds one whole count per map, each from 1 to the map's channels.
    """
    counts = list(channels) if isinstance(channels, Sequence) and not isinstance(channels, str) else []
    valid = len(counts) == len(available) and all(
        isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= limit
        for count, limit in zip(counts, available, strict=True)
    )
    if not valid:
        limits = ", ".join(f"{limit} in {layer!r}" for limit, layer in zip(available, layers, strict=True))
        msg = (
            f"channels must be [shallow, deep]: how many channels of each map to keep, each from 1 to the "
            f"map's ({limits}); got {channels!r}."
        )
        raise ValueError(msg)
    generator = torch.Generator().manual_seed(CHANNEL_SEED)
    return [
        torch.randperm(limit, generator=generator)[:count].sort().values
        for count, limit in zip(counts, available, strict=True)
    ]
