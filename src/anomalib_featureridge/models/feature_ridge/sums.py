"""Float64 sums sized by the data and kept as buffers: what every FeatureRidge statistic is made of.

A fit made of sums is what makes FeatureRidge exact under streaming, incremental updates and
distributed fits. Each statistics module holds a count and a few sums whose shapes come from the
first batch, so the buffers start empty, take a checkpoint's shapes on load, and an empty state
(also after :meth:`FloatSums.clear`) means "no statistics". That bookkeeping lives here once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from typing import Self


class FloatSums(nn.Module):
    """A ``count`` and the float64 sums named in :attr:`SUMS`, empty until sized by the data."""

    SUMS: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        for name in self.SUMS:
            self.register_buffer(name, torch.empty(0, dtype=torch.float64))
        self.count: torch.Tensor

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        # The buffers are sized by the data, so take the checkpoint's shapes before copying.
        for name in self.SUMS:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, dtype=torch.float64, device=self.count.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def is_sized(self) -> bool:
        """True once the sums have their data-given shapes (after the first batch or a checkpoint)."""
        return getattr(self, self.SUMS[0]).numel() > 0

    @property
    def is_empty(self) -> bool:
        """True when nothing has been accumulated (or the statistics were dropped)."""
        return not self.is_sized or float(self.count) == 0.0

    def require_data(self) -> None:
        """Refuse to solve from no rows: the training set was empty."""
        if self.is_empty:
            msg = "No training features were accumulated: the training set is empty."
            raise ValueError(msg)

    def empty_copy(self) -> Self:
        """A new, empty set with this one's settings."""
        return type(self)()

    def clear(self) -> None:
        """Drop the statistics (they can be large), keeping the device."""
        device = self.count.device
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        for name in self.SUMS:
            setattr(self, name, torch.empty(0, dtype=torch.float64, device=device))


class MapSums(FloatSums):
    """The per-position heads' statistics: ``sum_x``, ``sum_y`` and more over maps of one grid, merged by adding.

    A subclass names its sums, allocates its own from the first batch (``_allocate_products``) and adds its
    products to what :meth:`_add_maps` returns; merging into an empty set takes the other's shapes.
    """

    # Appended to the message when maps of another size arrive, to say how the user avoids it.
    SIZE_HINT: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.sum_x: torch.Tensor
        self.sum_y: torch.Tensor

    def _allocate(self, x_shape: torch.Size, y_channels: int) -> None:
        device = self.count.device
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.sum_x = torch.zeros(x_shape, dtype=torch.float64, device=device)
        self.sum_y = torch.zeros(y_channels, *x_shape[1:], dtype=torch.float64, device=device)
        self._allocate_products(x_shape, y_channels)

    def _allocate_products(self, x_shape: torch.Size, y_channels: int) -> None:
        """Allocate the subclass's own sums (zeros) for shallow maps of ``x_shape`` and ``y_channels`` deep ones."""
        raise NotImplementedError

    def _add_maps(self, shallow: torch.Tensor, deep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check and count a batch of maps, add their per-position sums, return them in float64.

        ``shallow`` is ``(B, C_x, h, w)``, ``deep`` ``(B, C_y, h, w)``; both come back on the statistics'
        device for the subclass's products.

        Raises:
            ValueError: On maps of two grids, of two batch sizes, or of another grid than the accumulated
                ones (per-position sums only add up for one input size).
        """
        if shallow.ndim != 4 or deep.ndim != 4 or shallow.shape[0] != deep.shape[0]:
            msg = f"Expected (B, C, h, w) maps of one batch, got {tuple(shallow.shape)} and {tuple(deep.shape)}."
            raise ValueError(msg)
        if shallow.shape[-2:] != deep.shape[-2:]:
            msg = f"The deep map must be on the shallow grid, got {tuple(deep.shape)} for {tuple(shallow.shape)}."
            raise ValueError(msg)
        if not self.is_sized:
            self._allocate(shallow.shape[1:], deep.shape[1])
        if shallow.shape[1:] != self.sum_x.shape or deep.shape[1:] != self.sum_y.shape:
            msg = (
                f"Feature maps of shape {tuple(shallow.shape[1:])} and {tuple(deep.shape[1:])} do not match the "
                f"accumulated {tuple(self.sum_x.shape)} and {tuple(self.sum_y.shape)}.{self.SIZE_HINT}"
            )
            raise ValueError(msg)
        x = shallow.to(device=self.count.device, dtype=torch.float64)
        y = deep.to(device=self.count.device, dtype=torch.float64)
        self.count += x.shape[0]
        self.sum_x += x.sum(dim=0)
        self.sum_y += y.sum(dim=0)
        return x, y

    def merge(self, other: Self) -> None:
        """Add another set of statistics (another worker's, or a new fit's) to this one."""
        if other.is_empty:
            return
        if not self.is_sized:
            for name in self.SUMS:
                setattr(self, name, torch.zeros_like(getattr(other, name), device=self.count.device))
        if any(getattr(other, name).shape != getattr(self, name).shape for name in self.SUMS):
            first = self.SUMS[0]
            msg = (
                f"Cannot merge statistics of maps {tuple(getattr(other, first).shape)} into "
                f"{tuple(getattr(self, first).shape)}.{self.SIZE_HINT}"
            )
            raise ValueError(msg)
        self.count += other.count.to(self.count.device)
        for name in self.SUMS:
            getattr(self, name).add_(getattr(other, name).to(self.count.device))

    def combined_with(self, other: Self | None) -> Self:
        """A new set holding these sums plus ``other``'s; this one is left as it is (a fit may still fail)."""
        combined = self.empty_copy().to(self.count.device)
        combined.merge(self)
        if other is not None:
            combined.merge(other)
        return combined
