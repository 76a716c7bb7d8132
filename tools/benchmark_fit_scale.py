"""FeatureRidge's fit at scale: time per image and peak memory for growing training sets, 1 vs 2 processes.

Generates an MVTec-layout set of small images (``anomalib_featureridge.data``, once per size,
under ``--workdir``) and fits FeatureRidge through anomalib's Engine on it, each row in a fresh
process so its memory peak is its own: one process, then, with ``--devices 2``, two CPU processes
(Lightning ``ddp_spawn``, gloo). It reports the fit time per image, the peak resident memory
(of the row's processes: the parent and, for ``ddp_spawn``, the largest child), whether the
two-process statistics equal the one-process ones, and the two-process / one-process time ratio.
Validation is skipped (``limit_val_batches=0``): this measures the fit. The measurement is
``anomalib_featureridge.benchmark.fit_scale``.

Example (the figures in docs/benchmarks.md):
    OMP_NUM_THREADS=1 python tools/benchmark_fit_scale.py --images 1000 5000 --devices 1 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anomalib_featureridge.benchmark.fit_scale import run


def main() -> None:
    """Fit every size on every process count and print the rows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--image-size", type=int, default=64, help="size of the generated images")
    parser.add_argument("--model-size", type=int, default=64, help="the pre-processor's resize")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--layers", nargs=2, default=["layer2", "layer3"])
    parser.add_argument("--workdir", type=Path, default=Path("results/fit_scale"))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
