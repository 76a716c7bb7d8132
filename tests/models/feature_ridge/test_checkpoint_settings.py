"""A checkpoint scores as it was trained, whatever the command line that loads it says, and offline."""

import os
import subprocess
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_featureridge import FeatureRidge, WinClipPlus
from anomalib_featureridge.components import weights as weights_module
from anomalib_featureridge.data import SyntheticSpec, make_synthetic_dataset

TRAINED = {"backbone": "resnet18", "layers": ["layer1", "layer2"], "alpha": 0.5, "sigma": 0.0, "rank": 16}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(root, spec=SyntheticSpec(image_size=48, n_train=4, n_test_good=2, n_test_per_defect=1))
    return root


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="synthetic", num_workers=0, eval_batch_size=16)


@pytest.fixture(scope="module")
def checkpoint(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = FeatureRidge(pre_trained=False, **TRAINED)
    engine = Engine(default_root_dir=tmp_path_factory.mktemp("results"), accelerator="cpu", devices=1)
    engine.fit(model=model, datamodule=_datamodule(dataset_root))
    return Path(engine.best_model_path)


def _scores(model: FeatureRidge, root: Path, tmp_path: Path, ckpt_path: Path | None = None) -> torch.Tensor:
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1)
    batches = engine.predict(model=model, datamodule=_datamodule(root), ckpt_path=ckpt_path)
    return torch.cat([batch.anomaly_map.flatten(1) for batch in batches])


def test_default_settings_give_way_to_the_checkpoints(checkpoint, dataset_root, tmp_path) -> None:
    """As ``anomalib predict --ckpt_path`` does: a model built with defaults (sigma 4, alpha 1), then the checkpoint."""
    expected = _scores(FeatureRidge.load_from_checkpoint(checkpoint), dataset_root, tmp_path / "a")
    other = FeatureRidge(backbone="resnet18", layers=["layer1", "layer2"], rank=16, pre_trained=False)
    assert torch.equal(_scores(other, dataset_root, tmp_path / "b", checkpoint), expected)
    assert (other.hparams["sigma"], other.hparams["alpha"]) == (0.0, 0.5)


@pytest.mark.parametrize(
    ("setting", "value"), [("sigma", 2.0), ("alpha", 3.0), ("backbone", "resnet34"), ("reference", "median")]
)
def test_a_setting_given_with_another_value_is_refused(checkpoint, setting, value) -> None:
    given = FeatureRidge(**{**TRAINED, "pre_trained": False, setting: value})
    with pytest.raises(ValueError, match=rf"trained with {setting}=.*configured with {setting}=.*--model\.{setting}"):
        given.on_load_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=False))


def test_default_model_loads_a_checkpoint_offline_without_weights_flags(
    checkpoint, dataset_root, tmp_path, monkeypatch
) -> None:
    """``anomalib test --model FeatureRidge --ckpt_path X`` builds the defaults (wide_resnet50_2, pretrained)."""
    monkeypatch.setattr(weights_module, "reachable", lambda _host: pytest.fail("must not touch the network"))
    monkeypatch.setattr(weights_module, "cached_weights", lambda _source: None)
    expected = _scores(FeatureRidge.load_from_checkpoint(checkpoint), dataset_root, tmp_path / "a")
    default = FeatureRidge()
    assert torch.equal(_scores(default, dataset_root, tmp_path / "b", checkpoint), expected)
    assert default.model.backbone == "resnet18"


def test_deferred_pretrained_weights_are_fetched_before_fitting(monkeypatch) -> None:
    """Without a checkpoint, the first use still needs the weights: offline, it fails with the way out."""
    monkeypatch.setattr(weights_module, "reachable", lambda _host: False)
    monkeypatch.setattr(weights_module, "cached_weights", lambda _source: None)
    model = FeatureRidge(backbone="resnet18")
    with pytest.raises(weights_module.BackboneWeightsError, match="backbone_weights=PATH"):
        model.model.accumulate(torch.rand(1, 3, 32, 32))


def test_a_winclipplus_checkpoint_is_named_as_such(tiny_clip) -> None:
    winclip = WinClipPlus(backbone=str(tiny_clip["config"]), pretrained=str(tiny_clip["checkpoint"]), class_name="x")
    saved = {"hyper_parameters": dict(winclip.hparams), "state_dict": winclip.state_dict()}
    with pytest.raises(
        ValueError, match=r"saved by WinClipPlus, not by FeatureRidge: load it with --model WinClipPlus"
    ):
        FeatureRidge(backbone="resnet18", pre_trained=False).on_load_checkpoint(dict(saved))
    winclip.on_save_checkpoint(saved)
    with pytest.raises(ValueError, match="saved by WinClipPlus"):
        FeatureRidge(backbone="resnet18", pre_trained=False).on_load_checkpoint(saved)


def test_a_featureridge_checkpoint_given_to_winclipplus_is_named(checkpoint, tiny_clip) -> None:
    winclip = WinClipPlus(backbone=str(tiny_clip["config"]), pretrained=str(tiny_clip["checkpoint"]), class_name="x")
    with pytest.raises(ValueError, match="saved by FeatureRidge, not by WinClipPlus"):
        winclip.on_load_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=False))


def test_a_featureridge_checkpoint_given_to_synthetic_defect_metric_is_named(checkpoint) -> None:
    """Every model records its class and refuses another's checkpoint (one rule, in the shared scoring module)."""
    from anomalib_featureridge import SyntheticDefectMetric

    metric = SyntheticDefectMetric(backbone="resnet18", layer="layer3", pre_trained=False)
    with pytest.raises(ValueError, match="saved by FeatureRidge, not by SyntheticDefectMetric"):
        metric.on_load_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=False))
    saved = {"hyper_parameters": dict(metric.hparams), "state_dict": {}}
    metric.on_save_checkpoint(saved)
    with pytest.raises(ValueError, match="saved by SyntheticDefectMetric, not by FeatureRidge"):
        FeatureRidge(backbone="resnet18", pre_trained=False).on_load_checkpoint(saved)


def test_anomalib_test_with_only_the_checkpoint_works_offline(checkpoint, dataset_root, tmp_path) -> None:
    command = [
        "anomalib", "test",
        "--model", "FeatureRidge",
        "--ckpt_path", str(checkpoint),
        "--data", "MVTecAD",
        "--data.root", str(dataset_root),
        "--data.category", "synthetic",
        "--data.num_workers", "0",
        "--default_root_dir", str(tmp_path),
        "--trainer.accelerator", "cpu",
    ]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=environment)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "pixel_AUROC" in output
    assert "Cannot download" not in output


def test_a_train_folder_of_jpg_files_is_explained(tmp_path) -> None:
    from PIL import Image

    good = tmp_path / "parts" / "train" / "good"
    good.mkdir(parents=True)
    for index in range(3):
        Image.new("RGB", (32, 32)).save(good / f"{index}.jpg")
    (tmp_path / "parts" / "test" / "good").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "parts" / "test" / "good" / "0.png")
    model = FeatureRidge(backbone="resnet18", pre_trained=False)
    engine = Engine(default_root_dir=tmp_path / "results", accelerator="cpu", devices=1)
    with pytest.raises(ValueError, match=r"train/good holds \.jpg files, but MVTecAD reads only \.png.*Folder"):
        engine.fit(model=model, datamodule=MVTecAD(root=tmp_path, category="parts", num_workers=0))
