"""FeatureRidgeModel: feature geometry, the conv form of the Ridge map, scoring and updates."""

from collections.abc import Callable

import pytest
import torch
from conftest import small_model
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_featureridge.components.filters import SeparableGaussianBlur
from anomalib_featureridge.models.feature_ridge.maps import (
    average_neighbours,
    neighbourhood_features,
    refer_to_contrast,
    refer_to_median,
    upsample_to,
)


def _normal_images(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random textures: normal images whose local structure is predictable."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, size // 8, size // 8, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_neighbourhood_concatenation_shape_and_layout() -> None:
    features = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    stacked = neighbourhood_features(features)
    assert stacked.shape == (2, 27, 4, 5)
    # The centre tap (index 4 of the 3x3 window) of channel c is the feature itself.
    torch.testing.assert_close(stacked[:, 4::9], features)
    # The top-left tap at (1, 1) is the feature at (0, 0); at the border it is zero padding.
    torch.testing.assert_close(stacked[:, 0::9, 1, 1], features[:, :, 0, 0])
    assert torch.all(stacked[:, 0::9, 0, :] == 0)


def test_upsampling_to_the_shallow_grid() -> None:
    deep, shallow = torch.randn(2, 7, 4, 4), torch.randn(2, 3, 8, 8)
    assert upsample_to(deep, shallow).shape == (2, 7, 8, 8)


def test_neighbour_average_is_the_mean_over_the_positions_inside_the_map() -> None:
    features = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    averaged = average_neighbours(features, 3)
    expected = torch.empty_like(features)
    for row in range(5):
        for column in range(6):
            window = features[:, :, max(row - 1, 0) : row + 2, max(column - 1, 0) : column + 2]
            expected[:, :, row, column] = window.mean(dim=(-2, -1))
    torch.testing.assert_close(averaged, expected)


@pytest.mark.parametrize("head", ["paper", "gaussian", "local"])
def test_pool_averages_both_maps_before_every_head(head: str) -> None:
    images = torch.rand(2, 3, 64, 64)
    plain, pooled = small_model(head=head), small_model(head=head, pool=3)
    for raw, averaged in zip(plain.maps(images).prepared(), pooled.maps(images).prepared(), strict=True):
        torch.testing.assert_close(averaged, average_neighbours(raw, 3))
    pooled.update(_normal_images(6, seed=1))
    plain.update(_normal_images(6, seed=1))
    assert not torch.allclose(pooled(images).anomaly_map, plain(images).anomaly_map)


@pytest.mark.parametrize("size", [(5, 7), (4, 4)])
def test_median_reference_subtracts_each_channels_median_over_the_map(size: tuple[int, int]) -> None:
    features = torch.randn(2, 3, *size, dtype=torch.float64)
    expected = features - features.flatten(2).median(dim=-1).values[:, :, None, None]
    torch.testing.assert_close(refer_to_median(features), expected, rtol=0, atol=0)


@pytest.mark.parametrize("size", [(5, 7), (4, 4)])
def test_contrast_reference_divides_by_the_median_over_channels_of_each_channels_mean_deviation(
    size: tuple[int, int],
) -> None:
    features = torch.randn(2, 4, *size, dtype=torch.float64) * torch.rand(2, 4, 1, 1, dtype=torch.float64) * 5
    centred = features - features.flatten(2).median(dim=-1).values[:, :, None, None]
    deviations = centred.abs().flatten(2).mean(dim=-1)
    contrast = deviations.median(dim=1).values[:, None, None, None]
    torch.testing.assert_close(refer_to_contrast(features), centred / (contrast + 0.01), rtol=0, atol=0)


def test_contrast_of_maps_mostly_zero_after_a_relu_is_not_zero() -> None:
    features = 10 * F.relu(torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0)) - 0.8)
    assert (features.flatten(2) == 0).float().mean() > 0.6, "most positions must be zero for this check"
    referred = refer_to_contrast(features)
    nonzero = features != 0
    divisor = features[nonzero] / referred[nonzero]  # each map's median is zero here: nothing is subtracted
    assert divisor.min() > 10 * 0.01, "a median deviation would be zero here, leaving only the floor to divide by"


@pytest.mark.parametrize("head", ["paper", "gaussian", "local"])
@pytest.mark.parametrize(("reference", "refer"), [("median", refer_to_median), ("contrast", refer_to_contrast)])
def test_reference_comes_after_pool_before_every_head(
    head: str, reference: str, refer: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    images = torch.rand(2, 3, 64, 64)
    pooled, referred = small_model(head=head, pool=3), small_model(head=head, pool=3, reference=reference)
    for raw, taken in zip(pooled.maps(images).prepared(), referred.maps(images).prepared(), strict=True):
        torch.testing.assert_close(taken, refer(raw))


class _ScaledAndShifted(nn.Module):
    """A feature extractor whose maps are all scaled by one factor and, optionally, moved by one constant per channel.

    A whole image's shift (another batch, other lighting) or another contrast (another strip of
    cloth). A large factor makes the features of a tiny random network O(1), as a trained backbone's
    are, so that the floor added to the contrast is small beside them.
    """

    def __init__(self, extractor: nn.Module, factor: float, shift: bool) -> None:
        super().__init__()
        self.extractor = extractor
        self.feature_info = extractor.feature_info
        self.factor, self.shift = factor, shift

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(3)
        return [
            self.factor * maps + self.shift * torch.randn(1, maps.shape[1], 1, 1, generator=generator)
            for maps in self.extractor(images)
        ]


@pytest.mark.parametrize("reference", ["none", "median"])
def test_median_reference_scores_a_shifted_image_as_the_image(reference: str) -> None:
    model = small_model(head="local", reference=reference)
    model.update(_normal_images(6, seed=1))
    images = _normal_images(2, seed=2)
    plain = model(images).anomaly_map
    model.feature_extractor = _ScaledAndShifted(model.feature_extractor, factor=1.0, shift=True)
    shifted = model(images).anomaly_map
    if reference == "median":
        torch.testing.assert_close(shifted, plain, rtol=1e-4, atol=1e-4)
    else:
        assert (shifted - plain).abs().max() > 1.0


@pytest.mark.parametrize("reference", ["median", "contrast"])
def test_contrast_reference_scores_an_image_of_other_contrast_as_the_image(reference: str) -> None:
    model = small_model(head="local", reference=reference)
    extractor = model.feature_extractor
    model.feature_extractor = _ScaledAndShifted(extractor, factor=100.0, shift=False)
    model.update(_normal_images(6, seed=1))
    images = _normal_images(2, seed=2)
    plain = model(images).anomaly_map
    model.feature_extractor = _ScaledAndShifted(extractor, factor=300.0, shift=True)
    other_contrast = model(images).anomaly_map
    if reference == "contrast":
        torch.testing.assert_close(other_contrast, plain, rtol=0.01, atol=0.01)
    else:
        assert (other_contrast - plain).abs().max() > 1.0


def test_feature_maps_align() -> None:
    model = small_model()
    shallow, deep = model.extract(torch.rand(2, 3, 64, 64))
    assert shallow.shape == (2, 128, 8, 8)
    assert deep.shape == (2, 256, 8, 8)


def test_conv_inference_equals_unfolded_matrix_product() -> None:
    model = small_model()
    model.update(_normal_images(4))
    images = torch.rand(2, 3, 64, 64)
    shallow, deep = model.extract(images)
    inputs = neighbourhood_features(shallow).permute(0, 2, 3, 1).reshape(-1, 128 * 9).double()
    weight, bias = model.head.statistics.solve(model.settings["alpha"])
    predicted = (inputs @ weight + bias).reshape(2, 8, 8, 256).permute(0, 3, 1, 2)
    expected = torch.log((predicted - deep.double()).pow(2).sum(1, keepdim=True) + 1e-12)
    torch.testing.assert_close(model.patch_scores(images).double(), expected, rtol=1e-4, atol=1e-4)


def test_low_rank_head_equals_the_factored_matrix_product() -> None:
    model = small_model(rank=24)
    model.update(_normal_images(4))
    images = torch.rand(2, 3, 64, 64)
    shallow, deep = model.extract(images)
    inputs = neighbourhood_features(shallow).permute(0, 2, 3, 1).reshape(-1, 128 * 9).double()
    reduced, basis, bias = model.head.statistics.solve_reduced_rank(model.settings["alpha"], 24)
    predicted = (inputs @ reduced @ basis.T + bias).reshape(2, 8, 8, 256).permute(0, 3, 1, 2)
    expected = torch.log((predicted - deep.double()).pow(2).sum(1, keepdim=True) + 1e-12)
    torch.testing.assert_close(model.patch_scores(images).double(), expected, rtol=1e-4, atol=1e-4)


def test_low_rank_head_stores_two_small_kernels() -> None:
    state = small_model(rank=24).state_dict()
    assert state["head.weight"].shape == (24, 128, 3, 3)
    assert state["head.projection"].shape == (256, 24, 1, 1)
    assert "head.projection" not in small_model().state_dict()


def test_output_contract() -> None:
    model = small_model()
    model.update(_normal_images(4))
    output = model(torch.rand(3, 3, 72, 56))
    assert output.anomaly_map.shape == (3, 1, 72, 56)
    assert output.pred_score.shape == (3,)
    torch.testing.assert_close(output.pred_score, output.anomaly_map.amax(dim=(1, 2, 3)))


@pytest.mark.parametrize("rank", [None, 16])
def test_large_defect_scores_higher_than_clean_regions(rank: int | None) -> None:
    model = small_model(rank=rank)
    model.update(_normal_images(12, size=128))
    image = _normal_images(1, size=128, seed=99)
    image[:, :, 32:80, 32:80] = torch.tensor([1.0, 0.0, 1.0])[:, None, None]  # a magenta patch
    anomaly_map = model(image).anomaly_map[0, 0]
    inside = anomaly_map[40:72, 40:72].mean()
    outside = torch.cat([anomaly_map[:, 104:].flatten(), anomaly_map[104:, :].flatten()]).mean()
    assert inside > outside + 1.0


def test_update_equals_full_refit() -> None:
    first, second = _normal_images(6, seed=1), _normal_images(5, seed=2)
    incremental = small_model()
    incremental.update(first)
    incremental.update(second)
    full = small_model()
    full.update(torch.cat([first, second]))
    torch.testing.assert_close(incremental.head.weight, full.head.weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(incremental.head.bias, full.head.bias, rtol=1e-6, atol=1e-6)


def test_float32_fit_scores_like_the_float64_fit_and_updates_in_float32() -> None:
    first, second = _normal_images(6, seed=1), _normal_images(5, seed=2)
    exact, fast = small_model(), small_model(fit_precision="float32")
    for model in (exact, fast):
        model.update(first)
        model.update(second)
    assert fast.head.statistics.xtx.dtype == torch.float64
    assert not torch.equal(fast.head.weight, exact.head.weight)
    # 704 rows for 1,152 inputs: alpha fixes much of this map, which magnifies float32 rounding.
    torch.testing.assert_close(
        fast.head.weight, exact.head.weight, rtol=0, atol=1e-3 * float(exact.head.weight.abs().max())
    )
    test = _normal_images(3, seed=4)
    exact.eval(), fast.eval()
    torch.testing.assert_close(fast(test).anomaly_map, exact(test).anomaly_map, rtol=1e-4, atol=1e-4)


def test_update_takes_images_of_different_sizes() -> None:
    images = [_normal_images(1, size=64)[0], _normal_images(1, size=96, seed=5)[0]]
    model = small_model()
    model.update(images)
    reference = small_model()
    for image in images:
        reference.accumulate(image[None])
    reference.fit()
    torch.testing.assert_close(model.head.weight, reference.head.weight)
    assert model(torch.rand(1, 3, 80, 48)).anomaly_map.shape == (1, 1, 80, 48)


@pytest.mark.parametrize("head", ["paper", "local"])
def test_dropped_statistics_block_updates(head: str) -> None:
    model = small_model(keep_statistics=False, head=head)
    model.update(_normal_images(3))
    assert model.head.statistics_dropped
    with pytest.raises(RuntimeError, match="statistics were dropped"):
        model.update(_normal_images(1))


@pytest.mark.parametrize("head", ["paper", "gaussian", "local"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_are_refused_before_any_sum(head: str, bad: float) -> None:
    model = small_model(head=head)
    images = _normal_images(2)
    images[1, 0, 5, 7] = bad
    with pytest.raises(ValueError, match="Non-finite"):
        model.accumulate(images)
    assert not model.has_pending


def test_grayscale_batch_is_scored_like_its_rgb_copy() -> None:
    model = small_model()
    model.update(_normal_images(3))
    gray = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(model(gray).anomaly_map, model(gray.expand(-1, 3, -1, -1)).anomaly_map)


def test_wrong_channel_count_is_refused() -> None:
    model = small_model()
    model.update(_normal_images(2))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 4, 64, 64))


def test_unfitted_model_refuses_to_score() -> None:
    with pytest.raises(RuntimeError, match="not been fitted"):
        small_model()(torch.rand(1, 3, 64, 64))


def test_empty_update_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        small_model().update([])


def test_backbone_stays_in_eval_mode_while_training() -> None:
    model = small_model().train()
    assert model.training
    assert not model.feature_extractor.training


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 0.0}, "alpha must be > 0"),
        ({"alpha": -2.0}, "alpha must be > 0"),
        ({"sigma": -1.0}, "sigma must be >= 0"),
        ({"layers": ("layer2",)}, "exactly two layers"),
        ({"layers": ("layer3", "layer2")}, "shallower"),
        ({"rank": 0}, r"rank must be between 1 and 255 \(below the 256 channels of 'layer3'\)"),
        ({"rank": 256}, r"rank must be between 1 and 255"),
        ({"layers": ("layer2", "layer9")}, r"no layer \['layer9'\].*'layer1', 'layer2', 'layer3', 'layer4'"),
        ({"alpha": float("nan")}, "alpha must be > 0 and finite"),
        ({"alpha": float("inf")}, "alpha must be > 0 and finite"),
        ({"sigma": float("nan")}, "sigma must be >= 0 and finite"),
        ({"sigma": float("inf")}, "sigma must be >= 0 and finite"),
        ({"layers": ("layer2", "layer2")}, "two different layers.*'layer2' twice"),
        ({"rank": 2.5}, r"rank must be between 1 and 255.*got 2.5"),
        ({"pool": 2}, r"pool must be an odd whole number .* got 2"),
        ({"pool": 0}, r"pool must be an odd whole number .* got 0"),
        ({"pool": True}, r"pool must be an odd whole number .* got True"),
        ({"reference": "mean"}, r"reference must be one of \('none', 'median', 'contrast'\), got 'mean'"),
        ({"fit_precision": "bfloat16"}, r"fit_precision must be one of \('float64', 'float32'\), got 'bfloat16'"),
    ],
)
def test_bad_settings_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_model(**options)


def test_smoothing_keeps_shape() -> None:
    model = small_model(sigma=4.0)
    model.update(_normal_images(3))
    assert model(torch.rand(1, 3, 64, 64)).anomaly_map.shape == (1, 1, 64, 64)


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_separable_blur_equals_anomalibs_2d_gaussian(sigma: float) -> None:
    from anomalib.models.components import GaussianBlur2d

    maps = torch.rand(2, 1, 64, 48) * 10
    kernel_size = 2 * int(4.0 * sigma + 0.5) + 1
    reference = GaussianBlur2d(kernel_size=(kernel_size, kernel_size), sigma=(sigma, sigma), channels=1)(maps)
    torch.testing.assert_close(SeparableGaussianBlur(sigma)(maps), reference, atol=1e-5, rtol=1e-5)


def test_blur_kernel_is_not_saved() -> None:
    assert not any(key.startswith("blur.") for key in small_model(sigma=4.0).state_dict())


def test_two_identical_constant_images_warn_that_the_fit_is_degenerate() -> None:
    model = small_model()
    with pytest.warns(UserWarning, match=r"only \d+ are distinct, fewer than the 1152 inputs.*Most of them repeat"):
        model.update(torch.full((2, 3, 64, 64), 0.5))


def test_varied_images_fit_without_a_degeneracy_warning(recwarn: pytest.WarningsRecorder) -> None:
    small_model().update(_normal_images(12, size=96))
    assert not [warning for warning in recwarn if "distinct" in str(warning.message)]


def test_accumulated_images_count_only_once_fitted() -> None:
    model = small_model()
    model.accumulate(_normal_images(2))
    assert model.head.statistics.is_empty
    model.fit()
    assert float(model.head.statistics.count) == 2 * 64
    assert not model.has_pending


@pytest.mark.parametrize(
    ("sigma", "grid", "size"), [(1.0, (8, 6), (64, 48)), (4.0, (16, 16), (256, 256)), (4.0, (7, 9), (50, 70))]
)
def test_resized_blur_equals_anomalibs_2d_gaussian_after_interpolate(sigma: float, grid: tuple, size: tuple) -> None:
    from anomalib.models.components import GaussianBlur2d

    maps = torch.rand(2, 1, *grid) * 10
    kernel_size = 2 * int(4.0 * sigma + 0.5) + 1
    blur = GaussianBlur2d(kernel_size=(kernel_size, kernel_size), sigma=(sigma, sigma), channels=1)
    reference = blur(F.interpolate(maps, size=size, mode="bilinear", align_corners=False))
    torch.testing.assert_close(SeparableGaussianBlur(sigma)(maps, size), reference, atol=1e-5, rtol=1e-5)
