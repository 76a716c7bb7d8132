"""FeatureRidge's fit at scale: time per image and peak memory for growing training sets, 1 vs N processes.

Why it is a module of its own: the ``benchmark`` sweep fits on the data sets it is given, while
the question here is how the fit grows with the training set and what a distributed fit
(Lightning ``ddp_spawn``, gloo) costs and changes. That needs generated sets of chosen sizes
(:mod:`anomalib_featureridge.data`, made once per size), each fit in a fresh process so its memory
peak is its own (:func:`~anomalib_featureridge.benchmark.harness.run_isolated`), and the
statistics of every process count compared with the one-process ones. Validation is skipped
(``limit_val_batches=0``): this measures the fit. ``tools/benchmark_fit_scale.py`` is its
command line.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Any

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


def fit_row(root: Path, devices: int, args: argparse.Namespace, statistics_file: Path) -> dict[str, float]:
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
    torch.save(model.model.head.statistics.state_dict(), statistics_file)
    peak_kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    return {"seconds": seconds, "peak_mib": peak_kib / 1024, "count": float(model.model.head.statistics.count)}


def statistics_difference(reference_file: Path, other_file: Path) -> float:
    """Largest relative difference between two saved sets of Ridge statistics, over every tensor."""
    reference, other = torch.load(reference_file), torch.load(other_file)
    return max(
        float((other[name] - value).abs().max() / value.abs().max().clamp_min(1e-300))
        for name, value in reference.items()
    )


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Fit every (size, process count) asked for, printing each row as it is done; return the rows.

    Each row holds ``images``, ``devices``, the fit's ``seconds``, ``peak_mib`` and the statistics'
    ``count``; rows with more than one process also hold ``max_rel_diff`` (their statistics against
    the one-process ones) and ``time_ratio`` (their time over the one-process time).
    """
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{args.backbone} {args.layers}, {args.image_size} px images resized to {args.model_size} px")
    measured = []
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
            reference = args.workdir / f"statistics_{images}_1.pt"
            for devices in (d for d in rows if d != 1):
                worst = statistics_difference(reference, args.workdir / f"statistics_{images}_{devices}.pt")
                ratio = rows[devices]["seconds"] / rows[1]["seconds"]
                rows[devices] |= {"max_rel_diff": worst, "time_ratio": ratio}
                print(f"{images:>6} images: {devices} vs 1 process: stats max rel diff {worst:.1e}, time {ratio:.2f}x")
        measured += [{"images": images, "devices": devices} | row for devices, row in rows.items()]
    return measured
