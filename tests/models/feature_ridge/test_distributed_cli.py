"""A two-process fit through the real ``anomalib train`` command line (Lightning's ddp launcher, gloo).

The launcher starts the second process by running the command again, and anomalib's Engine makes
a new versioned output folder in each: without care the test images of each shard land in
different folders and ``latest`` points to the one without the checkpoint.
"""

import re
import subprocess
from pathlib import Path

import torch
from conftest import anomalib_train_command

from anomalib_featureridge import FeatureRidge


def test_anomalib_train_on_two_processes_writes_one_complete_run(synthetic_root: Path, tmp_path: Path) -> None:
    command = anomalib_train_command(
        synthetic_root,
        tmp_path,
        *("--data.train_batch_size", "4", "--data.eval_batch_size", "4"),
        *("--trainer.devices", "2", "--trainer.strategy", "ddp"),
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert re.search(r"pixel_AUROC\s*│\s*[0-9.]+", output), output[-4000:]

    category = tmp_path / "FeatureRidge" / "MVTecAD" / "synthetic"
    assert sorted(path.name for path in category.iterdir()) == ["latest", "v0"]
    run_dir = (category / "latest").resolve()
    assert run_dir == (category / "v0").resolve()
    heatmaps = list((run_dir / "images").rglob("*.png"))
    assert len(heatmaps) == len(list((synthetic_root / "synthetic" / "test").rglob("*.png")))
    model = FeatureRidge.load_from_checkpoint(run_dir / "weights" / "lightning" / "model.ckpt")
    # Every training image counted once (the sampler's repeat left out), at anomalib's default 256 px input.
    height, width = model.model.extract(torch.zeros(1, 3, 256, 256))[0].shape[-2:]
    train_images = len(list((synthetic_root / "synthetic" / "train").rglob("*.png")))
    assert int(model.model.head.statistics.count) == train_images * height * width
