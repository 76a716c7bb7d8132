"""The options of ``anomalib-featureridge benchmark``, with argparse only.

Kept apart from the code that runs the benchmark so that ``anomalib-featureridge --help`` and
``benchmark --help`` build the parser without importing torch or anomalib.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from anomalib_featureridge.models.feature_ridge import options as feature_ridge_options

PROG = "anomalib-featureridge benchmark"
DESCRIPTION = (
    "Benchmark FeatureRidge against anomalib's models on an MVTec-layout root or a Folder dataset: accuracy, "
    "fit and inference time, peak memory and exported size, one CSV row per model, category and training-set "
    "size (resumed on a re-run), then results.md and plots. See docs/benchmarks.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser`` (the sub-command's, or a stand-alone one)."""
    data = parser.add_argument_group("data: an MVTec-layout root with categories, or one Folder dataset")
    data.add_argument("--root", type=Path, help="MVTec-layout dataset root")
    data.add_argument(
        "--categories", nargs="+", default=[], help="categories under --root (default with --folder: its name)"
    )
    data.add_argument("--folder", type=Path, help="root of a Folder dataset (anomalib.data.Folder)")
    data.add_argument("--normal-dir", default="good", help="good training images, relative to --folder")
    data.add_argument(
        "--normal-test-dir", default=None, help="good test images; without it anomalib holds out 20 %% of --normal-dir"
    )
    data.add_argument("--abnormal-dir", nargs="+", default=None, help="defective test images, one or more folders")
    data.add_argument("--mask-dir", nargs="+", default=None, help="their masks, in the same order (optional)")
    data.add_argument("--num-workers", type=int, default=2, help="data-loader workers (default: 2)")
    parser.add_argument(
        "--models", nargs="+", default=["FeatureRidge", "Patchcore", "Padim"], help="registered anomalib model names"
    )
    parser.add_argument("--backbone", default="wide_resnet50_2", help="timm CNN shared by every CNN-feature model")
    parser.add_argument("--layers", nargs=2, default=["layer2", "layer3"], help="its two feature layers")
    parser.add_argument("--weights", type=Path, default=None, help="local timm state dict for the backbone")
    parser.add_argument("--random-init", action="store_true", help="random backbone weights (smoke runs)")
    parser.add_argument("--patchcore-coreset-ratio", type=float, default=0.1, help="anomalib's default is 0.1")
    ridge = parser.add_argument_group("FeatureRidge (each its model default when not given; docs/method.md)")
    for option in feature_ridge_options.OPTIONS:
        if option.benchmark is None:
            continue
        ridge.add_argument(
            f"--feature-ridge-{option.name.replace('_', '-')}",
            type=option.benchmark,
            nargs=2 if option.name == "channels" else None,
            choices=option.choices,
            default=None,
            metavar=("SHALLOW", "DEEP") if option.name == "channels" else None,
            help=f"{option.help} (its default: {option.default})",
        )
    metric = parser.add_argument_group("SyntheticDefectMetric (each its model default when not given)")
    metric.add_argument("--defect-kinds", nargs="+", default=None, help="synthetic defect classes besides good")
    metric.add_argument("--metric-loss", default=None, help="softmax, l2_softmax, arcface or adacos")
    metric.add_argument(
        "--metric-scorer",
        nargs="+",
        choices=["cosine", "lof"],
        default=None,
        help="cosine and/or lof: each scorer is a row, all scored from one training",
    )
    metric.add_argument("--metric-epochs", type=int, default=None, help="training epochs")
    metric.add_argument("--metric-lr", type=float, default=None, help="Adam learning rate")
    metric.add_argument("--metric-map", choices=["cam", "grad_cam"], default=None, help="anomaly map")
    metric.add_argument("--metric-map-layer", default=None, help="layer Grad-CAM weighs (default: the embedding's)")
    metric.add_argument(
        "--metric-seed", type=int, default=None, help="seed of the synthetic defects (with --seed: a seed study)"
    )
    parser.add_argument("--clip-backbone", default=None, help="open_clip model for CLIP models (their default)")
    parser.add_argument(
        "--clip-pretrained", default=None, help="open_clip tag or local checkpoint for CLIP models; 'none': random"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="training and evaluation batch size")
    parser.add_argument("--scaling", nargs="*", type=int, default=[], help="training set sizes, fit only")
    parser.add_argument("--scaling-category", default=None, help="category for --scaling (default: the first)")
    parser.add_argument("--few-shot", nargs="*", type=int, default=[], help="numbers of training images k")
    parser.add_argument("--skip-full", action="store_true", help="only the scaling and few-shot runs")
    parser.add_argument("--warmup", type=int, default=2, help="untimed inference rounds (default: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed inference rounds, median taken (default: 5)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random training subsets and of anomalib's data splits"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure every row in this process: starts faster, but memory peaks then carry earlier rows "
        "and a crash ends the run",
    )
    parser.add_argument("--output", type=Path, default=Path("results/benchmark"), help="output folder")
    parser.add_argument("--report-only", action="store_true", help="rebuild results.md and plots from the CSV")
    parser.add_argument(
        "--report",
        action="store_true",
        help="also write report.html: each model's curves, misses, false alarms and heatmaps on the test images, "
        "in one static page (docs/benchmarks.md)",
    )


REPORT_DESCRIPTION = (
    "Write report.html for a finished benchmark run from its results.csv and the per-image records beside it "
    "(images/*.npz): figures, ROC and PRO curves, score histograms with the threshold at a false-alarm rate the "
    "page lets you choose, the misses and false alarms, a gallery of every test image under every model, "
    "per-defect figures and costs. A static page: open it from disk. See docs/benchmarks.md."
)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``anomalib-featureridge report`` to ``parser``."""
    parser.add_argument("results", type=Path, help="the benchmark's --output folder (results.csv, images/)")
    parser.add_argument(
        "--false-alarm-rate",
        type=float,
        default=0.05,
        help="the rate the page opens with (changeable there, or with ?far=0.1 in its address; default: 0.05)",
    )
    parser.add_argument("--output", type=Path, default=None, help="the page (default: RESULTS/report.html)")


def model_options(args: argparse.Namespace) -> list[tuple[str, str, Any]]:
    """FeatureRidge's options as given on the command line, as ``("FeatureRidge", keyword, value)``."""
    given = []
    for option in feature_ridge_options.OPTIONS:
        if option.benchmark is not None:
            value = getattr(args, f"feature_ridge_{option.name}")
            given.append(("FeatureRidge", option.name, list(value) if isinstance(value, list) else value))
    return given


def complete(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in what follows from other options (a Folder dataset's category is its name); refuse a run without data."""
    if args.folder is not None and not args.categories:
        args.categories = [args.folder.name]
    if not args.categories and not args.report_only:
        sys.exit(f"{PROG}: give --categories (with --root) or --folder")
    return args
