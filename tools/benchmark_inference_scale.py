"""Inference time at MVTec AD scale, without data or weights: FeatureRidge vs Patchcore memory banks.

Patchcore's inference cost is its nearest-neighbour search, which grows with the memory bank:
``coreset ratio x training images x patches per image`` rows of the concatenated features. The
cost of a forward pass does not depend on the values of the weights or of the bank, so this tool
times the real torch modules with random backbone weights, a FeatureRidge map fitted on random
images and Patchcore banks of random rows of the sizes a real training set would give. That
answers the question ``anomalib-featureridge benchmark`` cannot answer on small datasets and small banks: how
fast FeatureRidge scores next to Patchcore with the paper's backbone and full MVTec AD training
sets, and what a low-rank Ridge map (``--ranks``) saves. The backbone alone, each FeatureRidge
head and every bank size are timed in interleaved rounds on the same batch, so machine noise hits
all of them alike.

Example (the figures in docs/benchmarks.md; MVTec AD training sets have 60 to 391 images):
    python tools/benchmark_inference_scale.py --backbone wide_resnet50_2 --layers layer2 layer3 \
        --train-images 60 240 391 --coreset-ratio 0.1 --ranks 128 256
"""

from __future__ import annotations

import argparse

from anomalib_featureridge.benchmark.inference_scale import report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--layers", nargs=2, default=["layer2", "layer3"])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--train-images", nargs="+", type=int, default=[60, 240, 391], help="training-set sizes to size banks for"
    )
    parser.add_argument("--coreset-ratio", type=float, default=0.1, help="anomalib's default is 0.1")
    parser.add_argument("--ranks", nargs="*", type=int, default=[], help="low-rank FeatureRidge heads to time too")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not 0 < args.coreset_ratio <= 1:
        parser.error(f"--coreset-ratio must be in (0, 1], got {args.coreset_ratio}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table (``anomalib_featureridge.benchmark.inference_scale``)."""
    args = parse_args(argv)
    print(report(args), end="", flush=True)


if __name__ == "__main__":
    main()
