"""FeatureRidge's fit cost against the backbone's: feature extraction vs accumulation, interleaved.

The fit is one pass that sums the Ridge statistics of every training image; this tool times, on
the same batch and in alternation (so machine noise hits all alike), the backbone alone
(``extract``), the backbone plus the shift-structured accumulation the model uses
(``accumulate``) and, with ``--dense``, the backbone plus the dense float64 product of the
unfolded 3x3 rows it replaced. It reports ms per image, the fit's extra cost as a multiple of the
backbone's, and how far the solved map is from the dense float64 one (relative max difference).
Weights are random unless ``--weights`` is given: the cost does not depend on them.

Example (the figures in docs/benchmarks.md):
    python tools/benchmark_fit.py --backbone wide_resnet50_2 --layers layer2 layer3 --dense
    python tools/benchmark_fit.py --backbone tf_efficientnet_lite2 --layers blocks.2 blocks.4 --dense
"""

from __future__ import annotations

import argparse

import torch

from anomalib_featureridge.benchmark.harness import interleaved_medians
from anomalib_featureridge.models.feature_ridge import FeatureRidgeModel
from anomalib_featureridge.models.feature_ridge.ridge import RidgeStatistics
from anomalib_featureridge.models.feature_ridge.torch_model import neighbourhood_features


def dense_accumulate(model: FeatureRidgeModel, images: torch.Tensor, statistics: RidgeStatistics) -> None:
    """The reference fit step: unfold every 3x3 neighbourhood and add its float64 rows one product at a time."""
    shallow, deep = model.extract(images)
    inputs = neighbourhood_features(shallow).permute(0, 2, 3, 1).reshape(-1, shallow.shape[1] * 9)
    statistics.update(inputs, deep.permute(0, 2, 3, 1).reshape(-1, deep.shape[1]))


def relative_difference(model: FeatureRidgeModel, batches: list[torch.Tensor]) -> float:
    """Max |W - W_dense| / max |W_dense| of the maps fitted on ``batches`` both ways."""
    reference = RidgeStatistics()
    model.discard_pending()
    for images in batches:
        dense_accumulate(model, images, reference)
        model.accumulate(images)
    weight, _ = reference.solve(model.alpha)
    fast, _ = model.statistics.combined_with(model.pending.moments()).solve(model.alpha)
    model.discard_pending()
    return float((fast - weight).abs().max() / weight.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--layers", nargs=2, default=["layer2", "layer3"])
    parser.add_argument("--weights", default=None, help="local timm state dict (default: random weights)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense", action="store_true", help="also time the dense float64 rows it replaced")
    parser.add_argument("--check-batches", type=int, default=3, help="batches for the exactness check (0: skip)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = FeatureRidgeModel(args.backbone, args.layers, pre_trained=False, backbone_weights=args.weights).eval()
    images = torch.rand(args.batch, 3, args.image_size, args.image_size)
    reference = RidgeStatistics()
    runs = {"extract": lambda: model.backbone_maps(images), "accumulate": lambda: model.accumulate(images)}
    if args.dense:
        runs["dense"] = lambda: dense_accumulate(model, images, reference)
    medians = interleaved_medians(runs, warmup=1, repeats=args.repeats, device=torch.device("cpu"))
    extract = medians["extract"]
    print(f"{args.backbone} {args.layers} {args.image_size} px, batch {args.batch}, {torch.get_num_threads()} threads")
    for name, seconds in medians.items():
        extra = "" if name == "extract" else f"  fit cost over extraction {(seconds - extract) / extract:.2f}x"
        print(f"{name:>10}: {1000 * seconds / args.batch:8.1f} ms/img{extra}")
    if args.check_batches:
        generator = torch.Generator().manual_seed(1)
        batches = [torch.rand(images.shape, generator=generator) for _ in range(args.check_batches)]
        print(f"map vs dense float64: relative max difference {relative_difference(model, batches):.2e}")


if __name__ == "__main__":
    main()
