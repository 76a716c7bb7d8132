"""Filters applied to anomaly maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


class SeparableGaussianBlur(nn.Module):
    """Gaussian smoothing of one-channel maps (reflect padding), optionally after a bilinear resize, as matrix products.

    Same result as anomalib's 2-D ``GaussianBlur2d`` (after ``F.interpolate``, ``align_corners=False``, when a
    size is given). The blur, its reflect padding and the resize are each linear and act on rows and columns
    separately, so together they are one matrix per side, ``A_rows @ map @ A_columns^T``, read off the torch
    operations themselves. As convolutions, a one-channel 33-tap filter (sigma = 4) over a 256 x 256 map cost
    about a tenth of a small backbone's forward pass (docs/benchmarks.md); as matrix products on the patch grid
    it is a small fraction of that. The kernel is rebuilt from ``sigma``, so it is not part of the state dict.
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        radius = int(4.0 * sigma + 0.5)
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
        self.radius = radius
        self.register_buffer("kernel", (kernel / kernel.sum()).float(), persistent=False)
        self.kernel: torch.Tensor

    def forward(self, maps: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """Blur ``(B, 1, h, w)`` maps, bilinearly resized to ``size`` (``(H, W)``) first when it is given."""
        height, width = maps.shape[-2:] if size is None else size
        rows = self._blur_matrix(height, maps) @ _resize_matrix(maps.shape[-2], height, maps)
        columns = self._blur_matrix(width, maps) @ _resize_matrix(maps.shape[-1], width, maps)
        return rows @ maps @ columns.T

    def _blur_matrix(self, size: int, like: torch.Tensor) -> torch.Tensor:
        """The ``(size, size)`` matrix of the 1-D blur of a length-``size`` signal, reflect padding included."""
        identity = torch.eye(size, dtype=like.dtype, device=like.device)[None, None]
        padded = F.pad(identity, (0, 0, self.radius, self.radius), mode="reflect")
        return F.conv2d(padded, self.kernel.to(like.dtype).view(1, 1, -1, 1))[0, 0]


def _resize_matrix(source: int, target: int, like: torch.Tensor) -> torch.Tensor:
    """The ``(target, source)`` matrix of a 1-D bilinear resize (``align_corners=False``), from ``F.interpolate``."""
    identity = torch.eye(source, dtype=like.dtype, device=like.device)[None, None]
    return F.interpolate(identity, size=(target, source), mode="bilinear", align_corners=False)[0, 0]


def gaussian_blur_or_none(sigma: float) -> SeparableGaussianBlur | None:
    """The blur for ``sigma``, or ``None`` when ``sigma`` is 0 (smoothing off)."""
    return SeparableGaussianBlur(sigma) if sigma > 0 else None
