"""Sliding windows on the patch grid and harmonic aggregation of window scores onto patches.

WinCLIP paper, Sec. 4.2 (WinCLIP, window-based zero-shot segmentation): a k x k window (in
patches) slides over the grid and its embedding comes from the patch tokens inside it only; the
score of a patch is the harmonic mean of the scores of all windows that contain it ("harmonic
aggregation"). WinCLIP+ (Sec. 4.3) aggregates its window scores the same way.
"""

from __future__ import annotations

import torch

EPSILON = 1e-12


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Start positions of windows of ``size`` along ``length`` cells; the last cell is always covered."""
    if size > length:
        msg = f"A window of {size} patches does not fit a grid side of {length} patches."
        raise ValueError(msg)
    if stride < 1:
        msg = f"The window stride must be at least 1, got {stride}."
        raise ValueError(msg)
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def window_patch_index(grid: tuple[int, int], size: int, stride: int = 1) -> torch.Tensor:
    """``(n_windows, size * size)`` row-major patch indices of each window, windows in row-major order."""
    height, width = grid
    patch_ids = torch.arange(height * width).reshape(height, width)
    windows = [
        patch_ids[top : top + size, left : left + size].reshape(-1)
        for top in window_starts(height, size, stride)
        for left in window_starts(width, size, stride)
    ]
    return torch.stack(windows)


def coverage_matrix(index: torch.Tensor, n_patches: int) -> torch.Tensor:
    """``(n_windows, n_patches)`` float matrix: 1 where the window contains the patch."""
    coverage = torch.zeros(index.shape[0], n_patches)
    coverage.scatter_(1, index, 1.0)
    return coverage


def harmonic_aggregation(window_scores: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """Harmonic aggregation (Sec. 4.2): per patch, the harmonic mean of the scores of the windows containing it.

    ``window_scores`` is ``(B, n_windows)``, ``coverage`` from :func:`coverage_matrix`; returns
    ``(B, n_patches)``. Scores are clamped at a tiny epsilon, so a zero score gives (almost) zero
    instead of a division by zero, with one matrix product that exports to ONNX as is.
    """
    inverse_sum = (1.0 / window_scores.clamp_min(EPSILON)) @ coverage
    return coverage.sum(dim=0) / inverse_sum
