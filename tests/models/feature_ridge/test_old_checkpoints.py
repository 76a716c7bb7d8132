"""Checkpoints and torch exports saved before the heads were modules load and score as they did (fixtures/)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomalib_featureridge import FeatureRidge

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ("paper", "paper_rank", "gaussian", "local", "two_scale")
# Scores were saved on one machine: other CPUs may round the last float32 bits differently.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(FIXTURES / "expected_scores.pt")


@pytest.mark.parametrize("name", NAMES)
def test_an_old_lightning_checkpoint_scores_as_it_did(name: str, expected: dict) -> None:
    model = FeatureRidge.load_from_checkpoint(FIXTURES / f"{name}.ckpt", map_location="cpu").eval()
    output = model.model(expected["images"])
    torch.testing.assert_close(output.anomaly_map, expected[name]["anomaly_map"], **TOLERANCE)
    torch.testing.assert_close(output.pred_score, expected[name]["pred_score"], **TOLERANCE)
    model.model.update(expected["images"][1:])  # its sums came along: new images add to them


@pytest.mark.parametrize("name", NAMES)
def test_an_old_torch_export_scores_as_it_did(name: str, expected: dict) -> None:
    model = torch.load(FIXTURES / f"{name}.pt", weights_only=False)["model"].eval()
    output = model(expected["images"])
    torch.testing.assert_close(output.anomaly_map, expected[name]["anomaly_map"], **TOLERANCE)
    assert model.settings["head"] == name.removesuffix("_rank")


def test_an_old_checkpoint_is_described_by_its_own_settings() -> None:
    checkpoint = torch.load(FIXTURES / "two_scale.ckpt", weights_only=False)
    default = FeatureRidge(backbone="test_efficientnet", layers=["blocks.2", "blocks.3"], pre_trained=False)
    default.on_load_checkpoint(checkpoint)
    assert default.model.settings["head"] == "two_scale"
    assert default.model.settings["channels"] == [24, 32]
    assert default.hparams["head"] == "two_scale"
