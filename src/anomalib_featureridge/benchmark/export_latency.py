"""Per-image CPU latency and file size of exported models: torch eager vs ONNX Runtime vs OpenVINO.

Why it is a module of its own: the ``benchmark`` sweep times the torch model, while a deployment
runs an exported graph (pre-processing, model, post-processing) in another runtime. Comparing the
runtimes fairly needs the same fitted model in each, the same pre-loaded images, a parity check
that they compute the same outputs, and timing in alternation
(:func:`~anomalib_featureridge.benchmark.harness.interleaved_medians`). Models are built as the
sweep builds them (:func:`~anomalib_featureridge.benchmark.construction.build_model`); OpenVINO
compiles with the package's precision rule (:mod:`anomalib_featureridge.deploy.precision`).
``tools/benchmark_export.py`` is its command line.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine

from anomalib_featureridge.benchmark.construction import Setup, build_model
from anomalib_featureridge.benchmark.harness import interleaved_medians
from anomalib_featureridge.deploy.precision import EXACT, compile_openvino

Runtime = Callable[[np.ndarray], dict[str, np.ndarray]]
# {model: {runtime: {"latency_ms", "batch", "size_mb", "parity"}}}
Results = dict[str, dict[str, dict[str, Any]]]


def _max_differences(runtimes: dict[str, Runtime], batches: list[np.ndarray]) -> dict[str, str]:
    """Largest |score| and |map| difference of each runtime against torch eager, and label disagreements."""
    worst = {runtime: [0.0, 0.0, 0] for runtime in runtimes}
    for batch in batches:
        reference = runtimes["torch eager"](batch)
        for runtime, run in runtimes.items():
            output = run(batch)
            worst[runtime][0] = max(
                worst[runtime][0], float(np.abs(output["pred_score"] - reference["pred_score"]).max())
            )
            worst[runtime][1] = max(
                worst[runtime][1], float(np.abs(output["anomaly_map"] - reference["anomaly_map"]).max())
            )
            worst[runtime][2] += int((output["pred_label"] != reference["pred_label"]).sum())
    return {runtime: f"{score:.1e} / {amap:.1e} / {labels}" for runtime, (score, amap, labels) in worst.items()}


def _openvino_name(precision: str) -> str:
    return "openvino" if precision == EXACT else f"openvino {precision}"


def _run_openvino(compiled: object, batch: np.ndarray) -> dict[str, np.ndarray]:
    return {next(iter(key.names)): value for key, value in compiled(batch).items()}


def benchmark_model(
    name: str, args: argparse.Namespace, workdir: Path, images: list[np.ndarray]
) -> dict[str, dict[str, Any]]:
    """Fit, export, check parity and time one model; return {runtime: {latency_ms, size_mb, parity, batch}}."""
    setup = Setup(
        backbone=args.backbone,
        layers=tuple(args.layers),
        weights=args.weights,
        random_init=False,
        clip_backbone=None,
        clip_pretrained=None,
        batch_size=16,
        warmup=0,
        repeats=0,
        seed=0,
        model_options=(("Patchcore", "coreset_sampling_ratio", args.patchcore_coreset_ratio),),
    )
    model = build_model(name, setup, floor_channels=0)
    datamodule = MVTecAD(root=args.root, category=args.category, num_workers=2, train_batch_size=setup.batch_size)
    engine = Engine(default_root_dir=workdir / name, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    model.eval()
    onnx_path = model.to_onnx(workdir / name)
    openvino_path = model.to_openvino(workdir / name)

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    compiled = {
        precision: compile_openvino(openvino_path, precision=precision) for precision in args.openvino_precisions
    }
    output_names = [output.name for output in session.get_outputs()]
    static_batch = session.get_inputs()[0].shape[0]
    batch_size = static_batch if isinstance(static_batch, int) else 1
    batches = [np.concatenate(images[i : i + batch_size]) for i in range(0, len(images) - batch_size + 1, batch_size)]
    # Each runtime maps the same float RGB batch to the same named outputs, for parity and timing alike.
    runtimes: dict[str, Runtime] = {
        "torch eager": lambda b: {
            k: v.numpy() for k, v in model(torch.from_numpy(b))._asdict().items() if v is not None
        },
        "onnxruntime": lambda b: dict(zip(output_names, session.run(None, {input_name: b}), strict=True)),
    }
    for precision, compiled_model in compiled.items():
        runtimes[_openvino_name(precision)] = partial(_run_openvino, compiled_model)
    with torch.no_grad():
        parity = _max_differences(runtimes, batches)
    seconds = interleaved_medians(
        {runtime: partial(run, batches[0]) for runtime, run in runtimes.items()},
        args.warmup,
        args.repeats,
        torch.device("cpu"),
    )
    onnx_bytes = sum(path.stat().st_size for path in onnx_path.parent.iterdir())
    openvino_bytes = sum(path.stat().st_size for path in openvino_path.parent.iterdir())
    sizes = {"torch eager": None, "onnxruntime": onnx_bytes} | dict.fromkeys(
        map(_openvino_name, compiled), openvino_bytes
    )
    return {
        runtime: {
            "latency_ms": 1000 * seconds[runtime] / batch_size,
            "batch": batch_size,
            "size_mb": sizes[runtime] and sizes[runtime] / 2**20,
            "parity": parity[runtime],
        }
        for runtime in runtimes
    }


def measure(args: argparse.Namespace) -> Results:
    """Every model of ``args.models`` fitted, exported and timed on the category's test images."""
    test_images = sorted((args.root / args.category / "test").rglob("*.png"))
    if not test_images:
        raise SystemExit(f"No test images under {args.root / args.category / 'test'}")
    images = [read_image(path, as_tensor=True)[None].numpy() for path in test_images]
    with tempfile.TemporaryDirectory() as tmp:
        return {name: benchmark_model(name, args, Path(tmp), images) for name in args.models}


def markdown(results: Results, args: argparse.Namespace) -> str:
    """The table: ms per image, against the first model's and the same model's torch eager, size and parity."""
    baseline = results[args.models[0]]["torch eager"]["latency_ms"]
    lines = [
        "",
        f"{args.category}, {args.backbone} {list(args.layers)}, {torch.get_num_threads()} CPU threads",
        "| model | runtime | batch | latency (ms/image) | vs first model's torch eager "
        "| vs same model's torch eager | file (MiB) | max abs diff vs torch: score / map / labels |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runtimes in results.items():
        eager = runtimes["torch eager"]["latency_ms"]
        for runtime, figures in runtimes.items():
            size = "" if figures["size_mb"] is None else f"{figures['size_mb']:.1f}"
            lines.append(
                f"| {name} | {runtime} | {figures['batch']} | {figures['latency_ms']:.1f} "
                f"| {figures['latency_ms'] / baseline:.2f}x | {figures['latency_ms'] / eager:.2f}x | {size} "
                f"| {figures['parity']} |"
            )
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace) -> str:
    """Measure every model the options ask for; the Markdown table."""
    return markdown(measure(args), args)
