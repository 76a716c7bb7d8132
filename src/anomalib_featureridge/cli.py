"""anomalib-featureridge: what anomalib's own CLI does not have, for FeatureRidge and WinClipPlus.

Training, testing and export go through anomalib's CLI (anomalib train --model FeatureRidge).
This command adds: make-dataset (a defect dataset generated on the spot), demo (the whole quick
start on it, offline and deterministic), predict (score a folder with an exported model and write
heatmap overlays at the original image size), to-8bit (a copy of a dataset with 16-bit images scaled
to 8 bits, which anomalib's readers would clip), synthesize-defects (synthetic defects on your own
good images, so that thresholds and pixel metrics have positives), benchmark (FeatureRidge against
anomalib's models on your images: accuracy, speed, memory and size, one resumable CSV row each) and
report (a benchmark run as one static page of curves, misses, false alarms and heatmaps).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from anomalib_featureridge.benchmark import options as benchmark_options
from anomalib_featureridge.data.demo_dataset import SyntheticSpec, make_synthetic_dataset
from anomalib_featureridge.deploy.precision import EXACT, PRECISIONS


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--category", default="synthetic", help="category folder name (default: synthetic)")
    parser.add_argument("--image-size", type=int, default=128, help="image side in pixels (default: 128)")
    parser.add_argument("--n-train", type=int, default=24, help="good training images (default: 24)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same files (and same demo metrics) (default: 0)"
    )
    parser.add_argument("--grayscale", action="store_true", help="write single-channel images")


def _spec(args: argparse.Namespace) -> SyntheticSpec:
    return SyntheticSpec(image_size=args.image_size, n_train=args.n_train, grayscale=args.grayscale)


def _make_dataset(args: argparse.Namespace) -> int:
    folder = make_synthetic_dataset(args.root, args.category, _spec(args), args.seed)
    print(f"Wrote {folder} (MVTec AD layout). Train on it with:")
    print(
        f"  anomalib train --model FeatureRidge --data MVTecAD --data.root {args.root} --data.category {args.category}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    # Imported here so that `make-dataset` and `--help` stay fast.
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_featureridge import FeatureRidge

    data_root = Path(args.root) / "data"
    make_synthetic_dataset(data_root, args.category, _spec(args), args.seed)
    # The random backbone, the data order and anomalib's own draws all follow --seed.
    seed_everything(args.seed, workers=True)
    if args.backbone_weights is None:
        print(f"Backbone {args.backbone} with random weights (no download). Real ImageNet weights score much")
        print("higher: pass --backbone-weights PATH (a timm state dict), or train with anomalib's CLI online.")
    model = FeatureRidge(
        backbone=args.backbone,
        layers=args.layers,
        pre_trained=False,
        backbone_weights=args.backbone_weights,
    )
    datamodule = MVTecAD(root=data_root, category=args.category, num_workers=args.num_workers)
    engine = Engine(default_root_dir=Path(args.root) / "results", deterministic="warn")
    (metrics,) = engine.train(model=model, datamodule=datamodule)
    print("Metrics: " + ", ".join(f"{name} {value:.4f}" for name, value in sorted(metrics.items())))
    results_dir = Path(engine.trainer.default_root_dir)
    print(f"Heatmaps: {results_dir / 'images'}")
    print(f"Checkpoint: {engine.best_model_path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from anomalib_featureridge.deploy.predict import UnwritableOutputError, predict_folder

    try:
        run = predict_folder(args.model, args.input, args.output, args.overwrite, args.precision)
    except (FileNotFoundError, FileExistsError, ValueError, UnwritableOutputError) as error:
        print(f"anomalib-featureridge predict: {error}", file=sys.stderr)
        return 2
    print(f"{run.scored} images scored, {run.flagged} anomalous. Overlays and predictions.csv in {args.output}")
    if run.skipped:
        print(f"{len(run.skipped)} file(s) skipped (their rows in predictions.csv give the reason):", file=sys.stderr)
        for name, reason in run.skipped:
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


def _to_8bit(args: argparse.Namespace) -> int:
    from anomalib_featureridge.data.images import convert_to_8bit

    try:
        converted = convert_to_8bit(args.source, args.target)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"anomalib-featureridge to-8bit: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {args.target}: {converted} 16-bit image(s) scaled to 8 bits, the other files copied unchanged.")
    return 0


def _synthesize(args: argparse.Namespace) -> int:
    from anomalib_featureridge.data.defects import DEFECT_KINDS, check_kinds, check_share, hold_out_with_defects
    from anomalib_featureridge.data.images import UnreadableImageError, copy_as_8_bit, list_images

    kinds = args.kinds or DEFECT_KINDS
    # The rules live with the defects (torch is imported there), so they are checked here, in argparse's words.
    for option, check, value in (("--holdout", check_share, args.holdout), ("--kinds", check_kinds, kinds)):
        try:
            check(value)
        except ValueError as error:
            args.parser.error(f"argument {option}: {error}")
    if not args.source.is_dir():
        print(f"anomalib-featureridge synthesize-defects: {args.source} is not a folder of images.", file=sys.stderr)
        return 2
    good = list_images(args.source)
    if not good:
        print(f"anomalib-featureridge synthesize-defects: No images in {args.source}", file=sys.stderr)
        return 2
    category_dir = args.output / args.category
    try:  # every source image is read (for the object region) before anything is written
        kept, _, counts = hold_out_with_defects(good, category_dir, args.holdout, kinds, args.seed)
    except UnreadableImageError as error:
        print(f"anomalib-featureridge synthesize-defects: {error}", file=sys.stderr)
        return 2
    for path in kept:
        copy_as_8_bit(path, category_dir / "train" / "good" / path.name)
    print(f"Wrote {category_dir}: {len(kept)} train/good, synthetic test split {counts}.")
    if kept:
        print("Thresholds and metrics from the synthetic defects (F1 needs positives):")
        print(
            f"  anomalib train --model FeatureRidge --data MVTecAD --data.root {args.output} "
            f"--data.category {args.category} --data.val_split_mode same_as_test"
        )
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from anomalib_featureridge.benchmark.sweep import run

    run(args)
    return 0


def _report(args: argparse.Namespace) -> int:
    from anomalib_featureridge.benchmark.html_report import build

    if not (args.results / "results.csv").is_file():
        print(f"anomalib-featureridge report: no results.csv in {args.results}", file=sys.stderr)
        return 2
    if not 0 <= args.false_alarm_rate < 1:
        args.parser.error(f"argument --false-alarm-rate: must lie in [0, 1), got {args.false_alarm_rate}")
    print(f"Wrote {build(args.results, args.false_alarm_rate, args.output)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (also used by the docs)."""
    parser = argparse.ArgumentParser(
        prog="anomalib-featureridge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-dataset", help="write the generated defect dataset in the MVTec AD layout")
    make.add_argument("root", type=Path, help="dataset root; the category folder is created inside it")
    _add_dataset_options(make)
    make.set_defaults(handler=_make_dataset)

    demo = commands.add_parser("demo", help="generate the dataset, then train, test and write heatmaps (offline)")
    demo.add_argument(
        "--root",
        type=Path,
        default=Path("featureridge_demo"),
        help="output folder: data/ and results/ (default: featureridge_demo)",
    )
    demo.add_argument("--backbone", default="resnet18", help="timm CNN (default: resnet18)")
    demo.add_argument(
        "--layers",
        nargs=2,
        default=["layer2", "layer3"],
        metavar=("SHALLOW", "DEEP"),
        help="backbone layers: the shallow one predicts the deep one (default: layer2 layer3)",
    )
    demo.add_argument("--backbone-weights", type=Path, default=None, help="local timm state dict")
    demo.add_argument("--num-workers", type=int, default=0, help="data loader workers (default: 0)")
    _add_dataset_options(demo)
    demo.set_defaults(handler=_demo)

    predict = commands.add_parser("predict", help="score a folder with an exported model, write heatmap overlays")
    predict.add_argument("--model", type=Path, required=True, help="exported model.xml, model.onnx or model.pt")
    predict.add_argument("--input", type=Path, required=True, help="folder of images (searched recursively)")
    predict.add_argument(
        "--output",
        type=Path,
        default=Path("predictions"),
        help="output folder for overlays/ and predictions.csv (default: predictions)",
    )
    predict.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run's predictions.csv and overlays/ in --output"
    )
    predict.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=EXACT,
        help="OpenVINO compute precision: f32 gives the checkpoint's scores (default); bf16 is faster on CPUs "
        "with bfloat16 and moves scores (docs/deployment.md)",
    )
    predict.set_defaults(handler=_predict)

    to_8bit = commands.add_parser(
        "to-8bit",
        help="copy a dataset with its 16-bit images scaled to 8 bits (anomalib's readers clip them to white)",
    )
    to_8bit.add_argument("source", type=Path, help="dataset folder; its layout is kept")
    to_8bit.add_argument("target", type=Path, help="new folder outside the source")
    to_8bit.set_defaults(handler=_to_8bit)

    synthesize = commands.add_parser(
        "synthesize-defects",
        help="hold out good images and add synthetic defects with masks (an MVTec-layout category)",
        description="Split a folder of good images: --holdout of them form test/good and get one synthetic defect "
        "each (test/<kind>, ground_truth/<kind>); the rest are copied to train/good. --holdout 1 makes a whole "
        "synthetic test split.",
    )
    synthesize.add_argument("source", type=Path, help="folder of good images, e.g. DATA/bottle/train/good")
    synthesize.add_argument("output", type=Path, help="dataset root; the category folder is created inside it")
    synthesize.add_argument("--category", default="synthetic_defects", help="category folder name")
    synthesize.add_argument("--holdout", type=float, default=0.2, help="share of images for the synthetic split")
    synthesize.add_argument("--kinds", nargs="+", help="kinds to cycle through (default: line distortion perlin)")
    synthesize.add_argument("--seed", type=int, default=0, help="same seed, same files (default: 0)")
    synthesize.set_defaults(handler=_synthesize, parser=synthesize)

    benchmark = commands.add_parser(
        "benchmark",
        help="compare FeatureRidge with anomalib's models on your images (docs/benchmarks.md)",
        description=benchmark_options.DESCRIPTION,
    )
    benchmark_options.add_arguments(benchmark)
    benchmark.set_defaults(handler=_benchmark)

    report = commands.add_parser(
        "report",
        help="rebuild a benchmark run's report.html: misses, false alarms and heatmaps per model (static page)",
        description=benchmark_options.REPORT_DESCRIPTION,
    )
    benchmark_options.add_report_arguments(report)
    report.set_defaults(handler=_report, parser=report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``anomalib-featureridge``."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
