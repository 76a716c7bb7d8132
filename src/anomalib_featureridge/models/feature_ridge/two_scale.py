"""The ``two_scale`` head's own rules: its coarse grid, the erosion of its coarse scores, and their weighted max.

One local head on the maps as they are sees small defects (threads, knots, marks) but misses large,
faint ones (magnetic_tile's uneven grinding); one on maps averaged over 3 x 3 positions sees those and
blurs the small ones. The two-scale head keeps both and takes, at each position, the larger of the fine
score and the coarse score times a fixed weight. Both scores are Mahalanobis distances of the same
number of features, but the coarse one is eroded (a 3 x 3 minimum, which takes back the halo that
averaging spreads around a small defect), and a minimum runs lower in the tail: the weight puts the
two tails level. A fixed weight, not one read off the training images' scores, keeps every part of
the fit a sum, so updates and distributed fits stay exact and the fit needs one pass. The coarse head
reads every second position of the averaged shallow map (the deep map is already on that grid): a
quarter of the fine head's positions, so the two heads together are about a fifth of Padim's size.
Each rule was measured (docs/method.md, "The opt-in head: head="two_scale"").
"""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812

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


def two_scale_max(fine: torch.Tensor, coarse: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The larger of the fine and the coarse score (on the fine grid) at each position, each over its scale.

    ``scales`` holds the two divisors, fine first: :func:`fixed_scales` for every fit since the weight
    became fixed; a model fitted before keeps the training percentiles it was fitted with.
    """
    return torch.maximum(fine / scales[0], coarse / scales[1])


def fixed_scales() -> torch.Tensor:
    """The divisors that give the coarse score ``COARSE_WEIGHT`` times the fine one's weight."""
    return torch.tensor([1.0, 1.0 / COARSE_WEIGHT])
