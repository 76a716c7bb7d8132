"""A small defect dataset in the MVTec AD layout, generated on the spot (no download).

Good images are a woven texture with smooth lighting and sensor noise, different in every image;
defective ones add a scratch, a stain or a hole, with an exact ground-truth mask. The same
generator feeds the quick start and the tests, so both run offline and deterministically.

Layout (what anomalib's ``MVTecAD`` datamodule reads)::

    root/category/train/good/000.png
    root/category/test/good/000.png
    root/category/test/<defect>/000.png
    root/category/ground_truth/<defect>/000_mask.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEFECT_TYPES = ("scratch", "stain", "hole")


@dataclass(frozen=True)
class SyntheticSpec:
    """Size of the generated dataset."""

    image_size: int = 128
    n_train: int = 16
    n_test_good: int = 6
    n_test_per_defect: int = 4
    grayscale: bool = False


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A woven texture in [0, 1] with random phase, lighting and noise, shape ``(size, size)``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / 10.0
    phase_x, phase_y = rng.uniform(0, 2 * np.pi, size=2)
    weave = 0.5 + 0.25 * np.sin(2 * np.pi * xx / period + phase_x) * np.sin(2 * np.pi * yy / period + phase_y)
    gradient = rng.uniform(-0.08, 0.08) * (xx / size - 0.5) + rng.uniform(-0.08, 0.08) * (yy / size - 0.5)
    noise = rng.normal(0.0, 0.03, size=(size, size))
    return np.clip(weave + gradient + noise, 0.0, 1.0).astype(np.float32)


def _defect_mask(rng: np.random.Generator, size: int, defect: str) -> np.ndarray:
    """Boolean mask of one defect, placed away from the border so it survives resizing."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.3 * size, 0.7 * size, size=2)
    if defect == "scratch":
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.3, 0.45) * size
        width = max(1.5, 0.02 * size)
        along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        return (np.abs(along) < length / 2) & (np.abs(across) < width)
    radius = rng.uniform(0.08, 0.14) * size
    if defect == "stain":
        ry, rx = radius * rng.uniform(0.6, 1.0), radius
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
    if defect == "hole":
        return (yy - cy) ** 2 + (xx - cx) ** 2 < (0.6 * radius) ** 2
    msg = f"Unknown defect type {defect!r}; choose from {DEFECT_TYPES}."
    raise ValueError(msg)


def _render(gray: np.ndarray, grayscale: bool, tint: np.ndarray) -> Image.Image:
    if grayscale:
        return Image.fromarray((gray * 255).round().astype(np.uint8), mode="L")
    rgb = np.clip(gray[..., None] * tint[None, None, :], 0.0, 1.0)
    return Image.fromarray((rgb * 255).round().astype(np.uint8), mode="RGB")


def make_defect_image(
    rng: np.random.Generator,
    size: int,
    defect: str | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(gray image in [0, 1], boolean mask, RGB tint)``; ``defect=None`` gives a good image."""
    gray = _texture(rng, size)
    tint = np.array([1.0, 0.85, 0.6], dtype=np.float32) * rng.uniform(0.95, 1.05)
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        mask = _defect_mask(rng, size, defect)
        if defect == "scratch":
            gray[mask] = 0.95
        elif defect == "stain":
            gray[mask] = np.clip(gray[mask] * 0.35 + 0.05, 0.0, 1.0)
        else:
            gray[mask] = 0.02
    return gray, mask, tint


def make_synthetic_dataset(
    root: str | Path,
    category: str = "synthetic",
    spec: SyntheticSpec | None = None,
    seed: int = 0,
) -> Path:
    """Write the dataset under ``root/category`` and return that folder. Same seed, same bytes."""
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(seed)
    category_dir = Path(root) / category

    def write(split: str, label: str, index: int, defect: str | None) -> None:
        gray, mask, tint = make_defect_image(rng, spec.image_size, defect)
        folder = category_dir / split / label
        folder.mkdir(parents=True, exist_ok=True)
        _render(gray, spec.grayscale, tint).save(folder / f"{index:03d}.png")
        if defect is not None:
            mask_dir = category_dir / "ground_truth" / label
            mask_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(mask_dir / f"{index:03d}_mask.png")

    for index in range(spec.n_train):
        write("train", "good", index, None)
    for index in range(spec.n_test_good):
        write("test", "good", index, None)
    for defect in DEFECT_TYPES:
        for index in range(spec.n_test_per_defect):
            write("test", defect, index, defect)
    return category_dir
