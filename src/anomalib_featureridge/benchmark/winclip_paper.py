"""The WinCLIP paper's MVTec AD table (zero-shot and few-shot) reproduced with WinClipPlus.

Why it is a module of its own: a reproduction is judged against the paper's own figures
(:data:`PAPER`), on every MVTec AD category, with few-shot rows averaged over several random
reference draws as the paper averages them; and a run of hours should stop at once, saying what
to pass, when the data set or the CLIP weights are missing (:func:`check_inputs`). Every category
is scored with anomalib's Engine. ``tools/reproduce_winclip_paper.py`` is its command line.
anomalib is imported only once the inputs are checked, so that a missing input fails fast.
"""

from __future__ import annotations

import argparse
import statistics

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip

# Paper (Jeong et al., CVPR 2023), MVTec AD, ViT-B/16+ LAION-400M: image AUROC, pixel AUROC, PRO.
PAPER = {0: (91.8, 85.1, 64.6), 1: (93.1, 95.2, 87.1), 2: (94.4, 96.0, 88.4), 4: (95.2, 96.2, 89.0)}
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


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


def reproduce(args: argparse.Namespace) -> dict[int, list[float]]:
    """Check the inputs, score every category for every shot count, print the means beside the paper's.

    Returns the category means (image AUROC, pixel AUROC, PRO, in %) by shot count.
    """
    check_inputs(args)
    print("| setting | image AUROC (paper) | pixel AUROC (paper) | PRO (paper) |")
    print("|---|---|---|---|")
    means_by_shot = {}
    for k_shot in args.shots:
        seeds: list[int | None] = [None] if k_shot == 0 else list(args.seeds)
        runs = [score_category(args, category, k_shot, seed) for category in args.categories for seed in seeds]
        means_by_shot[k_shot] = means = [statistics.mean(run[name] for run in runs) for name in METRICS]
        paper = PAPER.get(k_shot, (float("nan"),) * 3)
        cells = " | ".join(f"{mean:.1f} ({reference:.1f})" for mean, reference in zip(means, paper, strict=True))
        print(f"| {k_shot}-shot | {cells} |", flush=True)
    return means_by_shot
