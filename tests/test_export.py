"""Deployment: ONNX, OpenVINO and torch exports give the checkpoint's scores, and stay small."""

import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.deploy import OpenVINOInferencer, TorchInferencer
from anomalib.engine import Engine
from conftest import SMALL_BACKBONE, SMALL_LAYERS
from PIL import Image

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.deploy import map_to_original_size, predict_folder

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A trained small model, its checkpoint and its three exports."""
    workdir = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = FeatureRidge(backbone=SMALL_BACKBONE, layers=list(SMALL_LAYERS), pre_trained=False, visualizer=False)
    datamodule = MVTecAD(
        root=synthetic_root, category="synthetic", train_batch_size=4, eval_batch_size=8, num_workers=0
    )
    engine = Engine(default_root_dir=workdir, logger=False, enable_progress_bar=False, accelerator="cpu")
    engine.fit(model=model, datamodule=datamodule)  # fits, then validates: the post-processor learns its normalisation
    checkpoint = workdir / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    model.eval()
    paths = {
        "onnx": model.to_onnx(workdir),
        "openvino": model.to_openvino(workdir),
        "torch": model.to_torch(workdir),
    }
    images = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))[:6]
    return {"model": model, "checkpoint": checkpoint, "paths": paths, "images": images, "workdir": workdir}


def _reference(model: FeatureRidge, image_paths: list[Path]) -> dict[str, np.ndarray]:
    batch = torch.stack([read_image(path, as_tensor=True) for path in image_paths])
    with torch.no_grad():
        output = model(batch)  # pre-processing, model and post-processing: what the export contains
    return {key: value.numpy() for key, value in output._asdict().items() if value is not None}


def _assert_parity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(candidate["pred_score"].reshape(-1), reference["pred_score"].reshape(-1), atol=TOLERANCE)
    np.testing.assert_allclose(
        candidate["anomaly_map"].reshape(reference["anomaly_map"].shape), reference["anomaly_map"], atol=TOLERANCE
    )
    np.testing.assert_array_equal(candidate["pred_label"].reshape(-1), reference["pred_label"].reshape(-1))


def test_onnx_runtime_matches_torch_for_any_batch_size(exported: dict) -> None:
    session = onnxruntime.InferenceSession(str(exported["paths"]["onnx"]), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    for count in (1, 4):
        paths = exported["images"][:count]
        reference = _reference(exported["model"], paths)
        batch = np.stack([read_image(path, as_tensor=True).numpy() for path in paths])
        candidate = dict(zip(names, session.run(None, {session.get_inputs()[0].name: batch}), strict=True))
        _assert_parity(reference, candidate)
    assert set(reference["pred_label"].reshape(-1).tolist()) == {False, True}, "the check must see both labels"


@pytest.mark.xfail(
    strict=True,
    reason="Open defect (issue 12): with the gaussian head, anomalib's OpenVINOInferencer differs from torch by "
    "about 0.011 in the normalised image score on this AVX-512 BF16 CPU (ONNX parity holds); an f32 "
    "INFERENCE_PRECISION_HINT in the IR's runtime_options did not change it. Not yet diagnosed.",
)
def test_openvino_inferencer_matches_torch(exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # anomalib's OpenVINOInferencer writes ./openvino_cache
    inferencer = OpenVINOInferencer(path=exported["paths"]["openvino"], device="CPU")
    for path in exported["images"]:
        prediction = inferencer.predict(path)
        _assert_parity(
            _reference(exported["model"], [path]),
            {
                "pred_score": prediction.pred_score,
                "anomaly_map": prediction.anomaly_map,
                "pred_label": prediction.pred_label,
            },
        )


def test_torch_inferencer_matches_checkpoint(exported: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # anomalib's opt-in for unpickling a .pt export
    inferencer = TorchInferencer(path=exported["paths"]["torch"], device="cpu")
    restored = FeatureRidge.load_from_checkpoint(exported["checkpoint"]).eval()
    for path in exported["images"][:3]:
        prediction = inferencer.predict(path)
        candidate = {key: getattr(prediction, key).numpy() for key in ("pred_score", "anomaly_map", "pred_label")}
        _assert_parity(_reference(restored, [path]), candidate)


def test_exports_hold_only_what_inference_needs(exported: dict) -> None:
    onnx_path = exported["paths"]["onnx"]
    assert list(onnx_path.parent.iterdir()) == [onnx_path], "no external-data file"
    graph = onnx.load(str(onnx_path))
    initializer_names = " ".join(tensor.name for tensor in graph.graph.initializer)
    assert "statistics" not in initializer_names
    assert "xtx" not in initializer_names
    backbone_and_head_bytes = sum(
        tensor.numel() * tensor.element_size()
        for name, tensor in exported["model"].model.state_dict().items()
        if not name.startswith("statistics")
    )
    assert onnx_path.stat().st_size < 1.1 * backbone_and_head_bytes
    saved = torch.load(exported["paths"]["torch"], weights_only=False)["model"]
    assert saved.model.statistics.is_empty
    assert not exported["model"].model.statistics.is_empty, "exporting must not strip the live model"


def test_exporting_an_unfitted_model_is_refused(tmp_path: Path) -> None:
    model = FeatureRidge(backbone=SMALL_BACKBONE, layers=list(SMALL_LAYERS), pre_trained=False)
    for export in (model.to_onnx, model.to_torch):
        with pytest.raises(RuntimeError, match="before it is fitted"):
            export(tmp_path)
    assert not list(tmp_path.rglob("*.onnx"))
    assert not list(tmp_path.rglob("*.pt"))


def test_wrong_channel_count_is_refused_by_every_runtime(exported: dict) -> None:
    four_channels = np.random.default_rng(0).random((1, 4, 64, 64), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        exported["model"].model(torch.from_numpy(four_channels))
    session = onnxruntime.InferenceSession(str(exported["paths"]["onnx"]), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        session.run(None, {session.get_inputs()[0].name: four_channels})


def test_anomalib_export_command(exported: dict, tmp_path: Path) -> None:
    command = [
        "anomalib", "export",
        "--model", "FeatureRidge",
        "--model.backbone", SMALL_BACKBONE,
        "--model.pre_trained", "false",
        "--ckpt_path", str(exported["checkpoint"]),
        "--export_type", "onnx",
        "--default_root_dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    session = onnxruntime.InferenceSession(str(tmp_path / "weights" / "onnx" / "model.onnx"))
    names = [output.name for output in session.get_outputs()]
    batch = np.stack([read_image(path, as_tensor=True).numpy() for path in exported["images"][:2]])
    candidate = dict(zip(names, session.run(None, {session.get_inputs()[0].name: batch}), strict=True))
    _assert_parity(_reference(exported["model"], exported["images"][:2]), candidate)


def test_predict_folder_with_the_openvino_export(exported: dict, synthetic_root: Path, tmp_path: Path) -> None:
    folder = synthetic_root / "synthetic" / "test" / "hole"
    output = tmp_path / "out"
    command = ["anomalib-featureridge", "predict", "--model", str(exported["paths"]["openvino"])]
    result = subprocess.run(
        [*command, "--input", str(folder), "--output", str(output)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,  # anomalib's OpenVINOInferencer writes ./openvino_cache
    )
    assert result.returncode == 0, result.stderr[-3000:]
    images = sorted(folder.glob("*.png"))
    overlays = sorted(output.glob("*.png"))
    assert [path.name for path in overlays] == [path.name for path in images]
    assert Image.open(overlays[0]).size == Image.open(images[0]).size
    rows = (output / "predictions.csv").read_text().splitlines()
    assert len(rows) == len(images) + 1


def test_anomaly_map_maps_back_to_the_original_size() -> None:
    model_resolution = np.zeros((1, 256, 256), dtype=np.float32)
    model_resolution[0, 64:128, :] = 1.0
    original = map_to_original_size(model_resolution, 100, 300)
    assert original.shape == (100, 300)
    assert original[37, 150] == pytest.approx(1.0)
    assert original[5, 150] == pytest.approx(0.0)


def test_predict_refuses_an_empty_folder(exported: dict, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No images"):
        predict_folder(exported["paths"]["openvino"], tmp_path / "empty", tmp_path / "out")


def test_low_rank_model_exports_to_onnx_with_the_same_scores(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FeatureRidge(
        backbone=SMALL_BACKBONE,
        layers=list(SMALL_LAYERS),
        pre_trained=False,
        rank=16,
        head="paper",
        pre_processor=False,
        post_processor=False,
    )
    model.model.update(torch.rand(4, 3, 64, 64))
    model.eval()
    onnx_path = model.to_onnx(tmp_path, input_size=(64, 64))  # no pre-processor: fix the size
    initializers = {tensor.name for tensor in onnx.load(str(onnx_path)).graph.initializer}
    assert {"model.weight", "model.projection"} <= initializers
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = model.model(images)
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images.numpy()}), strict=True))
    np.testing.assert_allclose(outputs["anomaly_map"], reference.anomaly_map.numpy(), atol=TOLERANCE)
    np.testing.assert_allclose(outputs["pred_score"].reshape(-1), reference.pred_score.numpy(), atol=TOLERANCE)
