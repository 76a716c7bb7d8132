"""The rows one benchmark command asks for: checked before any fit, measured one by one, resumed on a re-run.

Modes: ``full`` (every training image), ``scaling`` (fit only, on N random training images, for
time, memory and size growth) and ``few-shot`` (K random training images, full evaluation). Each
row is measured in a fresh process unless ``--in-process``, appended to ``results.csv`` as soon as
it is measured, and skipped on a re-run when it is already there without an error; ``results.md``
and the plots are rebuilt from the whole CSV at the end (or alone with ``--report-only``), and with
``--report`` the HTML report from the per-image records kept beside it. Rows that
differ only in an evaluation option (several ``--metric-scorer``) come from one training; it runs
again only when one of them is missing.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from anomalib_featureridge.benchmark.construction import (
    Setup,
    build_model,
    floor_backbone,
    model_class,
    settings_of,
    variants_of,
)
from anomalib_featureridge.benchmark.harness import RowFailedError, describe, read_rows, row_appender, run_isolated
from anomalib_featureridge.benchmark.measurement import FIELDS, measure
from anomalib_featureridge.benchmark.options import complete, model_options
from anomalib_featureridge.benchmark.report import write_report
from anomalib_featureridge.benchmark.rows import row_key

# What identifies a row for resuming.


# glibc settings that keep Patchcore's coreset search from growing the heap (docs/benchmarks.md).
ALLOCATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def allocator_notice(models: list[str], platform: str, environment: dict[str, str]) -> str | None:
    """What to tell a Linux user who benchmarks Patchcore with glibc's default malloc settings, else None.

    anomalib's coreset search then grows the heap by about one temporary per iteration (tens of GB with
    anomalib's 10 % coreset), so the Patchcore row can be killed for memory; the figures stay as users get them.
    """
    if "Patchcore" not in models or not platform.startswith("linux"):
        return None
    if any(name in environment for name in ALLOCATOR_SETTINGS):
        return None
    return (
        "[benchmark] Patchcore runs with glibc's default malloc settings, under which anomalib's coreset search "
        "grows the heap by about one temporary per iteration (tens of GB at a 10 % coreset). If its row is "
        "killed for memory, rerun with MALLOC_MMAP_THRESHOLD_=65536 in the environment (docs/benchmarks.md, "
        '"Patchcore\'s memory on Linux").'
    )


def plan(args: argparse.Namespace) -> list[tuple[str, str, int | None]]:
    """(mode, category, n_train) for every run asked for, in order."""
    runs: list[tuple[str, str, int | None]] = []
    if not args.skip_full:
        runs += [("full", category, None) for category in args.categories]
    scaling_category = args.scaling_category or args.categories[0]
    runs += [("scaling", scaling_category, n) for n in args.scaling]
    runs += [("few-shot", category, k) for category in args.categories for k in args.few_shot]
    return runs


def check_inputs(args: argparse.Namespace) -> None:
    """Fail before any fit on a missing dataset, category or weights file, or an unregistered model."""
    for name in args.models:
        model_class(name)
    if args.weights is not None and not args.weights.is_file():
        sys.exit(f"Backbone weights file {args.weights} does not exist")
    if args.folder is not None:
        folders = [args.normal_dir, args.normal_test_dir, *(args.abnormal_dir or []), *(args.mask_dir or [])]
        missing_folders = [str(args.folder / name) for name in folders if name and not (args.folder / name).is_dir()]
        if missing_folders:
            sys.exit(f"No such image folder: {', '.join(missing_folders)}")
        if not args.abnormal_dir and (not args.skip_full or args.few_shot):
            sys.exit(
                "Accuracy needs defective images: give --abnormal-dir (and --mask-dir for pixel metrics), "
                "or measure cost only with --skip-full --scaling N ..."
            )
        return
    if args.root is None or not args.root.is_dir():
        sys.exit(f"Dataset root {args.root} does not exist (give --root DIR or --folder DIR)")
    missing = [category for category in args.categories if not (args.root / category / "train").is_dir()]
    if missing:
        found = sorted(path.name for path in args.root.iterdir() if (path / "train").is_dir())
        sys.exit(f"No category {missing} under {args.root}; categories there: {found}")


def setup_from(args: argparse.Namespace) -> Setup:
    """What every model of this run shares, from the command line."""
    scorers = list(dict.fromkeys(args.metric_scorer or []))  # a scorer named twice is one row, not two
    return Setup(
        backbone=args.backbone,
        layers=tuple(args.layers),
        weights=args.weights,
        random_init=args.random_init,
        model_options=(
            *model_options(args),
            ("Patchcore", "coreset_sampling_ratio", args.patchcore_coreset_ratio),
            *(
                ("SyntheticDefectMetric", key, value)
                for key, value in (
                    ("defect_kinds", tuple(args.defect_kinds) if args.defect_kinds else None),
                    ("loss", args.metric_loss),
                    ("scorer", scorers[0] if scorers else None),
                    ("max_epochs", args.metric_epochs),
                    ("learning_rate", args.metric_lr),
                    ("anomaly_map", args.metric_map),
                    ("grad_cam_layer", args.metric_map_layer),
                    ("seed", args.metric_seed),
                )
            ),
        ),
        evaluation_variants=tuple(("SyntheticDefectMetric", "scorer", scorer) for scorer in scorers[1:]),
        clip_backbone=args.clip_backbone,
        clip_pretrained=args.clip_pretrained,
        batch_size=args.batch_size,
        warmup=args.warmup,
        repeats=args.repeats,
        seed=args.seed,
    )


def refuse_bad_model_options(names: list[str], setup: Setup) -> None:
    """Build each of this package's CNN models once, with random weights: a bad option stops the run before any fit."""
    quick = replace(setup, weights=None, random_init=True)
    for name in names:
        if "backbone_weights" in inspect.signature(model_class(name).__init__).parameters:
            try:
                build_model(name, quick, floor_channels=0)
            except ValueError as error:
                sys.exit(f"{name}: {error}")


def run_all(args: argparse.Namespace, setup: Setup, csv_path: Path) -> None:
    """Measure every planned row not already in the CSV, appending each as soon as it is done."""
    floor_backbone(setup)  # weights that do not fit the backbone stop the run before any fit
    refuse_bad_model_options(list(args.models), setup)
    done = {row_key(row) for row in read_rows(csv_path) if not row["error"]}
    runs = [(mode, category, n, name) for mode, category, n in plan(args) for name in args.models]
    notice = allocator_notice(list(args.models), sys.platform, dict(os.environ))
    if notice:
        print(notice, flush=True)
    with row_appender(csv_path, FIELDS) as append:
        for index, (mode, category, n_train, name) in enumerate(runs, start=1):
            variants = variants_of(name, setup)
            identities = [
                {
                    "mode": mode,
                    "model": name,
                    "category": category,
                    "n_train": n_train,
                    "backbone": setup.backbone,
                    "settings": settings_of(name, variant),
                }
                for variant in variants
            ]
            label = f"[benchmark {index}/{len(runs)}] {mode} {name} on {category}" + (
                f" with {n_train} training images" if n_train else ""
            )
            if all(row_key(identity) in done for identity in identities):
                print(f"{label}: already in {csv_path}, skipped", flush=True)
                continue
            print(f"{label} ...", flush=True)
            task = (name, mode, category, n_train, args, variants)
            try:
                figures = measure(*task) if args.in_process else run_isolated(measure, *task)
            except RowFailedError as error:
                figures = [{"error": str(error)}] * len(variants)
            except (ValueError, RuntimeError, MemoryError, torch.OutOfMemoryError) as error:
                figures = [{"error": describe(error)}] * len(variants)
            for identity, measured in zip(identities, figures, strict=True):
                if row_key(identity) in done:
                    continue  # measured again only because a sibling row of the same training was missing
                row = identity | measured
                append(row)
                print(f"{label}: {row}", flush=True)


def run(args: argparse.Namespace) -> None:
    """Run every planned (model, mode, category, size) of parsed options, append each row, then write the report."""
    complete(args)
    args.output.mkdir(parents=True, exist_ok=True)
    csv_path = args.output / "results.csv"
    if not args.report_only:
        check_inputs(args)
        run_all(args, setup_from(args), csv_path)
    write_report(read_rows(csv_path), args.output)
    print(f"[benchmark] wrote {csv_path}, {args.output / 'results.md'} and plots", flush=True)
    if args.report:
        from anomalib_featureridge.benchmark.html_report import build

        print(f"[benchmark] wrote {build(args.output)}", flush=True)
