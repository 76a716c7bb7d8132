"""The Ridge statistics of 3x3-neighbourhood rows, summed from the feature maps without forming the rows.

Row ``p`` of ``X`` stacks the shallow map ``f`` at the nine positions ``p + d_k`` (zero outside the
grid), so block ``(k, l)`` of ``X^T X`` sums ``f(q) f(q + s)^T`` with ``s = d_l - d_k`` over the
positions ``q`` where both ends are on the grid and ``p = q - d_k`` is too. It therefore depends
only on the shift ``s`` (13 of them up to transposition) and on the one border row and column
of ``q`` that ``d_k`` excludes. Summing one ``C x C`` product per shift, plus the border terms,
takes 13 instead of 81 products per position and gives the same sums as the dense
``X^T X``, added in another order (exact up to float64 rounding).

``X^T Y`` uses that the deep map ``y`` is the bilinear upsampling ``U z`` of the backbone's
coarser map ``z``, with ``U`` separable: ``X^T Y = (U^T X)^T z`` multiplies over the coarse grid's
positions (4x fewer at twice the stride) instead of the fine grid's.

The products of one batch can be taken in float32 (``products=torch.float32``) and added into the
float64 sums: about half the time of float64 products on CPUs and far less on GPUs with slow float64,
at the price of float32 rounding inside each batch (docs/method.md says what that changes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn import functional as F  # noqa: N812

from .ridge import RidgeMoments

# (dy, dx) of the nine taps, in the order of ``F.unfold`` and of a 3x3 conv kernel.
_TAPS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
# One shift of each pair {s, -s}: the lower-triangle blocks are the transposes of the upper ones.
_SHIFTS = [(sy, sx) for sy in range(3) for sx in range(-2, 3) if sy > 0 or sx >= 0]
_ROW_EDGE = {1: "top", -1: "bottom"}
_COLUMN_EDGE = {1: "left", -1: "right"}


def _block_terms() -> list[tuple[int, int, tuple[int, int], str | None, str | None]]:
    """For each upper block ``(k, l)``: its shift and the border row and column that ``d_k`` excludes."""
    terms = []
    for k, (ky, kx) in enumerate(_TAPS):
        for offset, (ly, lx) in enumerate(_TAPS[k:]):
            terms.append((k, k + offset, (ly - ky, lx - kx), _ROW_EDGE.get(ky), _COLUMN_EDGE.get(kx)))
    return terms


_BLOCKS = _block_terms()


@contextmanager
def _full_float32_matmuls() -> Iterator[None]:
    """Run float32 matrix products at full float32 precision, then restore the user's setting."""
    setting = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(setting)


def upsampling_matrix(size_in: int, size_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(size_out, size_in)`` weights of 1-D linear resizing as ``F.interpolate`` (bilinear, no corner alignment)."""
    basis = torch.eye(size_in, dtype=dtype, device=device).reshape(1, size_in, size_in, 1)
    resized = F.interpolate(basis, size=(size_out, 1), mode="bilinear", align_corners=False)
    return resized[0, :, :, 0].T


class NeighbourhoodMoments:
    """Pending sums of one fit, in the shift layout; :meth:`moments` turns them into dense statistics.

    Not a module: the sums of an unfinished fit must never reach a checkpoint. ``products`` is the
    dtype of each batch's products (float64 or float32); the sums are float64 either way.
    """

    def __init__(self, products: torch.dtype = torch.float64) -> None:
        if products not in {torch.float64, torch.float32}:
            msg = f"Products are taken in torch.float64 or torch.float32, got {products}."
            raise ValueError(msg)
        self.products = products
        self.count = 0
        self._sums: dict[str, torch.Tensor] = {}
        # Fingerprints (a fixed random projection) of distinct rows, up to one more than the row
        # size: enough to tell whether the rows can determine the map.
        self.distinct: set[float] = set()
        self._projection: torch.Tensor | None = None

    @property
    def is_empty(self) -> bool:
        """True before the first row."""
        return self.count == 0

    def _add(self, name: str, value: torch.Tensor) -> None:
        if name in self._sums:
            self._sums[name].add_(value)
        else:
            self._sums[name] = value.to(dtype=torch.float64, copy=True)

    @torch.no_grad()
    def add(self, shallow: torch.Tensor, deep: torch.Tensor) -> None:
        """Add the rows of shallow maps ``(B, C, H, W)`` and the deep maps ``(B, D, h, w)`` that predict them."""
        batch, channels, height, width = shallow.shape
        if "sum_x" in self._sums and (
            self._sums["sum_x"].shape[0] != channels * 9 or self._sums["sum_y"].shape[0] != deep.shape[1]
        ):
            msg = (
                f"Feature sizes ({channels * 9}, {deep.shape[1]}) do not match the accumulated "
                f"statistics ({self._sums['sum_x'].shape[0]}, {self._sums['sum_y'].shape[0]})."
            )
            raise ValueError(msg)
        self.count += batch * height * width
        wide = shallow.to(torch.float64)
        self._add_fingerprints(wide)
        self._add_sums(wide, deep.to(torch.float64))
        f = shallow.to(self.products)
        # float32 products must stay float32: no TF32 (about 1e-3 relative) even where the user enabled it.
        with _full_float32_matmuls():
            self._add_cross_terms(f, deep.to(self.products))
            self._add_gram_terms(f.permute(0, 2, 3, 1), channels, height, width)

    def _add_fingerprints(self, f: torch.Tensor) -> None:
        if len(self.distinct) > 9 * f.shape[1]:
            return
        if self._projection is None:
            generator = torch.Generator().manual_seed(0)
            self._projection = torch.randn(1, f.shape[1], 3, 3, generator=generator, dtype=f.dtype).to(f.device)
        # The projection of every row at once: a 3x3 convolution with the same zero padding as the rows.
        self.distinct.update(F.conv2d(f, self._projection, padding=1).unique().tolist())

    def _add_sums(self, f: torch.Tensor, z: torch.Tensor) -> None:
        """``sum_x`` (each tap's sum over the rows) and ``sum_y``, always in float64: they fix the centring."""
        height, width = f.shape[-2:]
        padded = F.pad(f, (1, 1, 1, 1))
        sums = [padded[:, :, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width].sum(dim=(0, 2, 3)) for dy, dx in _TAPS]
        self._add("sum_x", torch.stack(sums, dim=1).reshape(-1))
        up_y = upsampling_matrix(z.shape[2], height, f.dtype, f.device)
        up_x = upsampling_matrix(z.shape[3], width, f.dtype, f.device)
        self._add("sum_y", torch.einsum("bdrs,r,s->d", z, up_y.sum(0), up_x.sum(0)))

    def _add_cross_terms(self, f: torch.Tensor, z: torch.Tensor) -> None:
        """``X^T Y`` through the coarse grid of ``z``."""
        batch, channels, height, width = f.shape
        up_y = upsampling_matrix(z.shape[2], height, f.dtype, f.device)
        up_x = upsampling_matrix(z.shape[3], width, f.dtype, f.device)
        padded = F.pad(f, (1, 1, 1, 1))
        # Tap d reads padded[1 + d :]: its share of U^T is U placed at that offset, for all three offsets at once.
        shifted_y = torch.cat([F.pad(up_y, (0, 0, 1 + d, 1 - d)) for d in (-1, 0, 1)], dim=1)
        shifted_x = torch.cat([F.pad(up_x, (0, 0, 1 + d, 1 - d)) for d in (-1, 0, 1)], dim=1)
        coarse = shifted_y.T @ padded @ shifted_x  # (B, C, 3 h, 3 w): [tap row, r, tap column, s]
        coarse = coarse.reshape(batch, channels, 3, z.shape[2], 3, z.shape[3]).permute(1, 2, 4, 0, 3, 5)
        # (C, 3, 3, B, h, w): rows ordered c * 9 + k like the unfolded features.
        coarse = coarse.reshape(channels * 9, -1)
        self._add("xty", coarse @ z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))

    def _add_gram_terms(self, f: torch.Tensor, channels: int, height: int, width: int) -> None:
        """Per shift: the whole-grid product and the border rows, columns and corners the blocks exclude."""
        # Zero-padded (2 columns either side, 2 rows below) so that every shift reads zeros off the grid,
        # and flattened: shift s is then an offset of rows, and the whole-grid product a product of two
        # views (the padding rows in between add zeros), without copies.
        padded = F.pad(f, (0, 0, 2, 2, 0, 2))
        flat = padded.reshape(-1, channels)
        stride = width + 4
        first, end = 2, flat.shape[0] - 2 * stride - 2
        gram = torch.stack(
            [flat[first:end].T @ flat[first + sy * stride + sx : end + sy * stride + sx] for sy, sx in _SHIFTS]
        )
        self._add("gram", gram)
        rows = {"top": 0, "bottom": height - 1}
        columns = {"left": 0, "right": width - 1}
        edges = {}
        for name, y in rows.items():
            moved = [padded[:, y + sy, 2 + sx : 2 + sx + width] for sy, sx in _SHIFTS]
            edges[f"row{name}"] = (f[:, y], torch.stack(moved, dim=2))
        for name, x in columns.items():
            moved = [padded[:, sy : sy + height, 2 + sx + x] for sy, sx in _SHIFTS]
            edges[f"col{name}"] = (f[:, :, x], torch.stack(moved, dim=2))
        for row, y in rows.items():
            for column, x in columns.items():
                moved = [padded[:, y + sy, 2 + sx + x] for sy, sx in _SHIFTS]
                edges[f"corner{row}{column}"] = (f[:, y, x], torch.stack(moved, dim=1))
        for name, (left, right) in edges.items():
            product = left.reshape(-1, channels).T @ right.reshape(-1, len(_SHIFTS) * channels)
            self._add(name, product.reshape(channels, len(_SHIFTS), channels).transpose(0, 1))

    def moments(self) -> RidgeMoments:
        """The dense statistics, laid out as :class:`RidgeStatistics` keeps them (inputs ordered ``c * 9 + k``)."""
        sums = self._sums
        channels = sums["sum_x"].shape[0] // 9
        blocks = sums["gram"].new_empty(9, 9, channels, channels)
        for tap, partner, shift, row, column in _BLOCKS:
            index = _SHIFTS.index(shift)
            block = sums["gram"][index].clone()
            if row:
                block -= sums[f"row{row}"][index]
            if column:
                block -= sums[f"col{column}"][index]
            if row and column:
                block += sums[f"corner{row}{column}"][index]
            blocks[tap, partner] = block
            blocks[partner, tap] = block.T
        xtx = blocks.permute(2, 0, 3, 1).reshape(channels * 9, channels * 9)
        count = torch.tensor(float(self.count), dtype=torch.float64, device=xtx.device)
        return RidgeMoments(count, sums["sum_x"], sums["sum_y"], xtx, sums["xty"])
