"""The local head: its sums, its fit against a dense reference, streaming, and its limits."""

from pathlib import Path

import pytest
import torch
from conftest import SMALL_BACKBONE, SMALL_LAYERS, small_model
from test_torch_model import _normal_images

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.models.feature_ridge.local import (
    COVARIANCE_RIDGE,
    LocalStatistics,
    pack_lower,
    region_count,
    region_rows,
    unpack_lower,
)
from anomalib_featureridge.models.feature_ridge.maps import upsample_to


def _block_labels(height: int, width: int, region: int) -> torch.Tensor:
    """Each position's block (row-major), written out: the reference for the head's layout."""
    columns = -(-width // region)
    labels = [(row // region) * columns + column // region for row in range(height) for column in range(width)]
    return torch.tensor(labels)


def test_region_rows_cover_grids_that_do_not_divide_with_zero_padding() -> None:
    grid = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    assert region_rows(grid, 2)[..., 0].tolist() == [[1, 2, 4, 5], [3, 0, 6, 0], [7, 8, 0, 0], [9, 0, 0, 0]]
    assert region_rows(grid, 1)[..., 0].tolist() == [[value] for value in range(1, 10)]
    assert region_count(3, 3, 2) == 4
    assert region_count(2, 4, 2) == 2


def test_local_statistics_equal_dense_sums_and_merge() -> None:
    shallow, deep = torch.randn(5, 3, 4, 6, dtype=torch.float64), torch.randn(5, 2, 4, 6, dtype=torch.float64)
    whole, left, right = LocalStatistics(2), LocalStatistics(2), LocalStatistics(2)
    whole.update(shallow, deep)
    left.update(shallow[:2], deep[:2])
    right.update(shallow[2:], deep[2:])
    left.merge(right)
    x, y = shallow.flatten(2), deep.flatten(2)  # (N, C, P)
    index = _block_labels(4, 6, 2)
    for position in (0, 7, 23):
        torch.testing.assert_close(whole.xx[position], x[:, :, position].T @ x[:, :, position])
    for region in range(int(index.max()) + 1):
        at = index == region
        rows_x = x[:, :, at].permute(0, 2, 1).reshape(-1, 3)
        rows_y = y[:, :, at].permute(0, 2, 1).reshape(-1, 2)
        torch.testing.assert_close(whole.xy[region], rows_x.T @ rows_y)
        torch.testing.assert_close(whole.yy[region], rows_y.T @ rows_y)
    for name in ("count", *LocalStatistics.SUMS):
        torch.testing.assert_close(getattr(left, name), getattr(whole, name))
    with pytest.raises(ValueError, match="2 x 2 regions into 1 x 1"):
        LocalStatistics(1).merge(whole)


def _dense_local_scores(model: torch.nn.Module, train: torch.Tensor, test: torch.Tensor, region: int) -> torch.Tensor:
    """The head from raw rows: per-position Gaussians of x, per-region conditional Gaussians of y given x."""
    shallow, deep = model.extract(train)
    x, y = shallow.double().flatten(2), deep.double().flatten(2)  # (N, C, P)
    images, channels, grid = x.shape
    mean_x, mean_y = x.mean(0), y.mean(0)
    cx, cy = x - mean_x, y - mean_y
    index = _block_labels(*shallow.shape[-2:], region)
    test_x, test_y = (t.double().flatten(2) for t in model.extract(test))
    test_x, test_y = test_x - mean_x, test_y - mean_y
    scores = torch.zeros(test.shape[0], grid, dtype=torch.float64)
    for position in range(grid):
        xx = cx[:, :, position].T @ cx[:, :, position] / images + COVARIANCE_RIDGE * torch.eye(channels)
        at = (index == index[position]).nonzero()[:, 0]
        joint = torch.cat([cx[:, :, at], cy[:, :, at]], dim=1)  # (N, C_x + C_y, positions of the region)
        pooled = torch.einsum("nip,njp->ij", joint, joint) / (images * len(at))
        pooled += COVARIANCE_RIDGE * torch.eye(pooled.shape[0])
        pxx, pxy, pyy = pooled[:channels, :channels], pooled[:channels, channels:], pooled[channels:, channels:]
        regression = torch.linalg.solve(pxx, pxy)  # (C_x, C_y)
        conditional = pyy - pxy.T @ regression
        residual = test_y[:, :, position] - test_x[:, :, position] @ regression
        scores[:, position] = (
            torch.einsum("bi,ij,bj->b", test_x[:, :, position], torch.linalg.inv(xx), test_x[:, :, position])
            + torch.einsum("bi,ij,bj->b", residual, torch.linalg.inv(conditional), residual)
        ).sqrt()
    return scores.reshape(test.shape[0], 1, *shallow.shape[-2:])


@pytest.mark.parametrize("region", [1, 3])
def test_local_head_equals_the_dense_reference(region: int) -> None:
    train, test = _normal_images(40, size=32), torch.rand(2, 3, 32, 32)
    model = small_model(head="local", region=region)
    model.update(train)
    expected = _dense_local_scores(model, train, test, region)
    torch.testing.assert_close(model.patch_scores(test).double(), expected, rtol=1e-3, atol=1e-3)


def test_local_head_refuses_another_input_size_and_rank() -> None:
    model = small_model(head="local")
    model.update(_normal_images(2))
    with pytest.raises(ValueError, match=r"local head was fitted on a .* training size"):
        model(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match="same size"):
        model.update(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match=r"rank=8 is read only by the paper head, not by head='local'"):
        small_model(head="local", rank=8)


@pytest.mark.parametrize("region", [0, 1.5, True])
def test_bad_region_is_refused(region: object) -> None:
    with pytest.raises(ValueError, match="region must be a whole number"):
        small_model(head="local", region=region)


def test_local_head_statistics_are_dropped_without_keep_statistics() -> None:
    model = small_model(head="local", keep_statistics=False)
    model.update(_normal_images(3))
    assert model.head.positions.is_empty
    assert model.head.x_whitening.numel() > 0
    deep_on_grid = upsample_to(*reversed(model.extract(_normal_images(1))))
    assert deep_on_grid.shape[-2:] == model.head.mean_y.shape[-2:]


def test_whitening_factors_are_stored_as_packed_lower_triangles() -> None:
    lower = torch.randn(3, 4, 4).tril()
    packed = pack_lower(lower)
    assert packed.shape == (3, 10)
    torch.testing.assert_close(unpack_lower(packed, 4), lower)
    model = small_model(head="local")
    model.update(_normal_images(3))
    channels = model.head.mean_x.shape[0]
    assert model.head.x_whitening.shape[-1] == channels * (channels + 1) // 2


@pytest.mark.parametrize("head", ["local", "two_scale"])
def test_local_head_update_after_scoring_equals_a_full_refit(head: str) -> None:
    first, second, test = _normal_images(4, seed=1), _normal_images(3, seed=2), torch.rand(2, 3, 64, 64)
    incremental, full = small_model(head=head), small_model(head=head)
    incremental.update(first)
    before = incremental.patch_scores(test)  # fills the unpacked-factor cache, which the update must refresh
    incremental.update(second)
    full.update(torch.cat([first, second]))
    assert not torch.allclose(before, full.patch_scores(test))
    torch.testing.assert_close(incremental.patch_scores(test), full.patch_scores(test), rtol=1e-4, atol=1e-4)


def test_the_saved_local_head_holds_its_packed_factors_only(tmp_path: Path) -> None:
    model = small_model(head="local")
    model.update(_normal_images(3))
    test = torch.rand(1, 3, 64, 64)
    expected = model.patch_scores(test)  # fills the cache of unpacked factors
    torch.save(model, tmp_path / "model.pt")
    restored = torch.load(tmp_path / "model.pt", weights_only=False)
    assert "_unpacked" not in restored.head.__dict__
    torch.testing.assert_close(restored.patch_scores(test), expected)


def test_an_export_leaves_the_local_statistics_out_and_keeps_their_kind() -> None:
    model = FeatureRidge(backbone=SMALL_BACKBONE, layers=list(SMALL_LAYERS), pre_trained=False, head="local")
    model.model.update(_normal_images(3))
    with model.export_context():
        assert isinstance(model.model.head.positions, LocalStatistics)
        assert model.model.head.positions.is_empty
    assert not model.model.head.positions.is_empty


def test_local_head_accumulates_only_its_own_sums() -> None:
    model = small_model(head="local")
    # The neighbourhood sums are the paper map's: the local head never keeps them.
    assert list(model.head.committed_sums()) == ["positions"]
    model.accumulate(_normal_images(2))
    assert model.has_pending
    model.fit()
    assert not model.has_pending
    assert float(model.head.positions.count) == 2
    assert model.describe_fit() == "2 images"
    model.accumulate(_normal_images(1, seed=3))
    assert model.discard_pending()
    assert not model.discard_pending()
