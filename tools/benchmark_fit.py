"""FeatureRidge's fit cost against the backbone's (``anomalib_featureridge.benchmark.fit_cost``).

Example (the figures in docs/benchmarks.md):
    python tools/benchmark_fit.py --backbone wide_resnet50_2 --layers layer2 layer3 --dense
    python tools/benchmark_fit.py --backbone tf_efficientnet_lite2 --layers blocks.2 blocks.4 --dense
"""

from __future__ import annotations

import argparse

import torch

from anomalib_featureridge.benchmark.fit_cost import format_fit_cost, measure_fit_cost


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
    cost = measure_fit_cost(
        args.backbone,
        args.layers,
        args.weights,
        args.image_size,
        args.batch,
        args.repeats,
        args.dense,
        check_batches=args.check_batches,
    )
    print(f"{args.backbone} {args.layers} {args.image_size} px, batch {args.batch}, {torch.get_num_threads()} threads")
    print(format_fit_cost(cost))


if __name__ == "__main__":
    main()
