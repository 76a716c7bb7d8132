"""Masks checked where they are read (issue 32): present, the size of their image, binary unless a threshold is set."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from anomalib.data import Folder, MVTecAD
from anomalib.engine import Engine
from conftest import SMALL_BACKBONE, SMALL_LAYERS
from PIL import Image

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.data.masks import MASK_THRESHOLD_VARIABLE


@pytest.fixture
def dataset(synthetic_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "synthetic", root / "synthetic")
    return root / "synthetic"


def _test(datamodule: object, results: Path) -> Engine:
    model = FeatureRidge(backbone=SMALL_BACKBONE, layers=list(SMALL_LAYERS), pre_trained=False, visualizer=False)
    engine = Engine(default_root_dir=results, logger=False, enable_progress_bar=False, accelerator="cpu")
    engine.fit(model=model, datamodule=datamodule)
    return engine


def _mvtec(category: Path) -> MVTecAD:
    return MVTecAD(root=category.parent, category=category.name, train_batch_size=4, eval_batch_size=8, num_workers=0)


def _noisy(mask: Path) -> np.ndarray:
    """The mask as a JPEG round trip leaves it: grey values around the defect's edge, and a few on the background."""
    values = np.asarray(Image.open(mask).convert("L")).astype(np.int16)
    noisy = np.clip(values + np.random.default_rng(0).integers(0, 12, values.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(mask)
    return noisy


def test_a_mask_that_is_not_binary_is_refused_by_name(dataset: Path, tmp_path: Path) -> None:
    mask = dataset / "ground_truth" / "hole" / "001_mask.png"
    _noisy(mask)
    with pytest.raises(ValueError, match=rf"1 mask\(s\) are not binary, e.g. {mask} holds .*{MASK_THRESHOLD_VARIABLE}"):
        _test(_mvtec(dataset), tmp_path / "results")


def test_a_threshold_opted_in_is_applied_and_reported_once(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mask = dataset / "ground_truth" / "hole" / "001_mask.png"
    expected = _noisy(mask) >= 128
    monkeypatch.setenv(MASK_THRESHOLD_VARIABLE, "128")
    datamodule = _mvtec(dataset)
    with caplog.at_level(logging.WARNING):
        engine = _test(datamodule, tmp_path / "results")
        engine.test(datamodule=datamodule)
    assert caplog.text.count("thresholded at 128") == 1, "fit and test: reported once"
    sample = next(
        datamodule.test_data[index]
        for index in range(len(datamodule.test_data))
        if datamodule.test_data.samples.iloc[index].image_path.endswith("hole/001.png")
    )
    read = sample.gt_mask.numpy().astype(bool)
    resized = np.asarray(Image.fromarray(expected.astype(np.uint8) * 255).resize(read.shape[::-1], Image.NEAREST))
    assert (read == (resized > 0)).mean() > 0.99, "the thresholded mask is read, not the noisy one"


def test_a_bad_threshold_setting_is_named(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _noisy(dataset / "ground_truth" / "hole" / "001_mask.png")
    monkeypatch.setenv(MASK_THRESHOLD_VARIABLE, "half")
    with pytest.raises(ValueError, match=rf"{MASK_THRESHOLD_VARIABLE}='half' is not a grey value from 1 to 255"):
        _test(_mvtec(dataset), tmp_path / "results")


def test_a_mask_of_another_size_than_its_image_is_refused_with_both(dataset: Path, tmp_path: Path) -> None:
    mask = dataset / "ground_truth" / "stain" / "000_mask.png"
    Image.open(mask).resize((80, 96)).save(mask)
    image = dataset / "test" / "stain" / "000.png"
    with pytest.raises(ValueError, match=rf"the mask {mask} is 80x96 .* but its image {image} is 96x96"):
        _test(_mvtec(dataset), tmp_path / "results")


def test_a_defect_image_without_a_mask_is_named_with_the_folder_searched(dataset: Path, tmp_path: Path) -> None:
    (dataset / "ground_truth" / "scratch" / "001_mask.png").unlink()
    image, folder = dataset / "test" / "scratch" / "001.png", dataset / "ground_truth" / "scratch"
    results = tmp_path / "results"
    expected = rf"1 defect image\(s\) have no mask, e.g. {image}: no file in {folder}"
    with pytest.raises(FileNotFoundError, match=expected):
        _test(_mvtec(dataset), results)
    assert not list(results.rglob("v0")), "the refused run's empty version folder is removed"


def test_folder_datamodule_masks_are_checked_too(dataset: Path, tmp_path: Path) -> None:
    def folder() -> Folder:
        return Folder(
            name="parts",
            root=dataset,
            normal_dir="train/good",
            abnormal_dir="test/hole",
            normal_test_dir="test/good",
            mask_dir="ground_truth/hole",
            train_batch_size=4,
            eval_batch_size=8,
            num_workers=0,
        )

    mask = dataset / "ground_truth" / "hole" / "000_mask.png"
    _noisy(mask)
    with pytest.raises(ValueError, match=rf"e.g. {mask} holds"):
        _test(folder(), tmp_path / "results")
    mask.unlink()
    image = dataset / "test" / "hole" / "000.png"
    with pytest.raises(FileNotFoundError, match=rf"e.g. {image}: no file in {mask.parent}"):
        _test(folder(), tmp_path / "results")
