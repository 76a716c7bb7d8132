"""Streaming closed-form Ridge regression between two feature maps.

The fit never holds more than one batch of features: it accumulates the sufficient statistics
(count, sums, ``X^T X`` and ``X^T Y``) in float64 and solves the centred normal equations once.
Because sums commute, the solution is independent of batch size and order, and new images can be
added later without revisiting the old ones.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .sums import FloatSums

# Rows of X per chunk while accumulating: bounds the float64 working set to about 64 MiB per
# 1000 input channels, whatever the batch or image size.
_ROWS_PER_CHUNK = 8192


def refuse_non_finite(*features: torch.Tensor) -> None:
    """Refuse NaN or inf features before they reach a sum: one such value turns the whole fit into NaN."""
    if not all(torch.isfinite(tensor).all() for tensor in features):
        msg = (
            "Non-finite values (NaN or inf) in the backbone features. Check the input images "
            "(corrupt files, NaN pixels) and the backbone weights."
        )
        raise ValueError(msg)


def check_alpha(alpha: float) -> float:
    """The Ridge penalty as a float, refused unless finite and > 0 (it keeps the system positive definite)."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
        msg = f"alpha must be > 0 and finite (it keeps the Ridge system positive definite), got {alpha!r}."
        raise ValueError(msg)
    return float(alpha)


def check_rank(rank: int, out_features: int, targets: str = "targets", hint: str = "") -> int:
    """A reduced rank, refused unless an integer below the number of ``targets`` (at or above it is the full map)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 < rank < out_features:
        msg = f"rank must be between 1 and {out_features - 1} (below the {out_features} {targets}){hint}, got {rank!r}."
        raise ValueError(msg)
    return rank


def ridge_cholesky(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """The Cholesky factor of ``gram + alpha I``: the one place the penalty is checked and added."""
    system = gram + check_alpha(alpha) * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:
        msg = "The Ridge system is not positive definite (the features are numerically degenerate). Increase alpha."
        raise ValueError(msg)
    return factor


class RidgeMoments(NamedTuple):
    """Sums over rows that add across batches, processes and machines: the content of :class:`RidgeStatistics`."""

    count: torch.Tensor
    sum_x: torch.Tensor
    sum_y: torch.Tensor
    xtx: torch.Tensor
    xty: torch.Tensor


class RidgeStatistics(FloatSums):
    """Sufficient statistics of ``y ~ W x + b`` in float64, kept as buffers so they checkpoint.

    The buffers start empty and are sized on the first update; an empty state (also after
    :meth:`clear`) means "no statistics", which is how a model whose statistics were dropped
    to save space is recognised.
    """

    SUMS = ("sum_x", "sum_y", "xtx", "xty")

    def __init__(self) -> None:
        super().__init__()
        self.sum_x: torch.Tensor
        self.sum_y: torch.Tensor
        self.xtx: torch.Tensor
        self.xty: torch.Tensor

    def _allocate(self, in_features: int, out_features: int, device: torch.device) -> None:
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.sum_x = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.sum_y = torch.zeros(out_features, dtype=torch.float64, device=device)
        self.xtx = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.xty = torch.zeros(in_features, out_features, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Accumulate rows of inputs ``(N, D_in)`` and targets ``(N, D_out)``.

        Raises:
            ValueError: On mismatched shapes, or on non-finite values (which would silently turn
                the whole fit into NaN).
        """
        if inputs.ndim != 2 or targets.ndim != 2 or inputs.shape[0] != targets.shape[0]:
            msg = (
                f"Expected (N, D_in) inputs and (N, D_out) targets, "
                f"got {tuple(inputs.shape)} and {tuple(targets.shape)}."
            )
            raise ValueError(msg)
        refuse_non_finite(inputs, targets)
        if not self.is_sized:
            self._allocate(inputs.shape[1], targets.shape[1], self.count.device)
        if inputs.shape[1] != self.sum_x.shape[0] or targets.shape[1] != self.sum_y.shape[0]:
            msg = (
                f"Feature sizes ({inputs.shape[1]}, {targets.shape[1]}) do not match the accumulated "
                f"statistics ({self.sum_x.shape[0]}, {self.sum_y.shape[0]})."
            )
            raise ValueError(msg)
        for start in range(0, inputs.shape[0], _ROWS_PER_CHUNK):
            x = inputs[start : start + _ROWS_PER_CHUNK].to(device=self.xtx.device, dtype=torch.float64)
            y = targets[start : start + _ROWS_PER_CHUNK].to(device=self.xtx.device, dtype=torch.float64)
            self.count += x.shape[0]
            self.sum_x += x.sum(dim=0)
            self.sum_y += y.sum(dim=0)
            self.xtx.addmm_(x.T, x)
            self.xty.addmm_(x.T, y)

    def moments(self) -> RidgeMoments:
        """The statistics' tensors (not copies)."""
        return RidgeMoments(self.count, self.sum_x, self.sum_y, self.xtx, self.xty)

    @torch.no_grad()
    def add(self, moments: RidgeMoments) -> None:
        """Add sums accumulated elsewhere (another batch layout, process or machine) to these statistics."""
        if float(moments.count) == 0.0:
            return
        if not self.is_sized:
            self._allocate(moments.sum_x.shape[0], moments.sum_y.shape[0], self.count.device)
        if moments.xty.shape != self.xty.shape:
            msg = (
                f"Feature sizes {tuple(moments.xty.shape)} do not match the accumulated statistics "
                f"{tuple(self.xty.shape)}."
            )
            raise ValueError(msg)
        for total, value in zip(self.moments(), moments, strict=True):
            total.add_(value.to(device=total.device, dtype=torch.float64))

    def merge(self, other: RidgeStatistics) -> None:
        """Add another set of statistics (for example from another worker) to this one."""
        if not other.is_empty:
            self.add(other.moments())

    def combined_with(self, moments: RidgeMoments) -> RidgeStatistics:
        """A copy of these statistics plus ``moments``, leaving these untouched until the copy is known good."""
        combined = RidgeStatistics().to(self.count.device)
        if not self.is_empty:
            combined.add(self.moments())
        combined.add(moments)
        return combined

    def _centred_solve(self, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Solve ``(X_c^T X_c + alpha I) W = X_c^T Y_c``; return ``W``, ``X_c^T Y_c`` and the two means."""
        self.require_data()
        mean_x = self.sum_x / self.count
        mean_y = self.sum_y / self.count
        gram = self.xtx - self.count * torch.outer(mean_x, mean_x)
        cross = self.xty - self.count * torch.outer(mean_x, mean_y)
        return torch.cholesky_solve(cross, ridge_cholesky(gram, alpha)), cross, mean_x, mean_y

    @torch.no_grad()
    def solve(self, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(W, b)`` in float64 minimising ``sum ||y - W^T x - b||^2 + alpha ||W||^2``.

        The intercept is not penalised: the problem is solved on centred data, with
        ``(X_c^T X_c + alpha I) W = X_c^T Y_c`` by Cholesky, then ``b = mean_y - W^T mean_x``.
        """
        weight, _, mean_x, mean_y = self._centred_solve(alpha)
        return weight, mean_y - weight.T @ mean_x

    @torch.no_grad()
    def solve_reduced_rank(self, alpha: float, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(A, V, b)`` in float64 with ``W = A V^T`` the best Ridge map of rank ``rank``.

        ``A`` is ``(D_in, rank)`` and ``V`` ``(D_out, rank)`` with orthonormal columns, so a
        prediction ``V (A^T x) + b`` costs ``rank (D_in + D_out)`` multiplications instead of
        ``D_in D_out``. Minimising the Ridge objective under a rank constraint projects the full
        solution onto the leading eigenvectors of ``W^T (X_c^T X_c + alpha I) W`` (reduced-rank
        Ridge regression); that matrix equals ``W^T X_c^T Y_c``, which needs no second product
        with the large Gram matrix.
        """
        weight, cross, mean_x, mean_y = self._centred_solve(alpha)
        check_rank(rank, weight.shape[1])
        response = weight.T @ cross
        _, eigenvectors = torch.linalg.eigh((response + response.T) / 2)
        basis = eigenvectors[:, -rank:].flip(-1)
        reduced = weight @ basis
        return reduced, basis, mean_y - basis @ (reduced.T @ mean_x)
