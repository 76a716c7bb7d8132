"""The contract every FeatureRidge head keeps, and the bookkeeping they share.

A head fits from sums: :meth:`Head.accumulate` adds a batch to sums pending for the fit in progress
(kept out of the state dict, so an unfinished fit never reaches a checkpoint), and :meth:`Head.fit` adds
them to the committed sums (``FloatSums`` modules, which checkpoint) and solves, all or nothing. Because
everything is a sum, a fit streamed in any batches equals one shot, an update equals a refit, and a
distributed fit needs one all-reduce (``Reduction``). The pipeline (``torch_model.py``) owns the backbone,
the map preparation and the fitted flag; it never asks which head it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from anomalib_featureridge.components.export import is_exporting

from ..maps import FeatureMaps
from ..ridge import RidgeMoments
from ..sums import FloatSums, MapSums


class Reduction(Protocol):
    """Combines one process's pending sums with the other processes' ones (a distributed fit)."""

    def moments(self, moments: RidgeMoments | None, distinct: set[float]) -> tuple[RidgeMoments | None, set[float]]:
        """Every process's neighbourhood sums and row fingerprints."""

    def sums(self, sums: MapSums | None, empty: MapSums) -> MapSums:
        """Every process's per-position sums; ``empty`` is a new set with the head's settings."""


class Head(nn.Module):
    """What a head is: sums fitted in closed form, and patch scores ``(B, 1, h, w)`` on the shallow grid.

    ``settings`` are the model's checked options (``options.py``); a head reads only those declared for it.
    """

    # The name it is registered under (``heads/__init__.py``).
    name: ClassVar[str]
    # What its fit counts, for logs ("feature vectors", "images").
    counts: ClassVar[str]
    # Its fitted buffers that the training grid sizes: a checkpoint's shapes are taken before copying.
    GRID_SIZED: ClassVar[tuple[str, ...]] = ()
    # Buffers and statistics of models saved before heads were modules (``FeatureRidgeModel``'s own, by
    # name or name prefix), and where each now lives in this head; ``None``: dropped (it scored nothing).
    LEGACY_NAMES: ClassVar[dict[str, str | None]] = {}

    def __init__(self, channels: tuple[int, int], settings: dict[str, Any]) -> None:
        super().__init__()
        del channels
        # The head the model was built with, for messages (this one may be a part of it).
        self.chosen = settings["head"]
        self.__dict__["_pending"] = {}

    # The fit.
    def accumulate(self, maps: FeatureMaps) -> None:
        """Add a batch's maps to the sums of the fit in progress."""
        raise NotImplementedError

    def fit(self, reduce: Reduction | None) -> None:
        """Add the pending sums (every process's, with ``reduce``) to the committed ones and solve, all or nothing.

        The pending sums are used up either way, so a failed fit is never counted twice.
        """
        raise NotImplementedError

    def scores(self, maps: FeatureMaps) -> torch.Tensor:
        """Patch scores on the shallow grid, ``(B, 1, h, w)``: the head's distance from normal."""
        raise NotImplementedError

    def fit_count(self) -> int:
        """How much the committed sums hold, in :attr:`counts`."""
        raise NotImplementedError

    # Shared bookkeeping.
    def _pending_sums(self, name: str, new: type | object) -> Any:
        """The pending sums ``name`` of the fit in progress, made by ``new()`` on first use."""
        pending = self.__dict__["_pending"]
        if name not in pending:
            pending[name] = new()
        return pending[name]

    def _take_pending(self) -> dict[str, Any]:
        """The pending sums, handed over to a fit: the head holds none afterwards."""
        pending, self.__dict__["_pending"] = self.__dict__["_pending"], {}
        return pending

    @property
    def has_pending(self) -> bool:
        """True when batches were accumulated since the last fit (by this head or a head it is made of)."""
        heads = [module for module in self.modules() if isinstance(module, Head)]
        return any(not sums.is_empty for head in heads for sums in head.__dict__["_pending"].values())

    def discard_pending(self) -> bool:
        """Forget the sums of an unfinished fit; True if there were any."""
        discarded = self.has_pending
        for module in self.modules():
            if isinstance(module, Head):
                module.__dict__["_pending"] = {}
        return discarded

    def committed_sums(self) -> dict[str, FloatSums]:
        """The committed sums, by their name in the head: what updates need and exports leave out."""
        return {name: module for name, module in self.named_modules() if isinstance(module, FloatSums)}

    @property
    def statistics_dropped(self) -> bool:
        """True when no committed sums are held (never fitted, or dropped with ``keep_statistics=False``)."""
        return all(sums.is_empty for sums in self.committed_sums().values())

    def clear_statistics(self) -> None:
        """Drop the committed sums (they can be large); the fitted tensors stay."""
        for sums in self.committed_sums().values():
            sums.clear()

    @contextmanager
    def without_statistics(self) -> Iterator[None]:
        """Empty sums in place of the committed ones for the duration (an export); they come back after."""
        kept = self.committed_sums()
        for name, sums in kept.items():
            self.set_submodule(name, sums.empty_copy().to(sums.count.device))
        try:
            yield
        finally:
            for name, sums in kept.items():
                self.set_submodule(name, sums)

    def fitted_bytes(self) -> int:
        """The size of what scoring needs: the head's state without its sums."""
        sums = tuple(f"{name}." for name in self.committed_sums())
        return sum(
            tensor.numel() * tensor.element_size()
            for name, tensor in self.state_dict().items()
            if not name.startswith(sums)
        )

    def check_grid(self, shallow: torch.Tensor, fitted: torch.Tensor) -> None:
        """Per-position heads score only maps of the grid they were fitted on."""
        if not is_exporting() and shallow.shape[-2:] != fitted.shape[-2:]:
            msg = (
                f"The {self.chosen} head was fitted on a {tuple(fitted.shape[-2:])} feature grid but got "
                f"{tuple(shallow.shape[-2:])}: score images of the training size (the pre-processor's resize)."
            )
            raise ValueError(msg)

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        # Buffers sized by the training grid take the checkpoint's shapes before copying.
        for name in self.GRID_SIZED:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __getstate__(self) -> dict:
        """Pickle without a fit in progress or caches (a torch export): they are not the model's."""
        return {name: value for name, value in self.__dict__.items() if name not in ("_pending", "_unpacked")}

    def __setstate__(self, state: dict) -> None:
        """Unpickle with no fit in progress."""
        super().__setstate__({**state, "_pending": {}})
