"""One full run through the real ``anomalib`` command line: train + test + heatmaps + checkpoint."""

import re
import subprocess
from pathlib import Path

import torch
from conftest import anomalib_train_command

from anomalib_featureridge import FeatureRidge


def test_anomalib_train_with_feature_ridge(synthetic_root: Path, tmp_path: Path) -> None:
    command = anomalib_train_command(
        synthetic_root, tmp_path, "--data.train_batch_size", "4", "--data.eval_batch_size", "8"
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    metrics = {
        name: float(value)
        for name, value in re.findall(r"(image_AUROC|pixel_AUROC|pixel_AUPRO)\s*│\s*([0-9.]+)", output)
    }
    assert set(metrics) == {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"}, output[-4000:]
    assert metrics["pixel_AUROC"] > 0.6

    run_dir = tmp_path / "FeatureRidge" / "MVTecAD" / "synthetic" / "latest"
    heatmaps = list((run_dir / "images").rglob("*.png"))
    assert len(heatmaps) == len(list((synthetic_root / "synthetic" / "test").rglob("*.png")))
    checkpoint = run_dir / "weights" / "lightning" / "model.ckpt"
    model = FeatureRidge.load_from_checkpoint(checkpoint)
    assert bool(model.model.fitted)
    assert model.model(torch.rand(1, 3, 96, 96)).anomaly_map.shape == (1, 1, 96, 96)
