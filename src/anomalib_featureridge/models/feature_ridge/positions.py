"""Per-position sums of the feature maps, for the ``gaussian`` head.

The paper's head centres the Ridge problem with one mean over all positions, so whatever is normal
but position-dependent (the border of a tile, a lighting gradient) ends up in the residual. The
``gaussian`` head removes a mean per position from both maps (fixed effects), scores the residual
by its Mahalanobis norm and adds how typical the shallow features are (a Gaussian with a mean per
position and one shared covariance). Everything it needs is a sum over images, kept here in float64
so that the fit stays exact under streaming, merging across workers and incremental updates:
per-position sums of both maps and the outer-product sums ``X^T X`` (shallow, centre only) and
``Y^T Y``. Their size depends on the channels and the feature grid, never on the number of images.
"""

from __future__ import annotations

import torch

from .ridge import ridge_cholesky
from .sums import MapSums


class PositionStatistics(MapSums):
    """Per-position sums of ``x`` and ``y`` maps plus ``sum x x^T`` and ``sum y y^T``, as float64 buffers.

    Empty until the first update (sized by the data), and again after :meth:`clear`.
    """

    SUMS = ("sum_x", "sum_y", "xx", "yy")
    SIZE_HINT = (
        " The gaussian head keeps a mean per position, so every image must have the same size: keep the "
        "pre-processor's resize (256 x 256 by default), or use head='paper'."
    )

    def __init__(self) -> None:
        super().__init__()
        self.xx: torch.Tensor
        self.yy: torch.Tensor

    def _allocate_products(self, x_shape: torch.Size, y_channels: int) -> None:
        device = self.count.device
        channels = x_shape[0]
        self.xx = torch.zeros(channels, channels, dtype=torch.float64, device=device)
        self.yy = torch.zeros(y_channels, y_channels, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, shallow: torch.Tensor, deep: torch.Tensor) -> None:
        """Add a batch of maps ``(B, C_x, h, w)`` and ``(B, C_y, h, w)`` (the deep one on the shallow grid).

        Raises:
            ValueError: On maps of another grid than the accumulated ones (per-position sums only add up
                for one input size: keep the pre-processor's fixed resize), or on mismatched shapes.
        """
        x, y = self._add_maps(shallow, deep)
        x_rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        y_rows = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
        self.xx.addmm_(x_rows.T, x_rows)
        self.yy.addmm_(y_rows.T, y_rows)


# Added to the covariances' diagonals before whitening: the shallow one as anomalib's Padim does,
# the residual one only to keep its Cholesky factor defined.
X_COVARIANCE_RIDGE = 0.01
RESIDUAL_COVARIANCE_RIDGE = 1e-6


def _whitening(covariance: torch.Tensor, ridge: float) -> torch.Tensor:
    """``A`` with ``A^T A = (covariance + ridge I)^-1``, so ``||A r||^2`` is the Mahalanobis norm of ``r``."""
    regularised = covariance + ridge * torch.eye(covariance.shape[0], dtype=covariance.dtype, device=covariance.device)
    factor = torch.linalg.cholesky(regularised)
    identity = torch.eye(covariance.shape[0], dtype=covariance.dtype, device=covariance.device)
    return torch.linalg.solve_triangular(factor, identity, upper=False)


@torch.no_grad()
def solve_gaussian_head(
    xtx: torch.Tensor,
    xty: torch.Tensor,
    rows: float,
    positions: PositionStatistics,
    alpha: float,
    kernel_size: int,
) -> dict[str, torch.Tensor]:
    """Solve the ``gaussian`` head from the Ridge sums (neighbourhood inputs) and the per-position sums.

    The Ridge problem is centred per position: with ``M`` the per-position means of the
    neighbourhood inputs (the neighbourhoods of the per-position means of ``x``, since unfolding is
    linear) and ``N`` images, the within-position Gram matrix is ``X^T X - N M M^T``; likewise for
    ``X^T Y`` and ``Y^T Y``. Returns float64 tensors: the Ridge map ``weight`` ``(D, C_y)``, the
    per-position ``bias`` ``(C_y, h, w)``, the per-position shallow mean ``mean_x`` ``(C_x, h, w)``
    and the whitening matrices ``residual_whitening`` ``(C_y, C_y)`` and ``x_whitening`` ``(C_x, C_x)``.
    """
    positions.require_data()
    images = positions.count
    channels, height, width = positions.sum_x.shape
    grid = height * width
    if abs(float(rows) - float(images) * grid) > 0.5:
        msg = (
            f"The Ridge statistics hold {int(rows)} feature vectors but the per-position ones {int(images)} maps of "
            f"{height} x {width}: they were not accumulated from the same images. Refit from a fresh model."
        )
        raise ValueError(msg)
    mean_x = positions.sum_x / images
    mean_y = (positions.sum_y / images).reshape(positions.sum_y.shape[0], grid)
    neighbourhood_mean = torch.nn.functional.unfold(mean_x[None], kernel_size, padding=kernel_size // 2)[0]
    gram = xtx - images * neighbourhood_mean @ neighbourhood_mean.T
    cross = xty - images * neighbourhood_mean @ mean_y.T
    yy = positions.yy - images * mean_y @ mean_y.T
    weight = torch.cholesky_solve(cross, ridge_cholesky(gram, alpha))
    # The training residuals' scatter, from the same sums: (Y - X W)^T (Y - X W).
    residual = yy - weight.T @ cross - cross.T @ weight + weight.T @ gram @ weight
    flat_mean_x = mean_x.reshape(channels, grid)
    x_scatter = positions.xx - images * flat_mean_x @ flat_mean_x.T
    total = images * grid
    return {
        "weight": weight,
        "bias": (mean_y - weight.T @ neighbourhood_mean).reshape(-1, height, width),
        "mean_x": mean_x,
        "residual_whitening": _whitening((residual + residual.T) / (2 * total), RESIDUAL_COVARIANCE_RIDGE),
        "x_whitening": _whitening(x_scatter / total, X_COVARIANCE_RIDGE),
    }
