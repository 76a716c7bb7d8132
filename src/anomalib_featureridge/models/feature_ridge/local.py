"""The ``local`` head: a Gaussian of the shallow features per position and a Ridge map per region.

On hard textures (magnetic_tile) the paper head and the ``gaussian`` head are far behind Padim,
and the measurements (docs/method.md) say why: what is normal varies from position to position,
in the shallow features' spread and in how the deep features follow from them, and one shared
map cannot say so. Padim keeps a full Gaussian of ``[x, y]`` per position, quadratic in both maps'
channels. This head factors that joint Gaussian as ``p(x) p(y | x)`` and keeps each factor where it pays:

- ``p(x)``: a mean and a covariance of the shallow features ``x`` at every position;
- ``p(y | x)``: a mean of ``y`` per position and, per ``region x region`` block of positions, a
  Ridge map ``y - m_y ~ B (x - m_x)`` with its residual covariance (the conditional Gaussian),
  from the block's pooled within-position covariances.

The score is the Mahalanobis distance under the product, ``sqrt(||A_x (x - m_x)||^2 + ||A_r e||^2)``
with ``e = y - m_y - B (x - m_x)``. Everything comes from sums over images (per-position ``x``, ``y``
and ``x x^T``, per-region ``x y^T`` and ``y y^T``), so streaming, merging and incremental updates stay
exact, and the fitted head's size depends on the feature grid and channels, never on the images.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812

from .sums import MapSums

# Added to every covariance's diagonal (features standardised by ImageNet normalisation), as Padim does.
COVARIANCE_RIDGE = 0.01


def region_index(height: int, width: int, region: int, device: torch.device | None = None) -> torch.Tensor:
    """For each position of an ``height x width`` grid (row-major), the index of its ``region x region`` block."""
    rows = torch.arange(height, device=device) // region
    columns = torch.arange(width, device=device) // region
    return (rows[:, None] * ((width + region - 1) // region) + columns[None, :]).reshape(-1)


class LocalStatistics(MapSums):
    """Per-position sums of ``x``, ``y`` and ``x x^T`` and per-region sums of ``x y^T`` and ``y y^T`` (float64)."""

    SUMS = ("sum_x", "sum_y", "xx", "xy", "yy")
    SIZE_HINT = (
        " The local head keeps statistics per position, so every image must have the same size: keep the "
        "pre-processor's resize (256 x 256 by default), or use head='paper'."
    )

    def __init__(self, region: int) -> None:
        super().__init__()
        self.region = region
        self.xx: torch.Tensor
        self.xy: torch.Tensor
        self.yy: torch.Tensor

    def _allocate_products(self, x_shape: torch.Size, y_channels: int) -> None:
        device = self.count.device
        channels, height, width = x_shape
        regions = int(region_index(height, width, self.region).max()) + 1
        self.xx = torch.zeros(height * width, channels, channels, dtype=torch.float64, device=device)
        self.xy = torch.zeros(regions, channels, y_channels, dtype=torch.float64, device=device)
        self.yy = torch.zeros(regions, y_channels, y_channels, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, shallow: torch.Tensor, deep: torch.Tensor) -> None:
        """Add maps ``(B, C_x, h, w)`` and ``(B, C_y, h, w)`` (the deep one on the shallow grid).

        Raises:
            ValueError: On maps of another grid than the accumulated ones (the sums are per position:
                keep the pre-processor's fixed resize).
        """
        x, y = self._add_maps(shallow, deep)
        x_rows = x.flatten(2).permute(2, 1, 0)  # (P, C_x, B)
        y_rows = y.flatten(2).permute(2, 1, 0)
        self.xx += x_rows @ x_rows.transpose(1, 2)
        index = region_index(*x.shape[-2:], self.region, device=x.device)
        self.xy.index_add_(0, index, x_rows @ y_rows.transpose(1, 2))
        self.yy.index_add_(0, index, y_rows @ y_rows.transpose(1, 2))

    def empty_copy(self) -> LocalStatistics:
        """A new, empty set with this one's region size."""
        return LocalStatistics(self.region)

    def merge(self, other: LocalStatistics) -> None:
        """Add another set of statistics (another worker's, or a new fit's) to this one."""
        if other.region != self.region:
            msg = (
                f"Cannot merge statistics of {other.region} x {other.region} regions into "
                f"{self.region} x {self.region}."
            )
            raise ValueError(msg)
        super().merge(other)


def _whitening(covariance: torch.Tensor) -> torch.Tensor:
    """Batched ``A`` with ``A^T A = covariance^-1`` (lower triangular), so ``||A r||^2`` is the Mahalanobis norm."""
    factor = torch.linalg.cholesky(covariance)
    identity = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    return torch.linalg.solve_triangular(factor, identity.expand_as(factor), upper=False)


@torch.no_grad()
def solve_local_head(statistics: LocalStatistics) -> dict[str, torch.Tensor]:
    """The head's tensors (float64) from the sums; the whitening factors are lower triangular.

    Per position ``mean_x`` ``(C_x, h, w)``, ``mean_y`` ``(C_y, h, w)``, ``x_whitening`` ``(P, C_x, C_x)``;
    per region ``regression`` ``(R, C_y, C_x)`` and ``residual_whitening`` ``(R, C_y, C_y)``.

    A region's covariance is the mean of its positions' within-position covariances, so a texture's
    normal variation is measured around each position's own mean.
    """
    statistics.require_data()
    images = statistics.count
    channels, height, width = statistics.sum_x.shape
    mean_x = statistics.sum_x / images
    mean_y = statistics.sum_y / images
    flat_x = mean_x.flatten(1).T  # (P, C_x)
    flat_y = mean_y.flatten(1).T
    eye_x = torch.eye(channels, dtype=torch.float64, device=mean_x.device)
    eye_y = torch.eye(mean_y.shape[0], dtype=torch.float64, device=mean_x.device)
    xx = statistics.xx / images - flat_x[:, :, None] * flat_x[:, None, :] + COVARIANCE_RIDGE * eye_x
    index = region_index(height, width, statistics.region, device=mean_x.device)
    regions = statistics.xy.shape[0]
    sizes = torch.zeros(regions, dtype=torch.float64, device=mean_x.device).index_add_(
        0, index, torch.ones_like(index, dtype=torch.float64)
    )[:, None, None]
    # Region sums of the per-position mean products, subtracted to centre each position on its own mean.
    pooled_xx = xx.new_zeros(regions, channels, channels).index_add_(0, index, xx) / sizes
    mean_xy = torch.zeros_like(statistics.xy).index_add_(0, index, flat_x[:, :, None] * flat_y[:, None, :])
    mean_yy = torch.zeros_like(statistics.yy).index_add_(0, index, flat_y[:, :, None] * flat_y[:, None, :])
    pooled_xy = (statistics.xy / images - mean_xy) / sizes
    pooled_yy = (statistics.yy / images - mean_yy) / sizes + COVARIANCE_RIDGE * eye_y
    regression = torch.linalg.solve(pooled_xx, pooled_xy).transpose(1, 2)  # (R, C_y, C_x)
    residual = pooled_yy - regression @ pooled_xy
    return {
        "mean_x": mean_x,
        "mean_y": mean_y,
        "x_whitening": _whitening(xx),
        "regression": regression,
        "residual_whitening": _whitening((residual + residual.transpose(1, 2)) / 2),
    }


def _lower_positions(size: int, device: torch.device | None = None) -> torch.Tensor:
    """For each entry of a ``size x size`` matrix: 1 + its place among the packed lower-triangle entries, or 0."""
    rows, columns = torch.tril_indices(size, size, device=device)
    positions = torch.zeros(size, size, dtype=torch.long, device=device)
    positions[rows, columns] = torch.arange(1, rows.numel() + 1, device=device)
    return positions


def pack_lower(matrices: torch.Tensor) -> torch.Tensor:
    """``(..., k, k)`` lower-triangular matrices as ``(..., k (k + 1) / 2)``: the whitening factors, half the size."""
    rows, columns = torch.tril_indices(matrices.shape[-1], matrices.shape[-1], device=matrices.device)
    return matrices[..., rows, columns]


def unpack_lower(packed: torch.Tensor, size: int) -> torch.Tensor:
    """The inverse of :func:`pack_lower`, by one gather (exports to ONNX and OpenVINO)."""
    with_zero = torch.cat([packed.new_zeros(*packed.shape[:-1], 1), packed], dim=-1)
    return with_zero[..., _lower_positions(size, packed.device)]


def _regions(maps: torch.Tensor, region: int) -> torch.Tensor:
    """``(B, C, h, w)`` maps, zero-padded to whole regions, as ``(R, B * region^2, C)`` rows, region-major."""
    batch, channels, height, width = maps.shape
    padded = F.pad(maps, (0, (-width) % region, 0, (-height) % region))
    rows, columns = padded.shape[-2] // region, padded.shape[-1] // region
    blocks = padded.reshape(batch, channels, rows, region, columns, region)
    return blocks.permute(2, 4, 0, 3, 5, 1).reshape(rows * columns, batch * region * region, channels)


def _positions(rows: torch.Tensor, batch: int, height: int, width: int, region: int) -> torch.Tensor:
    """The inverse of :func:`_regions` for one value per row: ``(R, B * region^2)`` -> ``(B, 1, h, w)``."""
    grid_rows, grid_columns = -(-height // region), -(-width // region)
    blocks = rows.reshape(grid_rows, grid_columns, batch, region, region).permute(2, 0, 3, 1, 4)
    return blocks.reshape(batch, 1, grid_rows * region, grid_columns * region)[:, :, :height, :width]


def local_scores(shallow: torch.Tensor, deep: torch.Tensor, head: dict[str, torch.Tensor], region: int) -> torch.Tensor:
    """``(B, 1, h, w)`` Mahalanobis distances under the head (:func:`solve_local_head`'s tensors).

    Each region's map and factor multiply the rows of its positions at once (no per-position copies).
    """
    batch, _, height, width = shallow.shape
    x = shallow - head["mean_x"]
    typicality = x.flatten(2).permute(2, 0, 1) @ head["x_whitening"].transpose(1, 2)  # (P, B, C_x)
    squared_x = typicality.pow(2).sum(-1).T.reshape(batch, 1, height, width)
    x_rows, y_rows = _regions(x, region), _regions(deep - head["mean_y"], region)
    residual = y_rows - x_rows @ head["regression"].transpose(1, 2)
    squared_residual = (residual @ head["residual_whitening"].transpose(1, 2)).pow(2).sum(-1)
    return torch.sqrt(squared_x + _positions(squared_residual, batch, height, width, region))
