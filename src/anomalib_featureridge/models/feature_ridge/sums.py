"""Float64 sums sized by the data and kept as buffers: what every FeatureRidge statistic is made of.

A fit made of sums is what makes FeatureRidge exact under streaming, incremental updates and
distributed fits. Each statistics module holds a count and a few sums whose shapes come from the
first batch, so the buffers start empty, take a checkpoint's shapes on load, and an empty state
(also after :meth:`FloatSums.clear`) means "no statistics". That bookkeeping lives here once.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


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

    def clear(self) -> None:
        """Drop the statistics (they can be large), keeping the device."""
        device = self.count.device
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        for name in self.SUMS:
            setattr(self, name, torch.empty(0, dtype=torch.float64, device=device))
