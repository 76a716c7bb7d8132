"""Every model exports through the same preparation in every format, straight after construction or fitting."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import SMALL_BACKBONE, SMALL_LAYERS

from anomalib_featureridge import FeatureRidge, SyntheticDefectMetric, WinClipPlus
from anomalib_featureridge.components.export import PreparedExportMixin
from anomalib_featureridge.deploy.precision import compile_openvino

IMAGE_SIZE = 48
TOLERANCE = 1e-4


def _feature_ridge() -> FeatureRidge:
    """Fitted without a trainer (a direct update), so nothing but the export prepares it."""
    model = FeatureRidge(
        backbone=SMALL_BACKBONE,
        layers=list(SMALL_LAYERS),
        pre_trained=False,
        pre_processor=False,
        post_processor=False,
        visualizer=False,
    )
    model.model.update(torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    return model.eval()


def _win_clip_plus(tiny_clip: dict[str, Path]) -> WinClipPlus:
    """Zero-shot and never set up: the text anchors do not exist until an export builds them."""
    model = WinClipPlus(
        class_name="widget",
        backbone=str(tiny_clip["config"]),
        pretrained=str(tiny_clip["checkpoint"]),
        post_processor=False,
        visualizer=False,
    )
    assert model.model.text_embeddings.shape[0] == 0
    return model.eval()


def _run_torch(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    exported = torch.load(path, weights_only=False)["model"].eval()
    with torch.no_grad():
        output = exported(torch.from_numpy(images))
    return {key: value.numpy() for key, value in output._asdict().items() if value is not None}


def _run_onnx(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: images}), strict=True))


def _run_openvino(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    compiled = compile_openvino(path)
    return {next(iter(key.names)): value for key, value in compiled(images).items()}


FORMATS: dict[str, tuple[str, Callable[[Path, np.ndarray], dict[str, np.ndarray]]]] = {
    "torch": ("to_torch", _run_torch),
    "onnx": ("to_onnx", _run_onnx),
    "openvino": ("to_openvino", _run_openvino),
}


@pytest.mark.parametrize("export_format", list(FORMATS))
@pytest.mark.parametrize("model_name", ["FeatureRidge", "WinClipPlus"])
def test_every_model_exports_in_every_format_without_setup(
    model_name: str, export_format: str, tiny_clip: dict[str, Path], tmp_path: Path
) -> None:
    model = _feature_ridge() if model_name == "FeatureRidge" else _win_clip_plus(tiny_clip)
    method, run = FORMATS[export_format]
    options = {} if export_format == "torch" else {"input_size": (IMAGE_SIZE, IMAGE_SIZE)}
    path = getattr(model, method)(tmp_path, **options)
    images = np.random.default_rng(0).random((2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    exported = run(path, images)
    with torch.no_grad():
        reference = model(torch.from_numpy(images))
    assert np.isfinite(exported["pred_score"]).all()
    np.testing.assert_allclose(exported["pred_score"].reshape(-1), reference.pred_score.numpy(), atol=TOLERANCE)
    np.testing.assert_allclose(
        exported["anomaly_map"].reshape(reference.anomaly_map.shape), reference.anomaly_map.numpy(), atol=TOLERANCE
    )


@pytest.mark.parametrize("model_class", [FeatureRidge, WinClipPlus, SyntheticDefectMetric])
def test_no_model_has_an_export_path_of_its_own(model_class: type) -> None:
    """A model prepares itself in ``export_context`` only: an override of one format would skip the others."""
    for method in ("to_torch", "to_onnx", "to_openvino"):
        assert getattr(model_class, method) is getattr(PreparedExportMixin, method), method
