"""The two-scale head: its rules against dense references, its fit's independence of batches, and its limits."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_model
from test_torch_model import _normal_images
from torch.nn import functional as F  # noqa: N812

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.models.feature_ridge.local import LocalStatistics, local_scores, solve_local_head
from anomalib_featureridge.models.feature_ridge.torch_model import refer_to_contrast
from anomalib_featureridge.models.feature_ridge.two_scale import calibration_scale, erode

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


@pytest.mark.parametrize("count", [1, 99, 100, 101, 12345])
def test_the_scale_is_the_nearest_rank_percentile_in_any_order(count: int) -> None:
    values = torch.rand(count, generator=torch.Generator().manual_seed(count))
    expected = np.percentile(values.double().numpy(), 99, method="inverted_cdf")
    assert float(calibration_scale(values)) == expected
    assert float(calibration_scale(values.flip(0))) == expected
    with pytest.raises(ValueError, match="none were kept"):
        calibration_scale(torch.empty(0))


def _local_head(train: tuple[torch.Tensor, torch.Tensor], region: int) -> dict[str, torch.Tensor]:
    statistics = LocalStatistics(region)
    statistics.update(*train)
    return {name: value.float() for name, value in solve_local_head(statistics).items()}


def test_two_scale_scores_equal_a_reference_built_from_its_parts() -> None:
    """Each step written out on its own: both local heads, the coarse grid, the erosion, the percentiles, the max."""
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

        scales = [np.percentile(part.double().numpy(), 99, method="inverted_cdf") for part in parts(train)]
        fine, coarse = parts(test)
        expected = torch.maximum(fine / scales[0], coarse / scales[1])
        torch.testing.assert_close(model.scales.double(), torch.tensor(scales, dtype=torch.float64), rtol=1e-4, atol=0)
        torch.testing.assert_close(model.patch_scores(test), expected, rtol=1e-4, atol=1e-4)
    assert model.local_mean_x.shape[-2:] == (2 * model.coarse_mean_x.shape[-2], 2 * model.coarse_mean_x.shape[-1])


def test_the_fit_does_not_depend_on_batches_or_their_order() -> None:
    images, test = _normal_images(9, size=IMAGE_SIZE), torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    whole, streamed = _two_scale(), _two_scale()
    whole.update(images)
    streamed.update([images[6:], images[2:6], images[:2]])
    torch.testing.assert_close(streamed.scales, whole.scales, rtol=1e-5, atol=0)
    torch.testing.assert_close(streamed.patch_scores(test), whole.patch_scores(test), rtol=1e-4, atol=1e-4)
    assert float(whole.coarse_positions.count) == 9
    assert not whole._training_maps, "the fit's training maps are dropped once the scales are set"


def test_a_fitted_two_scale_head_refuses_new_images_and_keeps_its_fit() -> None:
    model = _two_scale()
    model.update(_normal_images(4, size=IMAGE_SIZE))
    test = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    before = model.patch_scores(test)
    with pytest.raises(RuntimeError, match=r"two-scale head cannot take new images.*head='local'"):
        model.update(_normal_images(2, size=IMAGE_SIZE, seed=5))
    with pytest.raises(RuntimeError, match="two-scale head cannot take new images"):
        model.accumulate(_normal_images(2, size=IMAGE_SIZE, seed=5))  # the way a training step adds images
    assert not model.has_pending
    torch.testing.assert_close(model.patch_scores(test), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"two_scale head was fitted on a .* training size"):
        model(torch.rand(1, 3, 2 * IMAGE_SIZE, 2 * IMAGE_SIZE))


def test_a_fit_without_the_training_maps_is_refused_and_changes_nothing() -> None:
    model = _two_scale()
    model.accumulate(_normal_images(3, size=IMAGE_SIZE))
    model._training_maps.clear()
    with pytest.raises(ValueError, match="kept none"):
        model.fit()
    assert not bool(model.fitted)
    assert model.coarse_mean_x.numel() == 0
    assert model.positions.is_empty


def test_the_two_scale_head_round_trips_through_state_dicts_and_pickles(tmp_path: Path) -> None:
    model = _two_scale(keep_statistics=False)
    model.update(_normal_images(4, size=IMAGE_SIZE))
    assert model.positions.is_empty
    assert model.coarse_positions.is_empty
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
    assert not unpickled._training_maps


def test_an_export_leaves_both_scales_statistics_out() -> None:
    model = FeatureRidge(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False, head="two_scale")
    model.model.update(_normal_images(3, size=IMAGE_SIZE))
    with model.export_context():
        assert model.model.positions.is_empty
        assert model.model.coarse_positions.is_empty
    assert not model.model.coarse_positions.is_empty
