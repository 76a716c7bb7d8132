"""The ``gaussian`` head: the paper's map centred per position, its residual and the shallow features whitened.

The paper head centres the Ridge problem with one mean over all positions, so whatever is normal but
position-dependent (a tile's border, a lighting gradient) ends up in its residual. This head removes a
mean per position from both maps, scores the residual by its Mahalanobis norm and adds how typical the
shallow features are (a Gaussian with a mean per position and a shared covariance):
``sqrt(||A_r (y - W x - b_p)||^2 + ||A_x (x - m_p)||^2)``. Both are convolutions after the backbone, but the
per-position means fix the feature grid: it scores only images of the training size (``positions.py``
has the sums and the solve).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.nn import functional as F  # noqa: N812

from ..maps import NEIGHBOURHOOD, FeatureMaps
from ..positions import PositionStatistics, solve_gaussian_head
from .base import Reduction
from .paper import NeighbourhoodRidgeHead


class GaussianHead(NeighbourhoodRidgeHead):
    """The shared 3x3 map with per-position means, and two whitenings (residual, shallow features)."""

    name = "gaussian"
    GRID_SIZED = ("position_bias", "position_mean_x")
    LEGACY_NAMES: ClassVar[dict[str, str | None]] = {
        "statistics": "statistics",
        "positions": "positions",
        "weight": "weight",
        "position_bias": "position_bias",
        "position_mean_x": "position_mean_x",
        "residual_whitening": "residual_whitening",
        "x_whitening": "x_whitening",
        "bias": None,
    }

    def __init__(self, channels: tuple[int, int], settings: dict[str, Any]) -> None:
        super().__init__(channels, settings)
        in_channels, out_channels = channels
        self.positions = PositionStatistics()
        self.register_buffer("weight", torch.zeros(out_channels, in_channels, NEIGHBOURHOOD, NEIGHBOURHOOD))
        self.register_buffer("position_bias", torch.empty(0))
        self.register_buffer("position_mean_x", torch.empty(0))
        self.register_buffer("residual_whitening", torch.zeros(out_channels, out_channels, 1, 1))
        self.register_buffer("x_whitening", torch.zeros(in_channels, in_channels, 1, 1))
        self.weight: torch.Tensor
        self.position_bias: torch.Tensor
        self.position_mean_x: torch.Tensor
        self.residual_whitening: torch.Tensor
        self.x_whitening: torch.Tensor

    def accumulate(self, maps: FeatureMaps) -> None:
        """Add the batch's neighbourhood rows and its per-position sums."""
        super().accumulate(maps)
        device = self.positions.count.device
        self._pending_sums("positions", lambda: PositionStatistics().to(device)).update(*maps.on_shallow_grid())

    @torch.no_grad()
    def fit(self, reduce: Reduction | None) -> None:
        """Solve from both sums, each the committed plus the pending; nothing changes if the solve fails."""
        pending = self._take_pending()
        statistics = self._combined_moments(pending, reduce)
        own = pending.get("positions")
        if reduce is not None:
            own = reduce.sums(own, PositionStatistics())
        positions = self.positions.combined_with(own)
        solved = solve_gaussian_head(
            statistics.xtx, statistics.xty, float(statistics.count), positions, self.alpha, NEIGHBOURHOOD
        )
        dtype = self.weight.dtype
        self._set_map(solved["weight"])
        self.position_bias = solved["bias"].to(dtype)
        self.position_mean_x = solved["mean_x"].to(dtype)
        self.residual_whitening.copy_(solved["residual_whitening"][:, :, None, None])
        self.x_whitening.copy_(solved["x_whitening"][:, :, None, None])
        self.statistics, self.positions = statistics, positions

    def scores(self, maps: FeatureMaps) -> torch.Tensor:
        """``sqrt(||A_r (y - W x - b_p)||^2 + ||A_x (x - m_p)||^2)``: residual and shallow features, both whitened."""
        shallow, deep = maps.on_shallow_grid()
        self.check_grid(shallow, self.position_bias)
        predicted = F.conv2d(shallow, self.weight, padding=NEIGHBOURHOOD // 2) + self.position_bias
        residual = F.conv2d(deep - predicted, self.residual_whitening)
        typicality = F.conv2d(shallow - self.position_mean_x, self.x_whitening)
        squared = residual.pow(2).sum(dim=1, keepdim=True) + typicality.pow(2).sum(dim=1, keepdim=True)
        return torch.sqrt(squared)


HEAD = GaussianHead
