"""The ``local`` head: a Gaussian of the shallow features per position and a Ridge map per block of positions.

What is normal varies from position to position on hard textures, in the shallow features' spread and in
how the deep features follow from them, and one shared map cannot say so. This head keeps
``p(x) p(y | x)``: a mean and covariance of ``x`` per position, a mean of ``y`` per position and a Ridge
map with its residual covariance per ``region x region`` block; the score is the Mahalanobis distance
under the product (``local.py`` has the sums, the solve and the scores). Its size grows with the square
of the channels (``channels`` keeps a subset) and it scores only the training grid.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..local import LocalStatistics, local_scores, pack_lower, solve_local_head, unpack_lower
from ..maps import FeatureMaps, upsample_to
from .base import Head, Reduction

# The head's fitted tensors, as solve_local_head returns them; the two whitening factors are stored packed.
TENSORS = ("mean_x", "mean_y", "x_whitening", "regression", "residual_whitening")
PACKED = ("x_whitening", "residual_whitening")


class LocalHead(Head):
    """One local head on the maps it is given: the ``local`` head on the model's maps, or a part of another head."""

    name = "local"
    counts = "images"
    GRID_SIZED = TENSORS
    LEGACY_NAMES: ClassVar[dict[str, str | None]] = {
        "positions": "positions",
        **{f"local_{tensor}": tensor for tensor in TENSORS},
        "statistics": None,
        "weight": None,
        "bias": None,
    }

    def __init__(self, channels: tuple[int, int], settings: dict[str, Any]) -> None:
        super().__init__(channels, settings)
        self.region = settings["region"]
        self.positions = LocalStatistics(self.region)
        for tensor in TENSORS:
            self.register_buffer(tensor, torch.empty(0))
        self.mean_x: torch.Tensor
        self.mean_y: torch.Tensor

    def accumulate(self, maps: FeatureMaps) -> None:
        """Add the batch's maps, the deep one on the shallow grid."""
        self.add(*maps.on_shallow_grid())

    def add(self, shallow: torch.Tensor, deep: torch.Tensor) -> None:
        """Add maps ``(B, C_x, h, w)`` and ``(B, C_y, h, w)`` to the pending per-position sums."""
        device = self.positions.count.device
        self._pending_sums("positions", lambda: LocalStatistics(self.region).to(device)).update(shallow, deep)

    def solved(self, reduce: Reduction | None) -> tuple[LocalStatistics, dict[str, torch.Tensor]]:
        """The committed sums plus the pending ones (every process's), and the tensors solved from them."""
        own = self._take_pending().get("positions")
        if reduce is not None:
            own = reduce.sums(own, LocalStatistics(self.region))
        combined = self.positions.combined_with(own)
        dtype = self.mean_x.dtype
        return combined, {key: value.to(dtype) for key, value in solve_local_head(combined).items()}

    def commit(self, statistics: LocalStatistics, tensors: dict[str, torch.Tensor]) -> None:
        """Keep the sums and the tensors of a successful solve."""
        for key, value in tensors.items():
            setattr(self, key, pack_lower(value) if key in PACKED else value)
        self.positions = statistics

    @torch.no_grad()
    def fit(self, reduce: Reduction | None) -> None:
        """Solve from the committed plus the pending sums; nothing changes if the solve fails."""
        self.commit(*self.solved(reduce))

    def fit_count(self) -> int:
        """Images in the committed sums."""
        return int(self.positions.count)

    def scores(self, maps: FeatureMaps) -> torch.Tensor:
        """The Mahalanobis distance of the model's prepared maps."""
        shallow, deep = maps.prepared()
        return self.score(shallow, deep)

    def score(self, shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        """The Mahalanobis distance of a shallow map and a deep one (on its own grid), ``(B, 1, h, w)``."""
        self.check_grid(shallow, self.mean_x)
        return local_scores(shallow, upsample_to(deep, shallow), self._tensors(), self.region)

    def _tensors(self) -> dict[str, torch.Tensor]:
        """The fitted tensors, the whitening factors unpacked; those are kept until the packed ones change."""
        packed = tuple(getattr(self, name) for name in PACKED)
        key = tuple((id(tensor), tensor._version, tensor.device, tensor.dtype) for tensor in packed)
        cached = self.__dict__.get("_unpacked")
        if cached is None or cached[0] != key:
            sizes = (self.mean_x.shape[0], self.mean_y.shape[0])
            factors = [unpack_lower(tensor, size) for tensor, size in zip(packed, sizes, strict=True)]
            cached = (key, dict(zip(PACKED, factors, strict=True)))
            self.__dict__["_unpacked"] = cached
        return {**{name: getattr(self, name) for name in TENSORS}, **cached[1]}


HEAD = LocalHead
