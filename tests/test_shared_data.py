"""Real ImageNet weights on a real defect set from ../shared (skipped where ../shared is absent)."""

from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.engine import Engine
from conftest import shared_path

from anomalib_featureridge import FeatureRidge


def test_hazelnut_toy_with_real_weights_localises_defects(tmp_path: Path) -> None:
    data_root = shared_path("data", "hazelnut_toy").parent
    weights = shared_path("weights", "tf_efficientnet_lite0.pth")
    model = FeatureRidge(
        backbone="tf_efficientnet_lite0",
        layers=["blocks.2", "blocks.4"],
        pre_trained=False,
        backbone_weights=weights,
        visualizer=False,
    )
    datamodule = MVTecAD(root=data_root, category="hazelnut_toy", train_batch_size=8, eval_batch_size=8, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, accelerator="cpu")
    engine.fit(model=model, datamodule=datamodule)
    results = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    assert results["pixel_AUROC"] > 0.95, results
    assert results["image_AUROC"] > 0.95, results
