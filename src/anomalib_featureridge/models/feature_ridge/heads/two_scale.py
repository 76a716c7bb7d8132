"""The ``two_scale`` head: a local head on the maps and one on maps averaged over 3 x 3 positions, the larger score.

One local head on the maps as they are sees small defects (threads, knots, marks) but misses large,
faint ones (magnetic_tile's uneven grinding); one on maps averaged over 3 x 3 positions sees those and
blurs the small ones. This head keeps both and takes, at each position, the larger of the fine score and
the coarse score times a fixed weight. Both scores are Mahalanobis distances of the same number of
features, but the coarse one is eroded (a 3 x 3 minimum, which takes back the halo that averaging spreads
around a small defect), and a minimum runs lower in the tail: the weight puts the two tails level. A fixed
weight, not one read off the training images' scores, keeps every part of the fit a sum, so updates and
distributed fits stay exact and the fit needs one pass. The coarse head reads every second position of
the averaged shallow map (the deep map is already on that grid): a quarter of the fine head's positions,
so the two heads together are about a fifth of Padim's size. Each rule was measured (docs/method.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.nn import functional as F  # noqa: N812

from ..maps import FeatureMaps, upsample_to
from .base import Head, Reduction
from .local import TENSORS, LocalHead

# Side of the mean over neighbouring positions taken of both maps for the coarse head.
COARSE_POOL = 3
# The coarse head reads every COARSE_STRIDE-th position of the averaged shallow map, in each direction.
COARSE_STRIDE = 2
# The coarse score's weight in the max. The fine head's 99th percentile over the eroded coarse head's, on the
# training positions, measured 1.07 to 1.21 on six sets; 1.2 scores as those percentiles did (docs/method.md).
COARSE_WEIGHT = 1.2


def coarse_grid(shallow: torch.Tensor) -> torch.Tensor:
    """Every ``COARSE_STRIDE``-th position of the averaged shallow map, from the first: the coarse head's grid."""
    return shallow[..., ::COARSE_STRIDE, ::COARSE_STRIDE]


def erode(scores: torch.Tensor) -> torch.Tensor:
    """Each position's minimum over its 3 x 3 neighbours inside the map (one ``max_pool2d``, so it exports)."""
    return -F.max_pool2d(-scores, 3, stride=1, padding=1)


def coarse_on_fine_grid(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """The coarse head's scores eroded on their own grid, then bilinearly resized to the fine head's."""
    return F.interpolate(erode(coarse), size=fine.shape[-2:], mode="bilinear", align_corners=False)


def fixed_scales() -> torch.Tensor:
    """The divisors that give the coarse score ``COARSE_WEIGHT`` times the fine one's weight."""
    return torch.tensor([1.0, 1.0 / COARSE_WEIGHT])


class TwoScaleHead(Head):
    """A fine local head and a coarse one; the score is ``max(fine / scales[0], eroded coarse / scales[1])``.

    ``scales`` is :func:`fixed_scales` for every fit since the weight became fixed; a model fitted before keeps
    the training percentiles it was fitted with until its next fit.
    """

    name = "two_scale"
    counts = "images"
    LEGACY_NAMES: ClassVar[dict[str, str | None]] = {
        "positions": "fine.positions",
        "coarse_positions": "coarse.positions",
        **{f"local_{tensor}": f"fine.{tensor}" for tensor in TENSORS},
        **{f"coarse_{tensor}": f"coarse.{tensor}" for tensor in TENSORS},
        "scales": "scales",
        "statistics": None,
        "weight": None,
        "bias": None,
    }

    def __init__(self, channels: tuple[int, int], settings: dict[str, Any]) -> None:
        super().__init__(channels, settings)
        self.fine = LocalHead(channels, settings)
        self.coarse = LocalHead(channels, settings)
        self.register_buffer("scales", fixed_scales())
        self.scales: torch.Tensor

    @staticmethod
    def _coarse_maps(maps: FeatureMaps) -> tuple[torch.Tensor, torch.Tensor]:
        """The coarse head's maps: averaged over ``COARSE_POOL`` and referred, the shallow one on the coarse grid."""
        shallow, deep = maps.prepared(COARSE_POOL)
        return coarse_grid(shallow), deep

    def accumulate(self, maps: FeatureMaps) -> None:
        """Add the batch to both heads' sums, each at its scale."""
        self.fine.accumulate(maps)
        shallow, deep = self._coarse_maps(maps)
        self.coarse.add(shallow, upsample_to(deep, shallow))

    @torch.no_grad()
    def fit(self, reduce: Reduction | None) -> None:
        """Solve both heads, then keep both (nothing changes if either fails) and set the fixed weight."""
        fine, coarse = self.fine.solved(reduce), self.coarse.solved(reduce)
        self.fine.commit(*fine)
        self.coarse.commit(*coarse)
        self.scales = fixed_scales().to(device=self.scales.device, dtype=self.scales.dtype)

    def fit_count(self) -> int:
        """Images in the committed sums."""
        return self.fine.fit_count()

    def scores(self, maps: FeatureMaps) -> torch.Tensor:
        """The larger of the fine score and the coarse one (eroded, on the fine grid), each over its scale."""
        fine = self.fine.scores(maps)
        coarse = coarse_on_fine_grid(self.coarse.score(*self._coarse_maps(maps)), fine)
        return torch.maximum(fine / self.scales[0], coarse / self.scales[1])


HEAD = TwoScaleHead
