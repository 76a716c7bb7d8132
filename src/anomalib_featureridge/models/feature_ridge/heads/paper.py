"""The ``paper`` head: one Ridge map from each position's 3x3 shallow neighbourhood to the deep features.

At every position of the shallow map ``x`` the channels of its 3x3 neighbourhood (``9 C_x`` inputs)
predict the deep map ``y`` on the shallow grid through ``y ~ W x + b``, fitted in closed form on normal
images; the score is ``log(||y_hat - y||^2 + eps)``. Predicting from the neighbourhood with ``W`` is a 3x3
convolution whose kernel is ``W`` reshaped, so scoring is one convolution after the backbone, for images
of any size. With ``rank`` set, ``W`` is the best Ridge map of that rank, a 3x3 convolution to ``rank``
channels and a 1x1 one back: with wide_resnet50_2 (4,608 -> 1,024) and rank 256, 3.3x fewer
multiplications. The fit's sums are the 3x3-neighbourhood moments (``neighbourhood.py``), which the
``gaussian`` head shares (:class:`NeighbourhoodRidgeHead`).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch.nn import functional as F  # noqa: N812

from ..maps import NEIGHBOURHOOD, FeatureMaps
from ..neighbourhood import NeighbourhoodMoments
from ..ridge import RidgeMoments, RidgeStatistics, check_rank
from .base import Head, Reduction

LOG_EPS = 1e-12
# The dtype of each batch's products in a fit (``fit_precision``); the sums are float64 either way.
FIT_PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


class NeighbourhoodRidgeHead(Head):
    """A head solved from the 3x3-neighbourhood Ridge sums: the shared 3x3 map ``weight`` and its fit."""

    counts = "feature vectors"

    def __init__(self, channels: tuple[int, int], settings: dict[str, Any]) -> None:
        super().__init__(channels, settings)
        self.alpha = settings["alpha"]
        self.products = FIT_PRECISIONS[settings["fit_precision"]]
        self.statistics = RidgeStatistics()

    def _neighbourhood_sums(self) -> NeighbourhoodMoments:
        return self._pending_sums("neighbourhood", lambda: NeighbourhoodMoments(self.products))

    def accumulate(self, maps: FeatureMaps) -> None:
        """Add the batch's neighbourhood rows (the deep map on its own, coarser grid: ``neighbourhood.py``)."""
        self._neighbourhood_sums().add(*maps.prepared())

    def _combined_moments(self, pending: dict[str, Any], reduce: Reduction | None) -> RidgeStatistics:
        """The committed Ridge sums plus the pending ones (every process's); warns on a first fit that is degenerate."""
        rows = pending.get("neighbourhood")
        moments: RidgeMoments | None = None if rows is None or rows.is_empty else rows.moments()
        distinct = set() if rows is None else rows.distinct
        if reduce is not None:
            moments, distinct = reduce.moments(moments, distinct)
        if moments is None:
            return self.statistics
        if self.statistics.is_empty:
            self._warn_if_degenerate(float(moments.count), len(distinct))
        return self.statistics.combined_with(moments)

    def _warn_if_degenerate(self, rows: float, distinct: int) -> None:
        """Warn when the training rows cannot determine the map: fewer distinct ones than inputs."""
        inputs = self.weight.shape[1] * NEIGHBOURHOOD**2
        if distinct >= inputs:
            return
        repeats = " Most of them repeat (identical or blank images?)." if distinct <= rows / 2 else ""
        msg = (
            f"FeatureRidge was fitted on {int(rows)} feature vectors of which only {distinct} are distinct, "
            f"fewer than the {inputs} inputs per vector: the Ridge map is under-determined and alpha, not the "
            f"images, fixes much of it, so scores can be unreliable.{repeats} Train on more, and more varied, "
            "normal images."
        )
        warnings.warn(msg, UserWarning, stacklevel=5)

    def fit_count(self) -> int:
        """Feature vectors (positions) in the committed sums."""
        return int(self.statistics.count)

    def _set_map(self, weight: torch.Tensor) -> None:
        """Store a ``(9 C_in, C_out)`` map (rows ordered ``c * 9 + k``) as the 3x3 conv kernel it is."""
        out_channels, in_channels = self.weight.shape[:2]
        self.weight.copy_(weight.T.reshape(out_channels, in_channels, NEIGHBOURHOOD, NEIGHBOURHOOD))


class PaperHead(NeighbourhoodRidgeHead):
    """The paper's head: ``log ||W x + b - y||^2``, the map optionally of reduced ``rank``."""

    name = "paper"
    LEGACY_NAMES: ClassVar[dict[str, str | None]] = {
        "statistics": "statistics",
        "weight": "weight",
        "bias": "bias",
        "projection": "projection",
    }

    def __init__(self, channels: tuple[int, int], settings: dict[str, Any]) -> None:
        super().__init__(channels, settings)
        in_channels, out_channels = channels
        rank = settings["rank"]
        if rank is not None:
            layer = settings["layers"][1]
            check_rank(rank, out_channels, targets=f"channels of {layer!r}", hint=", or None for the full map")
        head_channels = out_channels if rank is None else rank
        self.register_buffer("weight", torch.zeros(head_channels, in_channels, NEIGHBOURHOOD, NEIGHBOURHOOD))
        self.register_buffer("bias", torch.zeros(out_channels))
        # The low-rank map's 1x1 back-projection to the deep channels (orthonormal columns); None when full.
        self.register_buffer("projection", None if rank is None else torch.zeros(out_channels, rank, 1, 1))
        self.weight: torch.Tensor
        self.bias: torch.Tensor
        self.projection: torch.Tensor | None

    @torch.no_grad()
    def fit(self, reduce: Reduction | None) -> None:
        """Solve ``W`` (of the rank asked) and ``b`` from the committed sums plus the pending ones."""
        statistics = self._combined_moments(self._take_pending(), reduce)
        if self.projection is None:
            weight, bias = statistics.solve(self.alpha)
        else:
            weight, basis, bias = statistics.solve_reduced_rank(self.alpha, self.projection.shape[1])
            self.projection.copy_(basis[:, :, None, None])
        self.statistics = statistics
        self._set_map(weight)
        self.bias.copy_(bias)

    def scores(self, maps: FeatureMaps) -> torch.Tensor:
        """``log(||W x + b - y||^2 + eps)`` at each position: one 3x3 convolution (two with ``rank``)."""
        shallow, deep = maps.on_shallow_grid()
        if self.projection is None:
            predicted = F.conv2d(shallow, self.weight, self.bias, padding=NEIGHBOURHOOD // 2)
        else:
            reduced = F.conv2d(shallow, self.weight, padding=NEIGHBOURHOOD // 2)
            predicted = F.conv2d(reduced, self.projection, self.bias)
        return torch.log((predicted - deep).pow(2).sum(dim=1, keepdim=True) + LOG_EPS)


HEAD = PaperHead
