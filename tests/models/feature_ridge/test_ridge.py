"""The streaming Ridge solver against a dense solve, and its independence of batching."""

import numpy as np
import pytest
import torch

from anomalib_featureridge.models.feature_ridge.ridge import RidgeStatistics


def _data(n: int = 500, d_in: int = 12, d_out: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, d_in, generator=generator, dtype=torch.float64) * 3 + 2
    true_w = torch.randn(d_in, d_out, generator=generator, dtype=torch.float64)
    y = x @ true_w + 0.5 + 0.1 * torch.randn(n, d_out, generator=generator, dtype=torch.float64)
    return x, y


def _fit(x: torch.Tensor, y: torch.Tensor, batch: int, alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    stats = RidgeStatistics()
    for start in range(0, x.shape[0], batch):
        stats.update(x[start : start + batch], y[start : start + batch])
    return stats.solve(alpha)


def test_matches_dense_ridge_with_unpenalised_intercept() -> None:
    x, y = _data()
    alpha = 3.0
    weight, bias = _fit(x, y, batch=64, alpha=alpha)
    # Dense reference: augment with a bias column and penalise every coefficient except the bias.
    xa = np.hstack([x.numpy(), np.ones((x.shape[0], 1))])
    penalty = alpha * np.eye(xa.shape[1])
    penalty[-1, -1] = 0.0
    reference = np.linalg.solve(xa.T @ xa + penalty, xa.T @ y.numpy())
    np.testing.assert_allclose(weight.numpy(), reference[:-1], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(bias.numpy(), reference[-1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("batch", [1, 7, 100, 500])
def test_independent_of_batch_size(batch: int) -> None:
    x, y = _data()
    one_shot = _fit(x, y, batch=x.shape[0])
    streamed = _fit(x, y, batch=batch)
    for a, b in zip(one_shot, streamed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_independent_of_order() -> None:
    x, y = _data()
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(3))
    for a, b in zip(_fit(x, y, 50), _fit(x[order], y[order], 50), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_merge_equals_single_pass() -> None:
    x, y = _data()
    left, right = RidgeStatistics(), RidgeStatistics()
    left.update(x[:200], y[:200])
    right.update(x[200:], y[200:])
    left.merge(right)
    for a, b in zip(left.solve(1.0), _fit(x, y, 500), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_float32_features_are_accumulated_in_float64() -> None:
    x, y = _data()
    stats = RidgeStatistics()
    stats.update(x.float(), y.float())
    assert stats.xtx.dtype == torch.float64
    weight, _ = stats.solve(1.0)
    torch.testing.assert_close(weight, _fit(x.float().double(), y.float().double(), 500)[0], rtol=1e-9, atol=1e-9)


def test_empty_statistics_refuse_to_solve() -> None:
    with pytest.raises(ValueError, match="empty"):
        RidgeStatistics().solve(1.0)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_non_positive_alpha_is_refused(alpha: float) -> None:
    x, y = _data()
    stats = RidgeStatistics()
    stats.update(x, y)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        stats.solve(alpha)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_are_refused(bad: float) -> None:
    x, y = _data()
    x[3, 2] = bad
    with pytest.raises(ValueError, match="Non-finite"):
        RidgeStatistics().update(x, y)


def test_feature_size_change_is_refused() -> None:
    x, y = _data()
    stats = RidgeStatistics()
    stats.update(x, y)
    with pytest.raises(ValueError, match="do not match"):
        stats.update(x[:, :5], y)


def test_statistics_survive_state_dict_round_trip() -> None:
    x, y = _data()
    stats = RidgeStatistics()
    stats.update(x, y)
    restored = RidgeStatistics()
    restored.load_state_dict(stats.state_dict())
    for a, b in zip(stats.solve(1.0), restored.solve(1.0), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _accumulated(x: torch.Tensor, y: torch.Tensor) -> RidgeStatistics:
    stats = RidgeStatistics()
    stats.update(x, y)
    return stats


def _ridge_objective(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, alpha: float) -> float:
    """``sum ||y - W^T x - b||^2 + alpha ||W||^2`` with the best unpenalised intercept for ``W``."""
    bias = y.mean(0) - weight.T @ x.mean(0)
    return float((y - x @ weight - bias).pow(2).sum() + alpha * weight.pow(2).sum())


def test_reduced_rank_matches_the_projected_augmented_fit() -> None:
    x, y = _data(d_out=6)
    alpha, rank = 4.0, 3
    stats = _accumulated(x, y)
    reduced, basis, bias = stats.solve_reduced_rank(alpha, rank)
    # Reference from the raw rows: Ridge is least squares on [X_c; sqrt(alpha) I] -> [Y_c; 0], and the
    # best rank-r map projects its fitted values onto their leading r right singular vectors.
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    augmented = np.vstack([xc, np.sqrt(alpha) * np.eye(xc.shape[1])])
    targets = np.vstack([yc, np.zeros((xc.shape[1], yc.shape[1]))])
    full = np.linalg.lstsq(augmented, targets, rcond=None)[0]
    leading = np.linalg.svd(augmented @ full)[2][:rank].T
    expected = full @ leading @ leading.T
    np.testing.assert_allclose((reduced @ basis.T).numpy(), expected, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(bias.numpy(), y.mean(0).numpy() - expected.T @ x.mean(0).numpy(), atol=1e-8)
    torch.testing.assert_close(basis.T @ basis, torch.eye(rank, dtype=torch.float64))


def test_reduced_rank_beats_other_maps_of_that_rank() -> None:
    x, y = _data(d_out=6)
    alpha, rank = 1.0, 2
    stats = _accumulated(x, y)
    reduced, basis, _ = stats.solve_reduced_rank(alpha, rank)
    best = _ridge_objective(x, y, reduced @ basis.T, alpha)
    full, _ = stats.solve(alpha)
    left, singular, right = torch.linalg.svd(full, full_matrices=False)
    truncated = left[:, :rank] @ torch.diag(singular[:rank]) @ right[:rank]
    assert best < _ridge_objective(x, y, truncated, alpha)
    generator = torch.Generator().manual_seed(5)
    for _ in range(5):
        directions = torch.linalg.qr(torch.randn(6, rank, generator=generator, dtype=torch.float64))[0]
        assert best < _ridge_objective(x, y, full @ directions @ directions.T, alpha)
    assert _ridge_objective(x, y, full, alpha) <= best


@pytest.mark.parametrize("rank", [0, 5, 7])
def test_reduced_rank_outside_one_to_targets_minus_one_is_refused(rank: int) -> None:
    x, y = _data()
    stats = _accumulated(x, y)
    with pytest.raises(ValueError, match=r"rank must be between 1 and 4"):
        stats.solve_reduced_rank(1.0, rank)
