"""Reproduce the WinCLIP paper's MVTec AD table (zero-shot and 1/2/4-shot) with WinClipPlus.

Needs MVTec AD on disk and the OpenCLIP ViT-B/16+ 240 px LAION-400M weights (the open_clip tag
``laion400m_e31``, downloaded once, or the checkpoint file). Every category is scored with
anomalib's Engine; few-shot rows average over ``--seeds`` random reference draws (the paper
averages over random draws as well). The table prints the category means next to the paper's.

Example:
    python tools/reproduce_winclip_paper.py --root ./datasets/MVTecAD --shots 0 1 2 4 --seeds 0 1 2
    python tools/reproduce_winclip_paper.py --root /data/MVTecAD \
        --pretrained /weights/vit_b_16_plus_240-laion400m_e31-8fb26589.pt
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip

# Paper (Jeong et al., CVPR 2023), MVTec AD, ViT-B/16+ LAION-400M: image AUROC, pixel AUROC, PRO.
PAPER = {0: (91.8, 85.1, 64.6), 1: (93.1, 95.2, 87.1), 2: (94.4, 96.0, 88.4), 4: (95.2, 96.2, 89.0)}
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="MVTec AD folder (one sub-folder per category)")
    parser.add_argument("--backbone", default="ViT-B-16-plus-240")
    parser.add_argument("--pretrained", default="laion400m_e31", help="open_clip tag or local checkpoint file")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="reference draws per few-shot row")
    parser.add_argument("--categories", nargs="+", default=list(MVTEC_CATEGORIES))
    parser.add_argument("--output", type=Path, default=Path("results/winclip_paper"))
    parser.add_argument("--accelerator", default="auto")
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> None:
    """Fail before any work when the dataset or the weights are missing, saying what to pass."""
    from anomalib_featureridge.models.win_clip_plus.clip_loader import ClipWeightsError, ensure_weights_available

    missing = [category for category in args.categories if not (args.root / category / "test").is_dir()]
    if missing:
        msg = (
            f"MVTec AD not found under {args.root}: no <category>/test folder for {missing}. "
            f"Download MVTec AD (https://www.mvtec.com/company/research/datasets/mvtec-ad) and pass --root."
        )
        raise SystemExit(msg)
    try:
        ensure_weights_available(args.backbone, args.pretrained)
    except ClipWeightsError as error:
        raise SystemExit(f"{error} For this script: --pretrained PATH.") from error


def score_category(args: argparse.Namespace, category: str, k_shot: int, seed: int | None) -> dict[str, float]:
    """Image AUROC, pixel AUROC and PRO (in %) of one category, one shot count, one reference draw."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from anomalib_featureridge import WinClipPlus

    model = WinClipPlus(
        class_name=category.replace("_", " "),
        k_shot=k_shot,
        backbone=args.backbone,
        pretrained=args.pretrained,
        reference_seed=seed,
        visualizer=False,
    )
    datamodule = MVTecAD(root=args.root, category=category, eval_batch_size=8, num_workers=4)
    engine = Engine(default_root_dir=args.output, logger=False, accelerator=args.accelerator)
    results = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    return {name: 100 * float(results[name]) for name in METRICS}


def main(argv: list[str] | None = None) -> None:
    """Score every category for every shot count and print the means beside the paper's."""
    args = parse_args(argv)
    check_inputs(args)
    print("| setting | image AUROC (paper) | pixel AUROC (paper) | PRO (paper) |")
    print("|---|---|---|---|")
    for k_shot in args.shots:
        seeds: list[int | None] = [None] if k_shot == 0 else list(args.seeds)
        runs = [score_category(args, category, k_shot, seed) for category in args.categories for seed in seeds]
        means = [statistics.mean(run[name] for run in runs) for name in METRICS]
        paper = PAPER.get(k_shot, (float("nan"),) * 3)
        cells = " | ".join(f"{mean:.1f} ({reference:.1f})" for mean, reference in zip(means, paper, strict=True))
        print(f"| {k_shot}-shot | {cells} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
