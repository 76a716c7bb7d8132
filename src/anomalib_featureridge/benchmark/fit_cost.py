"""FeatureRidge's fit cost against the backbone's, with each way of summing the statistics timed side by side.

The fit is one pass that sums the Ridge statistics of every training image. On the same batch and in
alternation (so machine noise hits all alike) this times the backbone alone (``extract``), the backbone
plus the shift-structured accumulation with float64 products (``accumulate``, the default) and with
float32 products (``accumulate_float32``, ``fit_precision="float32"``), and optionally the dense float64
product of unfolded 3x3 rows that the structured sums replaced (``dense``). It also says how far each
solved map is from the dense float64 one. The cost does not depend on the weights, so random ones do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from anomalib_featureridge.models.feature_ridge import FeatureRidgeModel
from anomalib_featureridge.models.feature_ridge.maps import neighbourhood_features
from anomalib_featureridge.models.feature_ridge.ridge import RidgeStatistics

from .harness import interleaved_medians


@dataclass(frozen=True)
class FitCost:
    """Seconds per image of each timed run, and each fast map's relative max difference from the dense one."""

    seconds_per_image: dict[str, float]
    map_difference: dict[str, float]

    def extra_over_backbone(self, run: str) -> float:
        """The fit's cost beyond feature extraction, as a multiple of the backbone's."""
        extract = self.seconds_per_image["extract"]
        return (self.seconds_per_image[run] - extract) / extract


def dense_accumulate(model: FeatureRidgeModel, images: torch.Tensor, statistics: RidgeStatistics) -> None:
    """The reference fit step: unfold every 3x3 neighbourhood and add its float64 rows one product at a time."""
    shallow, deep = model.extract(images)
    inputs = neighbourhood_features(shallow).permute(0, 2, 3, 1).reshape(-1, shallow.shape[1] * 9)
    statistics.update(inputs, deep.permute(0, 2, 3, 1).reshape(-1, deep.shape[1]))


def map_difference(model: FeatureRidgeModel, batches: list[torch.Tensor]) -> float:
    """Max |W - W_dense| / max |W_dense| of the maps fitted on ``batches`` by ``model`` and by the dense rows.

    ``model`` (a paper head's) is fitted on ``batches`` here: it is a measuring model, not kept.
    """
    reference = RidgeStatistics()
    model.discard_pending()
    for images in batches:
        dense_accumulate(model, images, reference)
        model.accumulate(images)
    model.fit()
    alpha = model.settings["alpha"]
    weight, _ = reference.solve(alpha)
    fast, _ = model.head.statistics.solve(alpha)
    return float((fast - weight).abs().max() / weight.abs().max())


def measure_fit_cost(
    backbone: str,
    layers: list[str],
    weights: str | Path | None = None,
    image_size: int = 256,
    batch: int = 4,
    repeats: int = 5,
    dense: bool = False,
    check_batches: int = 3,
) -> FitCost:
    """Time extraction and each accumulation on one random batch; compare the maps on ``check_batches`` more."""
    torch.manual_seed(0)
    models = {
        precision: FeatureRidgeModel(
            backbone, layers, pre_trained=False, backbone_weights=weights, fit_precision=precision
        ).eval()
        for precision in ("float64", "float32")
    }
    images = torch.rand(batch, 3, image_size, image_size)
    runs: dict[str, Callable[[], object]] = {
        "extract": lambda: models["float64"].maps(images).prepared(),
        "accumulate": lambda: models["float64"].accumulate(images),
        "accumulate_float32": lambda: models["float32"].accumulate(images),
    }
    if dense:
        reference = RidgeStatistics()
        runs["dense"] = lambda: dense_accumulate(models["float64"], images, reference)
    medians = interleaved_medians(runs, warmup=1, repeats=repeats, device=torch.device("cpu"))
    differences = {}
    if check_batches:
        generator = torch.Generator().manual_seed(1)
        batches = [torch.rand(images.shape, generator=generator) for _ in range(check_batches)]
        differences = {
            "accumulate": map_difference(models["float64"], batches),
            "accumulate_float32": map_difference(models["float32"], batches),
        }
    return FitCost({name: seconds / batch for name, seconds in medians.items()}, differences)


def format_fit_cost(cost: FitCost) -> str:
    """One line per run: ms per image, the extra cost over the backbone, and the map's difference."""
    lines = []
    for name, seconds in cost.seconds_per_image.items():
        extra = "" if name == "extract" else f"  fit cost over extraction {cost.extra_over_backbone(name):.2f}x"
        difference = f"  map vs dense float64 {cost.map_difference[name]:.1e}" if name in cost.map_difference else ""
        lines.append(f"{name:>18}: {1000 * seconds:8.1f} ms/img{extra}{difference}")
    return "\n".join(lines)
