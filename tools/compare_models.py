"""Compare FeatureRidge with anomalib's Patchcore and Padim under one backbone, resolution and evaluator.

Every model gets the same backbone (and local weights, if given), the same 256 x 256 ImageNet
pre-processing and the same evaluator (image AUROC, pixel AUROC, pixel AUPRO at FPR 0.3). Rows
are appended to the CSV as soon as each run ends, so an interrupted comparison keeps what it
measured.

Example (the figures in the model README):
    python tools/compare_models.py --root ../shared/data --categories magnetic_tile hazelnut_toy \
        --backbone tf_efficientnet_lite2 --layers blocks.2 blocks.4 \
        --weights ../shared/weights/tf_efficientnet_lite2.pth --models FeatureRidge Patchcore \
        --output results/compare.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.models import get_model, list_models
from anomalib.models.components import AnomalibModule

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.backbone import load_backbone_weights

METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def build_model(name: str, backbone: str, layers: list[str], weights: Path | None) -> AnomalibModule:
    """Instantiate ``name`` with the shared backbone settings and the common evaluator."""
    if name.lower() not in {model.lower() for model in list_models("pascal")}:
        msg = f"Model {name!r} is not registered with anomalib. Registered: {sorted(list_models('pascal'))}"
        raise SystemExit(msg)
    common = {
        "backbone": backbone,
        "layers": layers,
        "visualizer": False,
        "evaluator": FeatureRidge.configure_evaluator(),
    }
    if name.lower() == "featureridge":
        return get_model(name, pre_trained=weights is None, backbone_weights=weights, **common)
    model = get_model(name, pre_trained=weights is None, **common)
    if weights is not None:
        # anomalib's models take no weights file: load it strictly into their timm feature extractor.
        load_backbone_weights(model.model.feature_extractor.feature_extractor, backbone, weights)
    return model


def run_one(model: AnomalibModule, root: Path, category: str, workdir: Path, batch_size: int) -> dict[str, float]:
    """Fit and test one model on one category; return metrics and wall times."""
    datamodule = MVTecAD(
        root=root,
        category=category,
        train_batch_size=batch_size,
        eval_batch_size=batch_size,
        num_workers=2,
    )
    engine = Engine(default_root_dir=workdir, logger=False)
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    results = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    test_s = time.perf_counter() - start
    return {
        **{metric: round(float(results[metric]), 4) for metric in METRICS},
        "fit_s": round(fit_s, 1),
        "test_s": round(test_s, 1),
    }


def main() -> None:
    """Parse arguments, run every model on every category, append each row to the CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="MVTec-layout dataset root")
    parser.add_argument("--categories", nargs="+", required=True)
    parser.add_argument("--models", nargs="+", default=["FeatureRidge", "Patchcore"])
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--layers", nargs=2, default=["layer2", "layer3"])
    parser.add_argument("--weights", type=Path, default=None, help="local timm state dict for the backbone")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=Path("results/compare.csv"))
    args = parser.parse_args()

    missing = [category for category in args.categories if not (args.root / category).is_dir()]
    if missing:
        found = sorted(path.name for path in args.root.iterdir() if path.is_dir())
        sys.exit(f"No category {missing} under {args.root}; found {found}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fields = ["model", "category", "backbone", *METRICS, "fit_s", "test_s"]
    new_file = not args.output.exists()
    with args.output.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new_file:
            writer.writeheader()
        for category in args.categories:
            for name in args.models:
                print(f"[compare] {name} on {category} ...", flush=True)
                model = build_model(name, args.backbone, list(args.layers), args.weights)
                row = run_one(model, args.root, category, args.output.parent / "runs", args.batch_size)
                writer.writerow({"model": name, "category": category, "backbone": args.backbone, **row})
                handle.flush()
                print(f"[compare] {name} on {category}: {row}", flush=True)


if __name__ == "__main__":
    main()
