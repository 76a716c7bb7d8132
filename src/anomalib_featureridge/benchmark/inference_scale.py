"""Inference time at MVTec AD scale without data or weights: FeatureRidge heads vs Patchcore memory banks.

Why it is a module of its own: the ``benchmark`` sweep measures real fits, whose Patchcore banks
are as small as the data sets it is given; how fast FeatureRidge scores next to Patchcore with the
paper's backbone and full training sets needs banks of the sizes those sets would give. The cost
of a forward pass does not depend on the values of the weights or of the bank, so the real torch
modules are timed with random backbone weights, a FeatureRidge map fitted on random images and
Patchcore banks of random rows, all in alternation on the same batch
(:func:`~anomalib_featureridge.benchmark.harness.interleaved_medians`).
``tools/benchmark_inference_scale.py`` is its command line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial

import torch
from anomalib.models.image.patchcore.torch_model import PatchcoreModel

from anomalib_featureridge.benchmark.harness import interleaved_medians
from anomalib_featureridge.components.feature_extractor import create_feature_extractor
from anomalib_featureridge.models.feature_ridge import FeatureRidgeModel


@dataclass(frozen=True)
class Timing:
    """One timed module: its name, the Patchcore bank size (0 for the others) and ms per image."""

    name: str
    bank_rows: int
    ms_per_image: float


def patchcore_with_bank(backbone: str, layers: list[str], rows: int, image_size: int) -> PatchcoreModel:
    """Anomalib's Patchcore module with a random memory bank of ``rows`` patch features."""
    model = PatchcoreModel(backbone=backbone, layers=layers, pre_trained=False)
    with torch.no_grad():
        features = model(torch.zeros(1, 3, image_size, image_size))  # training mode: the patch embedding
    model.memory_bank = torch.randn(rows, features.shape[1])
    model.embedding_store.clear()
    return model.eval()


def ridge_name(rank: int | None) -> str:
    """The table's name for a FeatureRidge head: full, or of a given rank."""
    return "FeatureRidge" if rank is None else f"FeatureRidge rank {rank}"


def measure(args: argparse.Namespace) -> list[Timing]:
    """Build the modules, time them interleaved on one random batch, return ms per image of each."""
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    floor = create_feature_extractor(args.backbone, args.layers, pre_trained=False).eval()
    runs = {"backbone": partial(floor, images)}
    for rank in [None, *args.ranks]:
        feature_ridge = FeatureRidgeModel(backbone=args.backbone, layers=args.layers, pre_trained=False, rank=rank)
        feature_ridge.update(images)
        runs[ridge_name(rank)] = partial(feature_ridge.eval(), images)
    # What one training image adds to a Patchcore bank before the coreset: the shallow layer's grid positions.
    patches_per_image = (args.image_size // floor.feature_info.reduction()[0]) ** 2
    bank_rows = {
        f"Patchcore, {n} training images": max(1, round(args.coreset_ratio * n * patches_per_image))
        for n in args.train_images
    }
    for name, rows in bank_rows.items():
        runs[name] = partial(patchcore_with_bank(args.backbone, args.layers, rows, args.image_size), images)
    seconds = interleaved_medians(runs, args.warmup, args.repeats, torch.device("cpu"))
    return [Timing(name, bank_rows.get(name, 0), 1000 * value / args.batch) for name, value in seconds.items()]


def markdown(timings: list[Timing], args: argparse.Namespace) -> str:
    """The table: ms per image, over the backbone, and each FeatureRidge head over every module."""
    floor = next(t.ms_per_image for t in timings if t.name == "backbone")
    ridges = [t for t in timings if t.name.startswith("FeatureRidge")]
    lines = [
        f"{args.backbone} {args.layers[0]} -> {args.layers[1]}, {args.image_size} px, batch {args.batch}, "
        f"coreset ratio {args.coreset_ratio}, {args.repeats} interleaved rounds, threads {torch.get_num_threads()}",
        "",
        "| module | memory bank rows | ms/image | over the backbone | "
        + " | ".join(f"{ridge.name} / this" for ridge in ridges)
        + " |",
        "|---|---|---|---|" + "---|" * len(ridges),
    ]
    for timing in timings:
        bank = f"{timing.bank_rows:,}" if timing.bank_rows else ""
        ratios = " | ".join(f"{ridge.ms_per_image / timing.ms_per_image:.2f}x" for ridge in ridges)
        lines.append(
            f"| {timing.name} | {bank} | {timing.ms_per_image:.1f} | {timing.ms_per_image / floor:.2f}x | {ratios} |"
        )
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace) -> str:
    """Measure every module the options ask for; the Markdown table of their times."""
    return markdown(measure(args), args)
