"""The shift-structured neighbourhood statistics against the dense rows they replace."""

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from anomalib_featureridge.models.feature_ridge.maps import neighbourhood_features, upsample_to
from anomalib_featureridge.models.feature_ridge.neighbourhood import NeighbourhoodMoments, upsampling_matrix
from anomalib_featureridge.models.feature_ridge.ridge import RidgeStatistics


def _dense(shallow: torch.Tensor, deep: torch.Tensor) -> RidgeStatistics:
    """Today's reference: unfolded float64 rows and the upsampled deep map, summed row by row."""
    stats = RidgeStatistics()
    inputs = neighbourhood_features(shallow.double()).permute(0, 2, 3, 1).reshape(-1, shallow.shape[1] * 9)
    targets = upsample_to(deep.double(), shallow).permute(0, 2, 3, 1).reshape(-1, deep.shape[1])
    stats.update(inputs, targets)
    return stats


def _maps(batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Positive, un-centred maps like ReLU features, and a deep map on a coarser grid.
    shallow = torch.rand(batch, 5, height, width, generator=generator) * 3 + 1
    deep = torch.rand(batch, 4, (height + 1) // 2, (width + 1) // 2, generator=generator)
    return shallow, deep


@pytest.mark.parametrize(("height", "width"), [(7, 9), (1, 4), (2, 2), (5, 1), (8, 8)])
def test_equals_the_dense_rows_on_any_grid(height: int, width: int) -> None:
    shallow, deep = _maps(3, height, width)
    pending = NeighbourhoodMoments()
    pending.add(shallow, deep)
    for got, expected in zip(pending.moments(), _dense(shallow, deep).moments(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)


def test_batches_of_different_sizes_add_up() -> None:
    first, second = _maps(2, 6, 7, seed=1), _maps(1, 9, 5, seed=2)
    pending = NeighbourhoodMoments()
    pending.add(*first)
    pending.add(*second)
    reference = _dense(*first)
    reference.merge(_dense(*second))
    for got, expected in zip(pending.moments(), reference.moments(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)


def test_upsampling_matrix_is_bilinear_interpolation() -> None:
    coarse = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    rows, columns = (
        upsampling_matrix(5, 9, torch.float64, coarse.device),
        upsampling_matrix(6, 11, torch.float64, coarse.device),
    )
    expected = F.interpolate(coarse, size=(9, 11), mode="bilinear", align_corners=False)
    torch.testing.assert_close(torch.einsum("yr,xs,bcrs->bcyx", rows, columns, coarse), expected)


def test_distinct_rows_are_counted() -> None:
    shallow, deep = _maps(1, 4, 4)
    pending = NeighbourhoodMoments()
    pending.add(shallow, deep)
    pending.add(shallow, deep)
    assert len(pending.distinct) == 16
    constant = NeighbourhoodMoments()
    constant.add(torch.ones(1, 5, 6, 6), deep)
    # Interior rows are equal; the border rows differ by which taps fall into the zero padding.
    assert len(constant.distinct) == 9


def test_feature_size_change_is_refused() -> None:
    pending = NeighbourhoodMoments()
    pending.add(*_maps(1, 4, 4))
    with pytest.raises(ValueError, match="do not match"):
        pending.add(torch.rand(1, 6, 4, 4), torch.rand(1, 4, 2, 2))


def test_float32_products_stay_near_the_float64_map_and_keep_float64_sums() -> None:
    shallow, deep = _maps(4, 8, 8, seed=3)
    exact, fast = NeighbourhoodMoments(), NeighbourhoodMoments(torch.float32)
    for pending in (exact, fast):
        pending.add(shallow[:2], deep[:2])
        pending.add(shallow[2:], deep[2:])
    exact_moments, fast_moments = exact.moments(), fast.moments()
    assert all(value.dtype == torch.float64 for value in fast_moments)
    # The sums fix the centring and are taken in float64 in both modes.
    torch.testing.assert_close(fast_moments.sum_x, exact_moments.sum_x, rtol=0, atol=0)
    torch.testing.assert_close(fast_moments.sum_y, exact_moments.sum_y, rtol=0, atol=0)
    # The products carry float32 rounding: far from float64's 1e-12, far below anything a score could show.
    gram_error = (fast_moments.xtx - exact_moments.xtx).abs().max() / exact_moments.xtx.abs().max()
    assert 0 < gram_error < 1e-6
    exact_map, _ = RidgeStatistics().combined_with(exact_moments).solve(1.0)
    fast_map, _ = RidgeStatistics().combined_with(fast_moments).solve(1.0)
    assert (fast_map - exact_map).abs().max() / exact_map.abs().max() < 1e-4
    assert len(fast.distinct) == len(exact.distinct)


def test_float32_products_ignore_a_tf32_setting_and_restore_it() -> None:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        seen = []
        real_matmul = torch.Tensor.__matmul__

        def spy(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_float32_matmul_precision())
            return real_matmul(left, right)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.Tensor, "__matmul__", spy)
            NeighbourhoodMoments(torch.float32).add(*_maps(1, 4, 4))
        assert seen
        assert set(seen) == {"highest"}
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_other_product_dtypes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"float64 or torch\.float32"):
        NeighbourhoodMoments(torch.bfloat16)
