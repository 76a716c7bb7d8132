"""The ``two_scale`` head's own rules: its coarse grid, the erosion of its coarse scores, and their calibrated max.

One local head on the maps as they are sees small defects (threads, knots, marks) but misses large,
faint ones (magnetic_tile's uneven grinding); one on maps averaged over 3 x 3 positions sees those and
blurs the small ones. The two-scale head keeps both and takes, at each position, the larger of the two
scores, each divided by its 99th percentile over the training images' positions, so that both speak in
one unit ("1 is as unusual as the 1 % most unusual normal patches"). The coarse head reads every
second position of the averaged shallow map (the deep map is already on that grid): a quarter of the
fine head's positions, so the two heads together are about a fifth of Padim's size. Its scores are
eroded (a 3 x 3 minimum) before the max, which takes back the halo that averaging spreads around a
small defect. Each rule was measured (docs/method.md, "The opt-in head: head="two_scale"").
"""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812

# Side of the mean over neighbouring positions taken of both maps for the coarse head.
COARSE_POOL = 3
# The coarse head reads every COARSE_STRIDE-th position of the averaged shallow map, in each direction.
COARSE_STRIDE = 2
# Each scale's scores are divided by this percentile of its scores over the training images' positions.
CALIBRATION_PERCENTILE = 99


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
    """The larger of the fine and the coarse score (on the fine grid) at each position, each over its percentile.

    ``scales`` holds the two training percentiles, fine first (:func:`calibration_scale`).
    """
    return torch.maximum(fine / scales[0], coarse / scales[1])


def calibration_scale(training_scores: torch.Tensor) -> torch.Tensor:
    """The ``CALIBRATION_PERCENTILE`` of the training positions' scores: the nearest rank, one exact value.

    By rank and not by ``torch.quantile``, which interpolates and refuses more than 16 million values;
    the result is one of the scores, whatever order they were gathered in (processes, batches).
    """
    values = training_scores.flatten().double()
    if values.numel() == 0:
        msg = "The two-scale head's scales need the training images' scores, but none were kept for this fit."
        raise ValueError(msg)
    rank = -(-CALIBRATION_PERCENTILE * values.numel() // 100)
    return torch.kthvalue(values.cpu(), rank).values
