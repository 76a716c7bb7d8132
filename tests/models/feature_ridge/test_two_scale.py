"""The two-scale head: its rules against dense references, its fit's independence of batches, its old checkpoints."""

from pathlib import Path

import pytest
import torch
from conftest import small_model
from test_torch_model import _normal_images
from torch.nn import functional as F  # noqa: N812

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.models.feature_ridge.heads.two_scale import COARSE_WEIGHT, erode
from anomalib_featureridge.models.feature_ridge.local import LocalStatistics, local_scores, solve_local_head
from anomalib_featureridge.models.feature_ridge.maps import refer_to_contrast

IMAGE_SIZE = 64


def _two_scale(**kwargs: object) -> torch.nn.Module:
    return small_model(head="two_scale", reference="contrast", **kwargs)


def test_erosion_is_the_minimum_over_the_neighbours_inside_the_map() -> None:
    scores = torch.randn(2, 1, 5, 7)
    expected = torch.empty_like(scores)
    for row in range(5):
        for column in range(7):
            window = scores[..., max(row - 1, 0) : row + 2, max(column - 1, 0) : column + 2]
            expected[..., row, column] = window.amin(dim=(-2, -1))
    torch.testing.assert_close(erode(scores), expected, rtol=0, atol=0)


def _local_head(train: tuple[torch.Tensor, torch.Tensor], region: int) -> dict[str, torch.Tensor]:
    statistics = LocalStatistics(region)
    statistics.update(*train)
    return {name: value.float() for name, value in solve_local_head(statistics).items()}


def test_two_scale_scores_equal_a_reference_built_from_its_parts() -> None:
    """Each step written out on its own: both local heads, the coarse grid, the erosion, the weighted max."""
    train, test = _normal_images(12, size=IMAGE_SIZE), torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    model = _two_scale()
    model.update(train)

    def maps(images: torch.Tensor, coarse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        shallow, deep = model.feature_extractor(images)
        if coarse:
            average = torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
            shallow, deep = average(shallow), average(deep)
        shallow, deep = refer_to_contrast(shallow), refer_to_contrast(deep)
        if coarse:
            shallow = shallow[..., 0::2, 0::2]
        return shallow, F.interpolate(deep, size=shallow.shape[-2:], mode="bilinear", align_corners=False)

    with torch.no_grad():
        fine_head, coarse_head = _local_head(maps(train, False), 2), _local_head(maps(train, True), 2)

        def parts(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            fine = local_scores(*maps(images, False), fine_head, 2)
            coarse = local_scores(*maps(images, True), coarse_head, 2)
            return fine, F.interpolate(erode(coarse), size=fine.shape[-2:], mode="bilinear", align_corners=False)

        fine, coarse = parts(test)
        expected = torch.maximum(fine, COARSE_WEIGHT * coarse)
        torch.testing.assert_close(model.patch_scores(test), expected, rtol=1e-4, atol=1e-4)
    fine_grid, coarse_grid = model.head.fine.mean_x.shape[-2:], model.head.coarse.mean_x.shape[-2:]
    assert fine_grid == (2 * coarse_grid[0], 2 * coarse_grid[1])


def test_the_fit_does_not_depend_on_batches_or_their_order() -> None:
    images, test = _normal_images(9, size=IMAGE_SIZE), torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    whole, streamed = _two_scale(), _two_scale()
    whole.update(images)
    streamed.update([images[6:], images[2:6], images[:2]])
    torch.testing.assert_close(streamed.patch_scores(test), whole.patch_scores(test), rtol=1e-4, atol=1e-4)
    assert float(whole.head.coarse.positions.count) == 9


def _with_scales(model: torch.nn.Module, scales: list[float]) -> torch.nn.Module:
    loaded = _two_scale()
    loaded.load_state_dict({**model.state_dict(), "head.scales": torch.tensor(scales)})
    return loaded


def test_a_model_fitted_with_training_percentiles_scores_with_them_until_it_is_fitted_again() -> None:
    """Models fitted before the weight was fixed divided each scale by its training percentile: they keep scoring so."""
    images, more = _normal_images(4, size=IMAGE_SIZE), _normal_images(2, size=IMAGE_SIZE, seed=5)
    test = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    model = _two_scale()
    model.update(images)
    torch.testing.assert_close(model.head.scales, torch.tensor([1.0, 1.0 / COARSE_WEIGHT]), rtol=0, atol=0)
    fine = _with_scales(model, [1.0, 1e9]).patch_scores(test)  # distances are positive: the other scale drops out
    coarse = _with_scales(model, [1e9, 1.0]).patch_scores(test)
    old = _with_scales(model, [2.0, 1.5])
    torch.testing.assert_close(old.patch_scores(test), torch.maximum(fine / 2.0, coarse / 1.5))
    old.update(more)
    model.update(more)
    torch.testing.assert_close(old.head.scales, model.head.scales, rtol=0, atol=0)
    torch.testing.assert_close(old.patch_scores(test), model.patch_scores(test), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"two_scale head was fitted on a .* training size"):
        model(torch.rand(1, 3, 2 * IMAGE_SIZE, 2 * IMAGE_SIZE))


def test_the_two_scale_head_round_trips_through_state_dicts_and_pickles(tmp_path: Path) -> None:
    model = _two_scale(keep_statistics=False)
    model.update(_normal_images(4, size=IMAGE_SIZE))
    assert model.head.fine.positions.is_empty
    assert model.head.coarse.positions.is_empty
    test = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    expected = model.patch_scores(test)
    restored = _two_scale(keep_statistics=False)
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored.patch_scores(test), expected, rtol=0, atol=0)
    torch.save(model, tmp_path / "model.pt")
    unpickled = torch.load(tmp_path / "model.pt", weights_only=False)
    torch.testing.assert_close(unpickled.patch_scores(test), expected, rtol=0, atol=0)
    in_progress = _two_scale()
    in_progress.accumulate(_normal_images(1, size=IMAGE_SIZE, seed=7))  # a fit in progress is not pickled
    torch.save(in_progress, tmp_path / "in_progress.pt")
    unpickled = torch.load(tmp_path / "in_progress.pt", weights_only=False)
    assert not unpickled.has_pending


def test_an_export_leaves_both_scales_statistics_out() -> None:
    model = FeatureRidge(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False, head="two_scale")
    model.model.update(_normal_images(3, size=IMAGE_SIZE))
    with model.export_context():
        assert model.model.head.fine.positions.is_empty
        assert model.model.head.coarse.positions.is_empty
    assert not model.model.head.coarse.positions.is_empty
