"""How three ways of choosing the threshold behave on real defects, and whether synthetic defects predict them.

Per category, FeatureRidge is fitted once on the good training images minus a held-out share
(``--holdout``); every threshold then post-processes the same scores with the real post-processor
classes, so the labels are those a checkpoint or an export would give:

* ``anomalib default``: anomalib's ``PostProcessor`` (F1-optimal threshold) calibrated on the
  real test set itself, as ``MVTecAD``'s default ``val_split_mode="same_as_test"`` does.
* ``normal quantile @ r``: ``NormalQuantilePostProcessor(false_alarm_rate=r)`` calibrated on the
  held-out good images only.
* ``F1 on synthetic``: anomalib's ``PostProcessor`` calibrated on the held-out good images plus one
  synthetic defect made from each of them (``make_synthetic_split``).

Reported on the real test set: the false-alarm rate (good images flagged) and the recall (defective
images flagged); for the normal quantile also the pixel false-alarm rate on good test images. Image
AUROC on the synthetic set (held-out good against synthetic defects, also per kind) is set beside the
image AUROC on the real test set.
The study is ``anomalib_featureridge.benchmark.threshold_study``.

Example (the figures in docs/thresholds.md):
    python tools/evaluate_thresholds.py --root ../shared/data --categories hazelnut_toy magnetic_tile \
        --weights ../shared/weights/tf_efficientnet_lite2.pth --output results/thresholds
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anomalib_featureridge.benchmark.threshold_study import run
from anomalib_featureridge.data.defects import DEFECT_KINDS


def main() -> None:
    """Parse arguments, evaluate every category, print and write both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="MVTec-layout dataset root")
    parser.add_argument("--categories", nargs="+", required=True)
    parser.add_argument("--backbone", default="tf_efficientnet_lite2")
    parser.add_argument("--layers", nargs=2, default=["blocks.2", "blocks.4"])
    parser.add_argument("--weights", type=Path, default=None, help="local timm state dict for the backbone")
    parser.add_argument("--holdout", type=float, default=0.25, help="share of train/good held out (default 0.25)")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.05], help="requested false-alarm rates")
    parser.add_argument("--kinds", nargs="+", default=list(DEFECT_KINDS), choices=DEFECT_KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", type=Path, default=Path("results/thresholds"))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
