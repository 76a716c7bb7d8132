"""Per-image CPU latency and file size of exported models: torch eager vs ONNX Runtime vs OpenVINO.

Each model is fitted once on the category's training images, exported to ONNX and OpenVINO, then
the three runtimes are timed in interleaved rounds on the same pre-loaded images (the full
exported graph: pre-processing, model, post-processing), so machine noise hits all of them alike.
The batch is 1 image, or the fixed batch size an export insists on (anomalib's Patchcore ONNX
graph comes out with a static batch of 2); latency is per image. Figures are medians, and ratios
are against the first model in torch eager from the same run. OpenVINO compiles in f32 (the
package's rule, deploy/precision.py); ``--openvino-precisions f32 bf16`` times bf16 beside it.
The measurement is ``anomalib_featureridge.benchmark.export_latency``.

Example (the figures in docs/deployment.md):
    python tools/benchmark_export.py --root ../shared/data --category hazelnut_toy \
        --backbone tf_efficientnet_lite2 --layers blocks.2 blocks.4 \
        --weights ../shared/weights/tf_efficientnet_lite2.pth --models FeatureRidge Patchcore
    python tools/benchmark_export.py --root ../shared/data --category hazelnut_toy \
        --backbone tf_efficientnet_lite2 --layers blocks.2 blocks.4 \
        --weights ../shared/weights/tf_efficientnet_lite2.pth --models FeatureRidge --openvino-precisions f32 bf16
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anomalib_featureridge.benchmark.export_latency import report
from anomalib_featureridge.deploy.precision import EXACT, PRECISIONS


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--models", nargs="+", default=["FeatureRidge", "Patchcore"])
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--layers", nargs=2, default=["layer2", "layer3"])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--openvino-precisions",
        nargs="+",
        choices=PRECISIONS,
        default=[EXACT],
        help="OpenVINO inference precisions to time side by side (default: f32, the exact one)",
    )
    parser.add_argument("--patchcore-coreset-ratio", type=float, default=0.1, help="anomalib's default is 0.1")
    print(report(parser.parse_args()), end="", flush=True)


if __name__ == "__main__":
    main()
