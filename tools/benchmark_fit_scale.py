"""FeatureRidge's fit at scale: time per image and peak memory for growing training sets, 1 vs 2 processes.

Generates an MVTec-layout set of small images (``anomalib_featureridge.data``, once per size,
under ``--workdir``) and fits FeatureRidge through anomalib's Engine on it, each row in a fresh
process so its memory peak is its own: one process, then, with ``--devices 2``, two CPU processes
(Lightning ``ddp_spawn``, gloo). It reports the fit time per image, the peak resident memory
(of the row's processes: the parent and, for ``ddp_spawn``, the largest child), whether the
two-process statistics equal the one-process ones, and the two-process / one-process time ratio.
Validation is skipped (``limit_val_batches=0``): this measures the fit.

Example (the figures in docs/benchmarks.md):
    OMP_NUM_THREADS=1 python tools/benchmark_fit_scale.py --images 1000 5000 --devices 1 2
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from anomalib_featureridge.benchmark.harness import run_isolated


def dataset(workdir: Path, images: int, size: int) -> Path:
    """The generated training set of ``images`` images (made once; a few test images for the datamodule)."""
    from anomalib_featureridge.data import SyntheticSpec, make_synthetic_dataset

    root = workdir / f"data{images}"
    if not (root / "synthetic" / "train" / "good" / f"{images - 1:03d}.png").exists():
        make_synthetic_dataset(
            root, spec=SyntheticSpec(image_size=size, n_train=images, n_test_good=2, n_test_per_defect=1)
        )
    return root


def fit_row(root: Path, devices: int, args: argparse.Namespace, statistics_file: Path) -> dict:
    """Fit once on ``devices`` processes; save the statistics; return time and memory."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from anomalib_featureridge import FeatureRidge

    torch.manual_seed(0)
    model = FeatureRidge(
        backbone=args.backbone,
        layers=args.layers,
        pre_trained=False,
        visualizer=False,
        pre_processor=FeatureRidge.configure_pre_processor(image_size=(args.model_size, args.model_size)),
    )
    engine = Engine(
        default_root_dir=root.parent / f"run{devices}",
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        limit_val_batches=0,
    )
    datamodule = MVTecAD(root=root, category="synthetic", train_batch_size=32, eval_batch_size=32, num_workers=0)
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    torch.save(model.model.statistics.state_dict(), statistics_file)
    peak_kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    return {"seconds": seconds, "peak_mib": peak_kib / 1024, "count": float(model.model.statistics.count)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--image-size", type=int, default=64, help="size of the generated images")
    parser.add_argument("--model-size", type=int, default=64, help="the pre-processor's resize")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--layers", nargs=2, default=["layer2", "layer3"])
    parser.add_argument("--workdir", type=Path, default=Path("results/fit_scale"))
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{args.backbone} {args.layers}, {args.image_size} px images resized to {args.model_size} px")
    for images in args.images:
        root = dataset(args.workdir, images, args.image_size)
        rows = {}
        for devices in args.devices:
            statistics_file = args.workdir / f"statistics_{images}_{devices}.pt"
            rows[devices] = row = run_isolated(fit_row, root, devices, args, statistics_file)
            print(
                f"{images:>6} images, {devices} process(es): {1000 * row['seconds'] / images:6.2f} ms/img, "
                f"peak {row['peak_mib']:7.0f} MiB, count {row['count']:.0f}",
                flush=True,
            )
        if 1 in rows and len(rows) > 1:
            reference = torch.load(args.workdir / f"statistics_{images}_1.pt")
            for devices in (d for d in rows if d != 1):
                other = torch.load(args.workdir / f"statistics_{images}_{devices}.pt")
                worst = max(
                    float((other[name] - value).abs().max() / value.abs().max().clamp_min(1e-300))
                    for name, value in reference.items()
                )
                ratio = rows[devices]["seconds"] / rows[1]["seconds"]
                print(f"{images:>6} images: {devices} vs 1 process: stats max rel diff {worst:.1e}, time {ratio:.2f}x")


if __name__ == "__main__":
    main()
