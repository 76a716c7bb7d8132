"""A checkpoint cut short is named, with the way out, on every route that loads one (issue 32)."""

import os
import subprocess
from pathlib import Path

import pytest
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from conftest import SMALL_BACKBONE, SMALL_LAYERS

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.components.checkpoints import DamagedCheckpointError


@pytest.fixture(scope="module")
def truncated(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FeatureRidge checkpoint with its second half missing (an interrupted copy)."""
    results = tmp_path_factory.mktemp("results")
    model = FeatureRidge(backbone=SMALL_BACKBONE, layers=list(SMALL_LAYERS), pre_trained=False, visualizer=False)
    datamodule = MVTecAD(root=synthetic_root, category="synthetic", eval_batch_size=8, num_workers=0)
    Engine(default_root_dir=results, logger=False, enable_progress_bar=False, accelerator="cpu").fit(model, datamodule)
    path = next(results.rglob("*.ckpt"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_load_from_checkpoint_names_a_truncated_file(truncated: Path) -> None:
    with pytest.raises(DamagedCheckpointError, match=rf"The checkpoint {truncated} is incomplete.*Copy it again"):
        FeatureRidge.load_from_checkpoint(truncated)


def test_anomalib_test_names_a_truncated_ckpt_path(synthetic_root: Path, truncated: Path, tmp_path: Path) -> None:
    command = [
        "anomalib", "test",
        "--model", "FeatureRidge", "--model.backbone", "resnet18", "--model.pre_trained", "false",
        "--data", "MVTecAD", "--data.root", str(synthetic_root), "--data.category", "synthetic",
        "--data.num_workers", "0", "--default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu",
        "--ckpt_path", str(truncated),
    ]  # fmt: skip
    wide = {**os.environ, "COLUMNS": "1000"}  # rich wraps the traceback at the terminal's width
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=wide)
    assert result.returncode != 0
    message = (result.stdout + result.stderr).strip().splitlines()[-1]
    assert f"The checkpoint {truncated} is incomplete or damaged" in message
    assert "Copy it again from where it was made, or train again" in message
