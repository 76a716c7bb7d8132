"""16-bit images: read scaled (not clipped to white) everywhere this package reads, refused where anomalib reads."""

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from conftest import SMALL_BACKBONE, SMALL_LAYERS
from PIL import Image

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.cli import main
from anomalib_featureridge.data.defects import make_synthetic_split
from anomalib_featureridge.data.images import (
    UnreadableImageError,
    convert_to_8bit,
    list_images,
    read_gray_or_rgb,
    read_rgb,
)


def _gradient_16_bit(size: int = 64) -> np.ndarray:
    """Values spread over the whole 16-bit range, most of them far above 255."""
    return np.linspace(0, 65535, size * size).reshape(size, size).astype(np.uint16)


def _write_16_bit(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), values)
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    values = _gradient_16_bit()
    path = _write_16_bit(tmp_path / f"camera{suffix}", values)
    assert (read_image(path) == 1.0).mean() > 0.99, "anomalib's reader clips it: the reason for this module"
    expected = np.rint(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(read_gray_or_rgb(path), expected)
    rgb = read_rgb(path)
    assert rgb.shape == (*values.shape, 3)
    assert rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[..., 1], expected / 255.0, atol=1e-7)


def test_8_bit_files_read_exactly_as_anomalib_reads_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for mode, shape in (("L", (20, 30)), ("RGB", (20, 30, 3))):
        path = tmp_path / f"{mode}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
        np.testing.assert_allclose(read_rgb(path), read_image(path), atol=1e-7)


def test_synthetic_defects_from_16_bit_images_keep_their_content(tmp_path: Path) -> None:
    values = _gradient_16_bit()
    source = [_write_16_bit(tmp_path / "good" / f"{index}.png", values) for index in range(2)]
    make_synthetic_split(source, tmp_path / "out", kinds=["line"])
    written = read_gray_or_rgb(tmp_path / "out" / "test" / "good" / "000.png")
    np.testing.assert_array_equal(written, np.rint(values / 257).astype(np.uint8))


def test_synthesize_defects_writes_16_bit_training_images_as_8_bit(tmp_path: Path) -> None:
    values = _gradient_16_bit()
    for index in range(4):
        _write_16_bit(tmp_path / "good" / f"{index}.png", values)
    assert main(["synthesize-defects", str(tmp_path / "good"), str(tmp_path / "data"), "--holdout", "0.5"]) == 0
    train = sorted((tmp_path / "data" / "synthetic_defects" / "train" / "good").iterdir())
    assert len(train) == 2
    for path in train:
        assert Image.open(path).mode == "L"
        np.testing.assert_array_equal(read_image(path)[..., 0], np.rint(values / 257) / 255.0)


def _dataset_with_one_16_bit_image(synthetic_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    target = sorted((root / "synthetic" / "train" / "good").glob("*.png"))[0]
    _write_16_bit(target, _gradient_16_bit(96))
    return root, target


def _fit(root: Path, tmp_path: Path) -> FeatureRidge:
    model = FeatureRidge(backbone=SMALL_BACKBONE, layers=list(SMALL_LAYERS), pre_trained=False, visualizer=False)
    datamodule = MVTecAD(root=root, category="synthetic", train_batch_size=4, eval_batch_size=8, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, accelerator="cpu")
    engine.fit(model=model, datamodule=datamodule)
    return model


def test_training_on_16_bit_files_is_refused_with_the_way_out(synthetic_root: Path, tmp_path: Path) -> None:
    root, target = _dataset_with_one_16_bit_image(synthetic_root, tmp_path)
    with pytest.raises(ValueError, match="16-bit grayscale") as error:
        _fit(root, tmp_path / "run")
    assert str(target) in str(error.value)
    assert "anomalib-featureridge to-8bit" in str(error.value)


def test_the_way_out_converts_a_dataset_that_then_trains(synthetic_root: Path, tmp_path: Path) -> None:
    root, target = _dataset_with_one_16_bit_image(synthetic_root, tmp_path)
    converted_root = tmp_path / "data_8bit"
    assert main(["to-8bit", str(root), str(converted_root)]) == 0
    converted = converted_root / target.relative_to(root)
    np.testing.assert_array_equal(read_gray_or_rgb(converted), np.rint(_gradient_16_bit(96) / 257).astype(np.uint8))
    untouched = sorted((root / "synthetic" / "test").rglob("*.png"))[0]
    assert (converted_root / untouched.relative_to(root)).read_bytes() == untouched.read_bytes()
    assert bool(_fit(converted_root, tmp_path / "run").model.fitted)
    with pytest.raises(FileExistsError, match="already exist"):
        convert_to_8bit(root, converted_root)


def test_one_lister_for_every_folder_of_images(tmp_path: Path) -> None:
    # The suffix set of data/images.py (with .webp, which PIL and anomalib's Folder read) is the one for every lister.
    for name in ("b.PNG", "a.webp", "c.jpeg", "notes.txt", "sub/d.tif", "out/e.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")  # the lister goes by the suffix, case-insensitively; it reads nothing
    assert [path.name for path in list_images(tmp_path)] == ["a.webp", "b.PNG", "c.jpeg"]
    assert [path.name for path in list_images(tmp_path, recursive=True, exclude=tmp_path / "out")] == [
        "a.webp",
        "b.PNG",
        "c.jpeg",
        "d.tif",
    ]


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_an_unreadable_file_is_named_with_the_way_out(tmp_path: Path, suffix: str) -> None:
    """PIL says only "image file is truncated"; every reader here names the file (predict's rows, defects' sources)."""
    whole = tmp_path / f"whole{suffix}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    text = tmp_path / f"notes{suffix}"
    text.write_text("not an image")
    for path in (truncated, text):
        for read in (read_rgb, read_gray_or_rgb):
            with pytest.raises(
                UnreadableImageError, match=rf"^Cannot read {re.escape(str(path))}: .*copy it again from its source"
            ):
                read(path)
    with pytest.raises(FileNotFoundError):  # a missing file is not called damaged
        read_rgb(tmp_path / f"missing{suffix}")
