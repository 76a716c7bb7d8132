"""Every shipped config parses through the real anomalib CLI and resolves to its model."""

import subprocess
from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_are_shipped() -> None:
    names = {path.name for path in CONFIGS}
    assert {
        "feature_ridge.yaml",
        "feature_ridge_paper.yaml",
        "feature_ridge_offline_lite2.yaml",
        "feature_ridge_gaussian.yaml",
    } <= names
    assert {"win_clip_plus.yaml", "win_clip_plus_4shot.yaml"} <= names
    assert "synthetic_defect_metric.yaml" in names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_config_resolves_through_the_cli(config: Path) -> None:
    result = subprocess.run(
        ["anomalib", "train", "--config", str(config), "--print_config"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = yaml.safe_load(result.stdout)
    expected_model = yaml.safe_load(config.read_text())["model"]
    expected = expected_model["init_args"]
    assert printed["model"]["class_path"] == expected_model["class_path"]
    assert expected_model["class_path"] in {
        "anomalib_featureridge.FeatureRidge",
        "anomalib_featureridge.WinClipPlus",
        "anomalib_featureridge.SyntheticDefectMetric",
    }
    for key, value in expected.items():
        assert printed["model"]["init_args"][key] == value, key
