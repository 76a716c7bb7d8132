"""Synthetic defects: exact masks, grey and colour, deterministic, confined to the object; the split writer."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_featureridge.cli import main
from anomalib_featureridge.data.defects import (
    DEFECT_KINDS,
    ObjectRegionFinder,
    add_defect,
    draw_line,
    hold_out,
    hold_out_with_defects,
    make_synthetic_split,
    read_gray_or_rgb,
    rotate_locally,
)
from anomalib_featureridge.data.demo_dataset import make_defect_image

SIZE = 64


def _textured(seed: int, colour: bool) -> np.ndarray:
    """A good image of the project's woven texture, grey ``(H, W)`` or colour ``(H, W, 3)``."""
    gray, _, tint = make_defect_image(np.random.default_rng(seed), SIZE, None)
    image = gray[..., None] * tint if colour else gray
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    difference = before != after
    return difference if difference.ndim == 2 else difference.any(axis=2)


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "colour"])
@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_mask_is_exactly_the_changed_pixels(kind: str, colour: bool) -> None:
    image = _textured(1, colour)
    region = np.zeros(image.shape[:2], dtype=bool)
    region[8:56, 12:52] = True
    defective, mask = add_defect(image, kind, np.random.default_rng(3), region)
    assert defective.shape == image.shape
    assert defective.dtype == np.uint8
    assert mask.shape == image.shape[:2]
    assert mask.dtype == bool
    assert mask.any()
    np.testing.assert_array_equal(mask, _changed(image, defective))
    assert not (mask & ~region).any(), "changes stay inside the object region"


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_same_seed_same_defect_and_torch_random_state_untouched(kind: str) -> None:
    image = _textured(2, colour=True)
    torch_state = torch.random.get_rng_state()
    first = add_defect(image, kind, np.random.default_rng(7))
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    second = add_defect(image, kind, np.random.default_rng(7))
    other = add_defect(image, kind, np.random.default_rng(8))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[1], other[1])


def test_line_has_the_requested_width_length_and_colour() -> None:
    image = np.full((SIZE, SIZE), 100, dtype=np.uint8)
    defective, mask = draw_line(
        image, np.random.default_rng(0), width=(3, 3), length=(0.5, 0.5), curvature=(0, 0), colour=250
    )
    assert set(np.unique(defective[mask]).tolist()) == {250}
    expected_area = 0.5 * SIZE * 3
    assert 0.7 * expected_area < mask.sum() < 1.5 * expected_area
    rows, cols = np.nonzero(mask)
    assert max(np.ptp(rows), np.ptp(cols)) <= 0.5 * SIZE + 3


def test_local_rotation_changes_only_a_disc() -> None:
    image = _textured(4, colour=False)
    _, mask = rotate_locally(image, np.random.default_rng(0), radius=(0.1, 0.1))
    rows, cols = np.nonzero(mask)
    assert mask.any()
    assert max(np.ptp(rows), np.ptp(cols)) <= 2 * 0.1 * SIZE + 1


def test_a_flat_image_cannot_be_distorted() -> None:
    with pytest.raises(ValueError, match="changed no pixel"):
        add_defect(np.full((SIZE, SIZE), 80, dtype=np.uint8), "distortion", np.random.default_rng(0))
    with pytest.raises(ValueError, match="Unknown defect kind"):
        add_defect(_textured(0, False), "scratch", np.random.default_rng(0))


def _object_on_background(seed: int) -> np.ndarray:
    """A textured square on a flat background, shifted a little between images."""
    rng = np.random.default_rng(seed)
    image = np.full((SIZE, SIZE, 3), 20, dtype=np.uint8)
    top, left = rng.integers(14, 20, size=2)
    image[top : top + 28, left : left + 28] = _textured(seed, colour=True)[:28, :28]
    return image


def test_object_region_is_found_by_differencing_against_the_mean() -> None:
    finder = ObjectRegionFinder.from_images(_object_on_background(seed) for seed in range(8))
    image = _object_on_background(11)
    region = finder(image)
    truth = image.max(axis=2) > 20
    intersection, union = (region & truth).sum(), (region | truth).sum()
    assert intersection / union > 0.6


def test_no_object_region_falls_back_to_the_whole_image_with_a_warning() -> None:
    flat = np.full((SIZE, 48), 90, dtype=np.uint8)
    finder = ObjectRegionFinder.from_images([flat, flat])
    with pytest.warns(UserWarning, match="No object region"):
        region = finder(flat)
    assert region.shape == flat.shape
    assert region.all()


def test_synthetic_split_is_an_mvtec_category_with_exact_masks(tmp_path: Path) -> None:
    sources = []
    for index in range(4):
        path = tmp_path / "good" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(_textured(index, colour=index % 2 == 0)).save(path)
        sources.append(path)
    category = tmp_path / "out" / "cat"
    counts = make_synthetic_split(sources, category, kinds=("line", "perlin"), seed=0)
    assert counts == {"good": 4, "line": 2, "perlin": 2}
    for kind in ("line", "perlin"):
        for defective in sorted((category / "test" / kind).glob("*.png")):
            good = read_gray_or_rgb(category / "test" / "good" / defective.name)
            mask = read_gray_or_rgb(category / "ground_truth" / kind / f"{defective.stem}_mask.png") > 0
            assert mask.any()
            np.testing.assert_array_equal(mask, _changed(good, read_gray_or_rgb(defective)))


def test_cli_holds_out_good_images_for_a_synthetic_split(tmp_path: Path) -> None:
    for index in range(5):
        (tmp_path / "good").mkdir(exist_ok=True)
        Image.fromarray(_textured(index, colour=False)).save(tmp_path / "good" / f"{index}.png")
    assert main(["synthesize-defects", str(tmp_path / "good"), str(tmp_path / "data"), "--holdout", "0.4"]) == 0
    category = tmp_path / "data" / "synthetic_defects"
    assert len(list((category / "train" / "good").glob("*.png"))) == 3
    assert len(list((category / "test" / "good").glob("*.png"))) == 2
    assert len(list((category / "ground_truth").rglob("*_mask.png"))) == 2


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*.png"))}


def test_the_same_seed_gives_the_same_defects_from_the_cli_and_the_library(tmp_path: Path) -> None:
    # An object on a background, so that which images the object finder averages changes the defects.
    good = tmp_path / "good"
    good.mkdir()
    for index in range(6):
        image = np.full((SIZE, SIZE), 30, dtype=np.uint8)
        image[12 + index : 52, 10:50] = _textured(index, colour=False)[12 + index : 52, 10:50]
        Image.fromarray(image).save(good / f"{index}.png")
    assert main(["synthesize-defects", str(good), str(tmp_path / "cli"), "--holdout", "0.5", "--seed", "3"]) == 0
    paths = sorted(good.glob("*.png"))
    kept, held, counts = hold_out_with_defects(paths, tmp_path / "library" / "synthetic_defects", 0.5, seed=3)
    assert (kept, held) == hold_out(paths, 0.5, seed=3)
    assert counts["good"] == len(held) == 3
    cli_split = _folder_bytes(tmp_path / "cli" / "synthetic_defects")
    library_split = _folder_bytes(tmp_path / "library" / "synthetic_defects")
    assert {name: data for name, data in cli_split.items() if not name.startswith("train")} == library_split


def test_hold_out_is_seeded_disjoint_and_refuses_an_empty_share() -> None:
    paths = [Path(f"{index}.png") for index in range(10)]
    kept, held = hold_out(paths, 0.3, seed=1)
    assert len(held) == 3
    assert sorted(kept + held) == sorted(paths)
    assert hold_out(paths, 0.3, seed=1) == (kept, held)
    with pytest.raises(ValueError, match="held-out share"):
        hold_out(paths, 0.0)


def _good_folder(tmp_path: Path, count: int = 3) -> Path:
    good = tmp_path / "good"
    good.mkdir()
    for index in range(count):
        Image.fromarray(_textured(index, colour=False)).save(good / f"{index}.png")
    return good


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--holdout", "1.5"], "argument --holdout: The held-out share must lie in (0, 1], got 1.5."),
        (["--holdout", "0"], "argument --holdout: The held-out share must lie in (0, 1], got 0.0."),
        (["--kinds", "line", "laser"], "argument --kinds: Unknown or no defect kinds ['laser']; choose from line,"),
    ],
)
def test_cli_refuses_bad_options_as_argparse_does(
    tmp_path: Path, capsys: pytest.CaptureFixture, option: list[str], expected: str
) -> None:
    good = _good_folder(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["synthesize-defects", str(good), str(tmp_path / "data"), *option])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.splitlines()[-1].startswith(f"anomalib-featureridge synthesize-defects: error: {expected}"), message
    assert "Traceback" not in message
    assert not (tmp_path / "data").exists()


def test_cli_names_a_corrupt_source_image_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = _good_folder(tmp_path)
    whole = (good / "1.png").read_bytes()
    (good / "1.png").write_bytes(whole[: len(whole) // 2])  # an interrupted copy
    assert main(["synthesize-defects", str(good), str(tmp_path / "data"), "--holdout", "0.5"]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1, message
    assert message.startswith(f"anomalib-featureridge synthesize-defects: Cannot read {good / '1.png'}: ")
    assert not (tmp_path / "data").exists()


def test_cli_on_a_missing_source_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["synthesize-defects", str(tmp_path / "missing"), str(tmp_path / "data")]) == 2
    assert f"{tmp_path / 'missing'} is not a folder of images" in capsys.readouterr().err
