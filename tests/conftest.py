"""Shared fixtures: tiny generated datasets and small random-initialised models (offline, deterministic)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from anomalib_featureridge.data import SyntheticSpec, make_synthetic_dataset
from anomalib_featureridge.models.feature_ridge import FeatureRidgeModel

SHARED = Path(os.environ.get("ANOMALIB_FEATURERIDGE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SMALL_BACKBONE = "resnet18"
SMALL_LAYERS = ("layer2", "layer3")


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MVTec-layout dataset (category ``synthetic``) shared by the whole session."""
    root = tmp_path_factory.mktemp("datasets")
    make_synthetic_dataset(root, spec=SyntheticSpec(image_size=96, n_train=12, n_test_good=4, n_test_per_defect=2))
    return root


def small_model(**kwargs: object) -> FeatureRidgeModel:
    """A random-initialised resnet18 FeatureRidge (seeded: same weights every call), paper head."""
    torch.manual_seed(0)
    options = {"backbone": SMALL_BACKBONE, "layers": SMALL_LAYERS, "pre_trained": False, "sigma": 0.0, "head": "paper"}
    options.update(kwargs)
    return FeatureRidgeModel(**options).eval()


def anomalib_train_command(root: Path, output: Path, *extra: str) -> list[str]:
    """``anomalib train`` of a random-initialised resnet18 FeatureRidge on the generated dataset, on CPU."""
    return [
        "anomalib", "train",
        "--model", "FeatureRidge",
        "--model.backbone", "resnet18",
        "--model.pre_trained", "false",
        "--data", "MVTecAD",
        "--data.root", str(root),
        "--data.category", "synthetic",
        "--data.num_workers", "0",
        "--default_root_dir", str(output),
        "--trainer.accelerator", "cpu",
        *extra,
    ]  # fmt: skip


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test with the reason when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared is only beside the checkout on the project's machines)")
    return path


TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 48, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny open_clip ViT (48 px, 6 x 6 patches): its model config JSON and a seeded random checkpoint."""
    import json

    import open_clip

    root = tmp_path_factory.mktemp("tiny_clip")
    config = root / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    checkpoint = root / "tiny-clip.pt"
    torch.save(open_clip.create_model("tiny-clip").state_dict(), checkpoint)
    return {"config": config, "checkpoint": checkpoint}
