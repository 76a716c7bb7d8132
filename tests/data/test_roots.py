"""A mistyped MVTecAD category or a root that is not there is refused before anything is created or downloaded."""

import subprocess
from pathlib import Path

import pytest
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from conftest import SMALL_BACKBONE, SMALL_LAYERS, anomalib_train_command

from anomalib_featureridge import FeatureRidge


def test_a_mistyped_category_names_the_categories_there_through_the_cli(synthetic_root: Path, tmp_path: Path) -> None:
    before = sorted(synthetic_root.rglob("*"))
    command = anomalib_train_command(synthetic_root, tmp_path / "results")
    command[command.index("--data.category") + 1] = "synthetc"
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0
    message = " ".join((result.stdout + result.stderr).split())  # rich wraps the traceback's last lines
    assert f"{synthetic_root} has no category 'synthetc'" in message
    assert "the categories there: synthetic" in message
    assert "Set --data.category to one of the categories there" in message
    assert sorted(synthetic_root.rglob("*")) == before, "nothing is created or downloaded"
    assert not list((tmp_path / "results").rglob("v0")), "no empty run folder is left"


def test_a_root_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    root = tmp_path / "datasets" / "MVTecAD"
    datamodule = MVTecAD(root=root, category="bottle", num_workers=0)
    model = FeatureRidge(backbone=SMALL_BACKBONE, layers=list(SMALL_LAYERS), pre_trained=False, visualizer=False)
    engine = Engine(default_root_dir=tmp_path / "results", logger=False, accelerator="cpu")
    with pytest.raises(FileNotFoundError, match=rf"The dataset root {root} does not exist.*MVTecAD\(root='{root}'\)"):
        engine.fit(model=model, datamodule=datamodule)
    assert not (tmp_path / "datasets").exists()
