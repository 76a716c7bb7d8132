"""The gaussian head: its per-position statistics, its fit against a dense reference, and the paper head kept."""

import pytest
import torch
from conftest import small_model
from test_torch_model import _normal_images

from anomalib_featureridge.models.feature_ridge.heads import gaussian
from anomalib_featureridge.models.feature_ridge.maps import neighbourhood_features
from anomalib_featureridge.models.feature_ridge.positions import (
    RESIDUAL_COVARIANCE_RIDGE,
    X_COVARIANCE_RIDGE,
    PositionStatistics,
)


def test_position_statistics_equal_dense_sums() -> None:
    shallow, deep = torch.randn(5, 3, 4, 6), torch.randn(5, 2, 4, 6)
    stats = PositionStatistics()
    stats.update(shallow, deep)
    x, y = shallow.double(), deep.double()
    torch.testing.assert_close(stats.sum_x, x.sum(0))
    torch.testing.assert_close(stats.sum_y, y.sum(0))
    rows_x = x.permute(0, 2, 3, 1).reshape(-1, 3)
    rows_y = y.permute(0, 2, 3, 1).reshape(-1, 2)
    torch.testing.assert_close(stats.xx, rows_x.T @ rows_x)
    torch.testing.assert_close(stats.yy, rows_y.T @ rows_y)
    assert float(stats.count) == 5


def test_position_statistics_stream_merge_and_clear() -> None:
    shallow, deep = torch.randn(6, 3, 4, 4), torch.randn(6, 2, 4, 4)
    whole, streamed, left, right = (PositionStatistics() for _ in range(4))
    whole.update(shallow, deep)
    for index in (4, 1, 5, 0, 3, 2):
        streamed.update(shallow[index : index + 1], deep[index : index + 1])
    left.update(shallow[:2], deep[:2])
    right.update(shallow[2:], deep[2:])
    left.merge(right)
    for other in (streamed, left):
        for name in ("count", "sum_x", "sum_y", "xx", "yy"):
            torch.testing.assert_close(getattr(other, name), getattr(whole, name))
    whole.clear()
    assert whole.is_empty


def test_position_statistics_refuse_another_grid() -> None:
    stats = PositionStatistics()
    stats.update(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"same size.*head='paper'"):
        stats.update(torch.randn(1, 3, 5, 4), torch.randn(1, 2, 5, 4))


def _dense_gaussian_scores(train: torch.Tensor, test: torch.Tensor, alpha: float) -> torch.Tensor:
    """The gaussian head computed from raw rows: per-position centring, Ridge, two Mahalanobis norms."""
    model = small_model()
    x, y = (t.double() for t in model.extract(train))
    xs, ys = (t.double() for t in model.extract(test))
    height, width = x.shape[-2:]

    def rows(t: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, h w, C)
        return t.flatten(2).transpose(1, 2)

    xn, xns = rows(neighbourhood_features(x)), rows(neighbourhood_features(xs))
    mean_xn, mean_y, mean_x = xn.mean(0), rows(y).mean(0), rows(x).mean(0)
    centred_x = (xn - mean_xn).reshape(-1, xn.shape[-1])
    centred_y = (rows(y) - mean_y).reshape(-1, mean_y.shape[-1])
    weight = torch.linalg.solve(
        centred_x.T @ centred_x + alpha * torch.eye(centred_x.shape[1], dtype=torch.float64),
        centred_x.T @ centred_y,
    )
    residual_train = centred_y - centred_x @ weight
    residual_cov = residual_train.T @ residual_train / residual_train.shape[0]
    shallow_train = (rows(x) - mean_x).reshape(-1, mean_x.shape[-1])
    x_cov = shallow_train.T @ shallow_train / shallow_train.shape[0]
    residual = rows(ys) - mean_y - (xns - mean_xn) @ weight
    typicality = rows(xs) - mean_x
    eye_y, eye_x = torch.eye(residual_cov.shape[0]), torch.eye(x_cov.shape[0])
    d_res = (residual @ torch.linalg.inv(residual_cov + RESIDUAL_COVARIANCE_RIDGE * eye_y) * residual).sum(-1)
    d_x = (typicality @ torch.linalg.inv(x_cov + X_COVARIANCE_RIDGE * eye_x) * typicality).sum(-1)
    return torch.sqrt(d_res + d_x).reshape(-1, 1, height, width)


def test_gaussian_head_equals_the_dense_reference() -> None:
    train, test = _normal_images(6), torch.rand(2, 3, 64, 64)
    model = small_model(head="gaussian", alpha=2.0)
    model.update(train)
    expected = _dense_gaussian_scores(train, test, alpha=2.0)
    torch.testing.assert_close(model.patch_scores(test).double(), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("head", ["gaussian", "local"])
def test_per_position_head_fit_does_not_depend_on_batches_or_order(head: str) -> None:
    images = _normal_images(6)
    one_shot, streamed = small_model(head=head), small_model(head=head)
    one_shot.update(images)
    streamed.update([images[5], images[:2], images[2:5].flip(0)])
    test = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(streamed.patch_scores(test), one_shot.patch_scores(test), rtol=1e-4, atol=1e-4)


def test_gaussian_head_refuses_another_input_size() -> None:
    model = small_model(head="gaussian")
    model.update(_normal_images(2))
    with pytest.raises(ValueError, match="training size"):
        model(torch.rand(1, 3, 96, 96))


@pytest.mark.parametrize("head", ["gaussian", "local"])
def test_per_position_head_scores_a_defect_higher(head: str) -> None:
    model = small_model(head=head, sigma=2.0)
    model.update(_normal_images(8))
    image = _normal_images(1, seed=7)
    image[:, :, 24:40, 24:40] = torch.rand(1, 3, 16, 16) * 3
    anomaly_map = model(image).anomaly_map[0, 0]
    assert anomaly_map[28:36, 28:36].mean() > anomaly_map[:12, :12].mean() + 0.1


def test_gaussian_head_rejects_rank() -> None:
    with pytest.raises(ValueError, match="rank=8 is read only by the paper head, not by head='gaussian'"):
        small_model(head="gaussian", rank=8)


def test_paper_head_scores_are_unchanged() -> None:
    """Scores of the paper head computed with the code before the gaussian head existed (same seeds)."""
    model = small_model(head="paper")
    model.update(_normal_images(6))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    output = model(images)
    torch.testing.assert_close(output.pred_score, torch.tensor([-1.7124509, -1.4225199]), rtol=0, atol=1e-4)
    expected_corner = torch.tensor([-2.2971640, -2.8905897, -2.4589841, -2.4329576])
    torch.testing.assert_close(output.anomaly_map[0, 0, 0, ::16], expected_corner, rtol=0, atol=1e-4)


def test_gaussian_head_failed_fit_commits_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Like the Ridge sums, the per-position sums change only when a fit succeeds."""
    model = small_model(head="gaussian", keep_statistics=True)
    model.update(_normal_images(4))
    count, sum_x, weight = (
        float(model.head.positions.count),
        model.head.positions.sum_x.clone(),
        model.head.weight.clone(),
    )

    def failing_solve(*args: object) -> dict[str, torch.Tensor]:
        msg = "solve failed"
        raise ValueError(msg)

    monkeypatch.setattr(gaussian, "solve_gaussian_head", failing_solve)
    model.accumulate(_normal_images(2))
    with pytest.raises(ValueError, match="solve failed"):
        model.fit()
    assert float(model.head.positions.count) == count
    torch.testing.assert_close(model.head.positions.sum_x, sum_x, rtol=0, atol=0)
    torch.testing.assert_close(model.head.weight, weight, rtol=0, atol=0)
    assert float(model.head.statistics.count) == count * model.head.positions.sum_x[0].numel()


def test_gaussian_head_discarded_rows_are_never_counted_and_never_saved() -> None:
    images, stray = _normal_images(4), torch.rand(3, 3, 64, 64)
    reference, model = small_model(head="gaussian"), small_model(head="gaussian")
    reference.update(images)
    model.accumulate(stray)
    assert not any(key.startswith("_positions_pending") for key in model.state_dict()), "pending sums leak"
    assert model.discard_pending()
    model.update(images)
    test = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(model.patch_scores(test), reference.patch_scores(test), rtol=0, atol=0)


def test_gaussian_head_refused_update_leaves_nothing_pending() -> None:
    model = small_model(head="gaussian", keep_statistics=True)
    model.update(_normal_images(3))
    with pytest.raises(ValueError, match="same size"):
        model.update([_normal_images(2), torch.rand(1, 3, 96, 96)])
    assert not model.has_pending
    model.update(_normal_images(2))  # the refused update's first batch is not counted
    assert float(model.head.positions.count) == 5
