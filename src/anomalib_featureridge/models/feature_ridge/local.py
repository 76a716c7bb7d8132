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


def _region_grid(height: int, width: int, region: int) -> tuple[int, int]:
    """Rows and columns of ``region x region`` blocks covering an ``height x width`` grid (the last may be partial)."""
    return -(-height // region), -(-width // region)


def region_count(height: int, width: int, region: int) -> int:
    """How many ``region x region`` blocks cover an ``height x width`` grid."""
    rows, columns = _region_grid(height, width, region)
    return rows * columns


def region_rows(maps: torch.Tensor, region: int) -> torch.Tensor:
    """``(B, C, h, w)`` maps as ``(R, B * region^2, C)`` rows, region-major.

    The one rule of which block a position belongs to, for the sums, the solve and the scores. Blocks
    are taken row-major from the top left; a grid the blocks do not divide is zero-padded at the bottom
    and right, so padded rows add nothing to a region's sums.
    """
    batch, channels, height, width = maps.shape
    rows, columns = _region_grid(height, width, region)
    padded = F.pad(maps, (0, columns * region - width, 0, rows * region - height))
    blocks = padded.reshape(batch, channels, rows, region, columns, region)
    return blocks.permute(2, 4, 0, 3, 5, 1).reshape(rows * columns, batch * region * region, channels)


def _region_positions(rows: torch.Tensor, batch: int, height: int, width: int, region: int) -> torch.Tensor:
    """The inverse of :func:`region_rows` for one value per row: ``(R, B * region^2)`` -> ``(B, 1, h, w)``."""
    grid_rows, grid_columns = _region_grid(height, width, region)
    blocks = rows.reshape(grid_rows, grid_columns, batch, region, region).permute(2, 0, 3, 1, 4)
    return blocks.reshape(batch, 1, grid_rows * region, grid_columns * region)[:, :, :height, :width]


def _region_sums(per_position: torch.Tensor, height: int, width: int, region: int) -> torch.Tensor:
    """``(P, ...)`` values of the positions (row-major) summed over each region: ``(R, ...)``."""
    trailing = per_position.shape[1:]
    maps = per_position.reshape(1, height, width, -1).permute(0, 3, 1, 2)
    return region_rows(maps, region).sum(dim=1).reshape(-1, *trailing)


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
        regions = region_count(height, width, self.region)
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
        self.xx += x_rows @ x_rows.transpose(1, 2)
        x_regions, y_regions = region_rows(x, self.region), region_rows(y, self.region)  # (R, B region^2, C)
        self.xy += x_regions.transpose(1, 2) @ y_regions
        self.yy += y_regions.transpose(1, 2) @ y_regions

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
    eye_x = torch.eye(channels, dtype=torch.float64, device=mean_x.device)
    eye_y = torch.eye(mean_y.shape[0], dtype=torch.float64, device=mean_x.device)
    xx = statistics.xx / images - flat_x[:, :, None] * flat_x[:, None, :] + COVARIANCE_RIDGE * eye_x
    region = statistics.region
    sizes = _region_sums(torch.ones_like(flat_x[:, 0]), height, width, region)[:, None, None]
    pooled_xx = _region_sums(xx, height, width, region) / sizes
    # Region sums of the per-position mean products, subtracted to centre each position on its own mean.
    regions_x, regions_y = region_rows(mean_x[None], region), region_rows(mean_y[None], region)
    mean_xy = regions_x.transpose(1, 2) @ regions_y
    mean_yy = regions_y.transpose(1, 2) @ regions_y
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


def local_scores(shallow: torch.Tensor, deep: torch.Tensor, head: dict[str, torch.Tensor], region: int) -> torch.Tensor:
    """``(B, 1, h, w)`` Mahalanobis distances under the head (:func:`solve_local_head`'s tensors).

    Each region's map and factor multiply the rows of its positions at once (no per-position copies).
    """
    batch, _, height, width = shallow.shape
    x = shallow - head["mean_x"]
    typicality = x.flatten(2).permute(2, 0, 1) @ head["x_whitening"].transpose(1, 2)  # (P, B, C_x)
    squared_x = typicality.pow(2).sum(-1).T.reshape(batch, 1, height, width)
    x_rows, y_rows = region_rows(x, region), region_rows(deep - head["mean_y"], region)
    residual = y_rows - x_rows @ head["regression"].transpose(1, 2)
    squared_residual = (residual @ head["residual_whitening"].transpose(1, 2)).pow(2).sum(-1)
    return torch.sqrt(squared_x + _region_positions(squared_residual, batch, height, width, region))
