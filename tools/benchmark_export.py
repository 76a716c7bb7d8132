"""Per-image CPU latency and file size of exported models: torch eager vs ONNX Runtime vs OpenVINO.

Each model is fitted once on the category's training images, exported to ONNX and OpenVINO, then
the three runtimes are timed in interleaved rounds on the same pre-loaded images (the full
exported graph: pre-processing, model, post-processing), so machine noise hits all of them alike.
The batch is 1 image, or the fixed batch size an export insists on (anomalib's Patchcore ONNX
graph comes out with a static batch of 2); latency is per image. Figures are medians, and ratios
are against the first model in torch eager from the same run. OpenVINO compiles in f32 (the
package's rule, deploy/precision.py); ``--openvino-precisions f32 bf16`` times bf16 beside it.

Example (the figures in docs/deployment.md):
    python tools/benchmark_export.py --root ../shared/data --category hazelnut_toy \
        --backbone tf_efficientnet_lite2 --layers blocks.2 blocks.4 \
        --weights ../shared/weights/tf_efficientnet_lite2.pth --models FeatureRidge Patchcore
    python tools/benchmark_export.py --root ../shared/data --category hazelnut_toy \
        --backbone tf_efficientnet_lite2 --layers blocks.2 blocks.4 \
        --weights ../shared/weights/tf_efficientnet_lite2.pth --models FeatureRidge --openvino-precisions f32 bf16
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine

from anomalib_featureridge.benchmark.construction import Setup, build_model
from anomalib_featureridge.benchmark.harness import interleaved_medians
from anomalib_featureridge.deploy.precision import EXACT, PRECISIONS, compile_openvino

Runtime = Callable[[np.ndarray], dict[str, np.ndarray]]


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


def benchmark_model(name: str, args: argparse.Namespace, workdir: Path, images: list[np.ndarray]) -> dict[str, dict]:
    """Fit, export, check parity and time one model; return {runtime: {latency_ms, size_mb, parity, batch}}."""
    setup = Setup(
        backbone=args.backbone,
        layers=tuple(args.layers),
        weights=args.weights,
        random_init=False,
        coreset_ratio=args.patchcore_coreset_ratio,
        ridge_rank=None,
        clip_backbone=None,
        clip_pretrained=None,
        batch_size=16,
        warmup=0,
        repeats=0,
        seed=0,
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


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--models", nargs="+", default=["FeatureRidge", "Patchcore"])
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--layers", nargs=2, default=["layer2", "layer3"])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--openvino-precisions",
        nargs="+",
        choices=PRECISIONS,
        default=[EXACT],
        help="OpenVINO inference precisions to time side by side (default: f32, the exact one)",
    )
    parser.add_argument("--patchcore-coreset-ratio", type=float, default=0.1, help="anomalib's default is 0.1")
    args = parser.parse_args()

    test_images = sorted((args.root / args.category / "test").rglob("*.png"))
    if not test_images:
        raise SystemExit(f"No test images under {args.root / args.category / 'test'}")
    images = [read_image(path, as_tensor=True)[None].numpy() for path in test_images]
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: benchmark_model(name, args, Path(tmp), images) for name in args.models}

    baseline = results[args.models[0]]["torch eager"]["latency_ms"]
    print(f"\n{args.category}, {args.backbone} {list(args.layers)}, {torch.get_num_threads()} CPU threads")
    print(
        "| model | runtime | batch | latency (ms/image) | vs first model's torch eager "
        "| vs same model's torch eager | file (MiB) | max abs diff vs torch: score / map / labels |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, runtimes in results.items():
        eager = runtimes["torch eager"]["latency_ms"]
        for runtime, figures in runtimes.items():
            size = "" if figures["size_mb"] is None else f"{figures['size_mb']:.1f}"
            print(
                f"| {name} | {runtime} | {figures['batch']} | {figures['latency_ms']:.1f} "
                f"| {figures['latency_ms'] / baseline:.2f}x | {figures['latency_ms'] / eager:.2f}x | {size} "
                f"| {figures['parity']} |"
            )


if __name__ == "__main__":
    main()
