"""WinClipPlus through anomalib: registration, the CLI, checkpoints and ONNX / OpenVINO export parity."""

import re
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine
from anomalib.models import get_model, list_models
from test_export import EXACT_OPENVINO, _assert_parity, _reference

from anomalib_featureridge import WinClipPlus


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="synthetic", train_batch_size=4, eval_batch_size=8, num_workers=0)


@pytest.fixture(scope="module")
def prepared(synthetic_root: Path, tiny_clip: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-shot tiny model validated on the synthetic set (references, anchors, thresholds), saved and exported."""
    workdir = tmp_path_factory.mktemp("winclip_export")
    model = WinClipPlus(
        k_shot=2, backbone=str(tiny_clip["config"]), pretrained=str(tiny_clip["checkpoint"]), visualizer=False
    )
    engine = Engine(default_root_dir=workdir, logger=False, enable_progress_bar=False, accelerator="cpu")
    engine.validate(model=model, datamodule=_datamodule(synthetic_root))
    checkpoint = workdir / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    model.eval()
    paths = {
        "onnx": engine.export(model=model, export_type=ExportType.ONNX, export_root=workdir),
        "openvino": engine.export(model=model, export_type=ExportType.OPENVINO, export_root=workdir),
    }
    images = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))[:5]
    return {
        "model": model,
        "checkpoint": checkpoint,
        "paths": paths,
        "images": images,
        "backbone": str(tiny_clip["config"]),
    }


def test_get_model_finds_win_clip_plus(tiny_clip: dict[str, Path]) -> None:
    """In-process lookup; test_registration checks that a fresh interpreter registers it through the hook."""
    model = get_model("win_clip_plus", backbone=str(tiny_clip["config"]), pretrained=None, k_shot=1)
    assert type(model) is WinClipPlus
    assert model.learning_type.value == "few_shot"
    assert "win_clip_plus" in list_models()


def test_onnx_runtime_matches_torch(prepared: dict) -> None:
    session = onnxruntime.InferenceSession(str(prepared["paths"]["onnx"]), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    assert list(prepared["paths"]["onnx"].parent.iterdir()) == [prepared["paths"]["onnx"]], "one self-contained file"
    for count in (1, 3):
        paths = prepared["images"][:count]
        batch = np.stack([read_image(path, as_tensor=True).numpy() for path in paths])
        candidate = dict(zip(names, session.run(None, {session.get_inputs()[0].name: batch}), strict=True))
        _assert_parity(_reference(prepared["model"], paths), candidate)


def test_openvino_inferencer_matches_torch(prepared: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # anomalib's OpenVINOInferencer writes ./openvino_cache
    inferencer = OpenVINOInferencer(path=prepared["paths"]["openvino"], device="CPU", config=EXACT_OPENVINO)
    for path in prepared["images"]:
        prediction = inferencer.predict(path)
        candidate = {key: getattr(prediction, key) for key in ("pred_score", "anomaly_map", "pred_label")}
        _assert_parity(_reference(prepared["model"], [path]), candidate)


def test_checkpoint_restores_anchors_and_references_without_weights(prepared: dict) -> None:
    restored = WinClipPlus.load_from_checkpoint(prepared["checkpoint"]).eval()
    assert restored.model.k_shot == 2
    assert restored.model._text_side is None, "anchors come from the checkpoint: no text tower is kept"
    batch = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(restored(batch).pred_score, prepared["model"](batch).pred_score)


def test_few_shot_checkpoint_with_other_windows_is_refused(prepared: dict) -> None:
    with pytest.raises(ValueError, match="window_stride"):
        WinClipPlus.load_from_checkpoint(prepared["checkpoint"], window_stride=2)


def test_anomalib_test_command_few_shot(synthetic_root: Path, tiny_clip: dict[str, Path], tmp_path: Path) -> None:
    """Few-shot through the CLI; its image and map scores include the zero-shot ones (mean of both)."""
    options = {
        "model": "WinClipPlus",
        "model.k_shot": "2",
        "model.backbone": str(tiny_clip["config"]),
        "model.pretrained": str(tiny_clip["checkpoint"]),
        "data": "MVTecAD",
        "data.root": str(synthetic_root),
        "data.category": "synthetic",
        "data.num_workers": "0",
        "default_root_dir": str(tmp_path),
        "trainer.accelerator": "cpu",
    }
    command = ["anomalib", "test", *(part for name, value in options.items() for part in (f"--{name}", value))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    metrics = dict(re.findall(r"(image_AUROC|pixel_AUROC|pixel_AUPRO)\s*│\s*([0-9.]+)", output))
    assert set(metrics) == {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"}, output[-4000:]
    assert "2 reference images for the few-shot scores" in output
    heatmaps = list((tmp_path / "WinClipPlus" / "MVTecAD" / "synthetic").rglob("images/**/*.png"))
    assert len(heatmaps) == len(list((synthetic_root / "synthetic" / "test").rglob("*.png")))


def _predicted_scores(model: WinClipPlus, root: Path, workdir: Path, ckpt_path: Path | None = None) -> torch.Tensor:
    engine = Engine(default_root_dir=workdir, logger=False, enable_progress_bar=False, accelerator="cpu")
    batches = engine.predict(model=model, datamodule=_datamodule(root), ckpt_path=ckpt_path)
    return torch.cat([batch.pred_score for batch in batches])


def test_ckpt_path_alone_scores_with_the_checkpoints_settings_offline(
    prepared: dict, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``anomalib predict --model WinClipPlus --ckpt_path X``: the default model (paper backbone and tag) first."""
    import open_clip

    from anomalib_featureridge.components import weights as weights_module

    restored = WinClipPlus.load_from_checkpoint(prepared["checkpoint"])
    expected = _predicted_scores(restored, synthetic_root, tmp_path / "a", prepared["checkpoint"])
    monkeypatch.setattr(weights_module, "reachable", lambda _server: pytest.fail("must not probe for CLIP weights"))
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", lambda *_: pytest.fail("must not download"))
    default = WinClipPlus(visualizer=False)
    scores = _predicted_scores(default, synthetic_root, tmp_path / "b", prepared["checkpoint"])
    torch.testing.assert_close(scores, expected)
    assert (default.k_shot, default.class_name, default.hparams["backbone"]) == (2, "synthetic", prepared["backbone"])
    assert default.learning_type.value == "few_shot"
    resaved: dict = {"state_dict": default.state_dict(), "hyper_parameters": dict(default.hparams)}
    default.on_save_checkpoint(resaved)
    assert resaved["win_clip_plus_made_with"]["class_name"] == "synthetic", "a re-saved checkpoint keeps its word"


@pytest.mark.parametrize(("setting", "value"), [("k_shot", 3), ("class_name", "bottle"), ("temperature", 0.5)])
def test_a_setting_given_with_another_value_than_the_checkpoints_is_refused(
    prepared: dict, tiny_clip: dict[str, Path], setting: str, value: object
) -> None:
    given = WinClipPlus(backbone=str(tiny_clip["config"]), pretrained=None, **{setting: value})
    saved = torch.load(prepared["checkpoint"], map_location="cpu", weights_only=False)
    with pytest.raises(
        ValueError, match=rf"made with {setting}=.*configured with {setting}={value!r}.*--model\.{setting}"
    ):
        given.on_load_checkpoint(saved)


def test_zero_shot_cli_without_weights_ends_with_the_way_out(tmp_path: Path, synthetic_root: Path) -> None:
    """Offline, the weights error is the last line, not a jsonargparse union error around it."""
    import os

    command = [
        "anomalib", "train", "--model", "WinClipPlus",
        "--model.backbone", "ViT-B-32", "--model.pretrained", "laion2b_s34b_b79k",
        "--data", "MVTecAD", "--data.root", str(synthetic_root), "--data.category", "synthetic",
        "--data.num_workers", "0", "--default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu",
    ]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=environment)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Does not validate against any of the Union subtypes" not in output
    tail = " ".join(output.split()[-60:])
    assert "ClipWeightsError: Cannot download the pretrained weights of ViT-B-32/laion2b_s34b_b79k" in tail, tail
    assert "HF_HUB_OFFLINE is set" in tail
    assert "--model.pretrained PATH" in tail


def test_checkpoint_names_its_clip_weights_instead_of_holding_them(prepared: dict, tiny_clip: dict[str, Path]) -> None:
    """Nothing of CLIP is trained: the checkpoint records the file and a fingerprint, not the image tower."""
    saved = torch.load(prepared["checkpoint"], map_location="cpu", weights_only=False)
    assert not [key for key in saved["state_dict"] if key.startswith("model.encoder.visual.")]
    assert saved["win_clip_plus_clip_weights"]["pretrained"] == str(tiny_clip["checkpoint"])
    assert len(saved["win_clip_plus_clip_weights"]["sha256"]) == 64
    assert "model.text_embeddings" in saved["state_dict"]
    assert "model.reference_patches" in saved["state_dict"]


def test_other_or_missing_clip_weights_are_refused_by_name(
    prepared: dict, tiny_clip: dict[str, Path], tmp_path: Path
) -> None:
    from anomalib_featureridge.models.win_clip_plus.clip_loader import ClipWeightsError

    other = tmp_path / "other.pt"
    state = torch.load(tiny_clip["checkpoint"], weights_only=True)
    torch.save({key: value + 1 if key == "visual.proj" else value for key, value in state.items()}, other)
    with pytest.raises(
        ClipWeightsError, match=r"made with the CLIP weights .*tiny-clip\.pt.*other\.pt.* other weights"
    ):
        WinClipPlus.load_from_checkpoint(prepared["checkpoint"], pretrained=str(other))
    saved = torch.load(prepared["checkpoint"], map_location="cpu", weights_only=False)
    saved["win_clip_plus_clip_weights"]["pretrained"] = str(tmp_path / "moved.pt")
    saved["hyper_parameters"]["pretrained"] = str(tmp_path / "moved.pt")
    torch.save(saved, tmp_path / "moved.ckpt")
    with pytest.raises(ClipWeightsError, match=r"holds no CLIP weights: it reads them from .*moved\.pt.*not found"):
        WinClipPlus.load_from_checkpoint(tmp_path / "moved.ckpt")
    restored = WinClipPlus.load_from_checkpoint(tmp_path / "moved.ckpt", pretrained=str(tiny_clip["checkpoint"]))
    batch = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(batch).pred_score, prepared["model"](batch).pred_score)


def test_random_clip_weights_stay_in_the_checkpoint(tiny_clip: dict[str, Path], tmp_path: Path) -> None:
    model = WinClipPlus(backbone=str(tiny_clip["config"]), pretrained=None, class_name="part")
    model.export_context()
    checkpoint: dict = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    assert "win_clip_plus_clip_weights" not in checkpoint
    assert any(key.startswith("model.encoder.visual.") for key in checkpoint["state_dict"])
