"""Synthetic defects on real good images, so thresholds and pixel metrics can be set before real defects exist.

Three kinds, each confined to the object and returned with its exact mask (the pixels whose 8-bit
value changed, nothing else):

* ``line``: a thin, possibly curved stroke (width, length, colour, curvature),
* ``distortion``: a local rotation (a swirl that fades out at its radius, so there is no seam),
* ``perlin``: a blob shaped by anomalib's Perlin noise and filled with a second Perlin texture.

The object is found as anomalib users would do by hand: difference the image against the mean
good training image and binarise (Otsu). Everything is driven by one ``numpy`` generator, so the
same seed gives the same images and masks. Images are ``uint8`` arrays, ``(H, W)`` or ``(H, W, C)``;
files are read with :func:`~anomalib_featureridge.data.images.read_gray_or_rgb` (16-bit files scaled).

Example:
    >>> region_finder = ObjectRegionFinder.from_images(good_images)
    >>> rng = np.random.default_rng(0)
    >>> defective, mask = add_defect(image, "line", rng, region_finder(image))
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from anomalib.data.utils.generators.perlin import generate_perlin_noise
from PIL import Image
from scipy.ndimage import binary_closing, binary_fill_holes
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from .images import read_gray_or_rgb

logger = logging.getLogger(__name__)

DEFECT_KINDS = ("line", "distortion", "perlin")
_REGION_SIZE = 256
_ATTEMPTS = 20
_MIN_CHANGE = 6
# Below this the defaults give strokes and discs as large as the image (a distortion needs a 3-pixel radius).
MIN_IMAGE_SIDE = 32
# How far outside [0, 1] a resized image may stray: a resize rounds (bilinear, by 1e-7) or overshoots
# edges (bicubic, by a few hundredths), while normalised images reach about -2 and +2.
_RESAMPLING_SLACK = 0.1


def _as_float(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in {2, 3}:
        msg = f"Expected a uint8 image of shape (H, W) or (H, W, C), got {image.dtype} {image.shape}."
        raise ValueError(msg)
    return image.astype(np.float32)


def _gray(image: np.ndarray) -> np.ndarray:
    values = _as_float(image)
    return values if values.ndim == 2 else values.mean(axis=2)


def _finish(original: np.ndarray, changed: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply the change inside ``region`` where it is visible, round to 8 bits; return the image and exact mask.

    Pixels that would move by less than ``_MIN_CHANGE`` grey levels (interpolation noise on flat
    surfaces) keep their value, so the mask holds only pixels that visibly changed.
    """
    rounded = np.clip(np.rint(changed), 0, 255)
    step = np.abs(rounded - original)
    visible = region & ((step if step.ndim == 2 else step.max(axis=2)) >= _MIN_CHANGE)
    result = np.where(visible if changed.ndim == 2 else visible[..., None], rounded, original).astype(np.uint8)
    difference = result != original
    mask = difference if difference.ndim == 2 else difference.any(axis=2)
    return result, mask


class ObjectRegionFinder:
    """Finds the object in an image by differencing it against the mean good image and binarising.

    Args:
        mean_image: Mean grey level of the good images at ``_REGION_SIZE`` squared, in [0, 255].
        min_fraction: Smallest object, as a fraction of the image, that counts as found.
        min_contrast: Smallest grey-level difference from the mean that counts as structure.
    """

    def __init__(self, mean_image: np.ndarray, min_fraction: float = 0.01, min_contrast: float = 2.0) -> None:
        self.mean_image = mean_image.astype(np.float32)
        self.min_fraction = min_fraction
        self.min_contrast = min_contrast

    @classmethod
    def from_images(cls, images: Iterable[np.ndarray], **kwargs: float) -> ObjectRegionFinder:
        """Average the good images, each resized to a common size (sizes may differ)."""
        total = np.zeros((_REGION_SIZE, _REGION_SIZE), dtype=np.float64)
        count = 0
        for image in images:
            total += cv2.resize(_gray(image), (_REGION_SIZE, _REGION_SIZE), interpolation=cv2.INTER_AREA)
            count += 1
        if count == 0:
            msg = "Need at least one good image to compute the mean image."
            raise ValueError(msg)
        return cls((total / count).astype(np.float32), **kwargs)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Boolean object mask of ``image``; the whole image, with a warning, when nothing stands out."""
        height, width = image.shape[:2]
        small = cv2.resize(_gray(image), (_REGION_SIZE, _REGION_SIZE), interpolation=cv2.INTER_AREA)
        difference = cv2.GaussianBlur(np.abs(small - self.mean_image), (0, 0), sigmaX=_REGION_SIZE / 64)
        region = np.zeros_like(difference, dtype=bool)
        if float(difference.max() - difference.min()) >= self.min_contrast:
            region = binary_fill_holes(binary_closing(difference > threshold_otsu(difference), structure=disk(5)))
        if region.mean() < self.min_fraction:
            warnings.warn(
                "No object region stands out from the mean good image (the image matches it too closely, or the "
                "difference is too small): synthetic defects may be placed anywhere in the image.",
                UserWarning,
                stacklevel=2,
            )
            return np.ones((height, width), dtype=bool)
        return cv2.resize(region.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def _region_or_all(image: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    return np.ones(image.shape[:2], dtype=bool) if region is None else region


def _random_point(region: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    rows, cols = np.nonzero(region)
    index = int(rng.integers(rows.size))
    return float(rows[index]), float(cols[index])


def _contrasting_colour(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark on bright objects, bright on dark ones; colour images get a random shift per channel."""
    level = rng.uniform(0, 50) if _gray(image)[region].mean() > 127 else rng.uniform(205, 255)
    channels = 1 if image.ndim == 2 else image.shape[2]
    return np.clip(level + rng.uniform(-40, 40, size=channels) * (channels > 1), 0, 255)


def draw_line(
    image: np.ndarray,
    rng: np.random.Generator,
    region: np.ndarray | None = None,
    width: tuple[float, float] = (2.0, 6.0),
    length: tuple[float, float] = (0.1, 0.35),
    curvature: tuple[float, float] = (-0.3, 0.3),
    colour: Sequence[float] | float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A thin stroke, like a scratch or a hair, centred inside ``region``.

    Args:
        image: ``uint8`` image, grey or colour.
        rng: Source of randomness (same state, same line).
        region: Where the line may go (``None``: anywhere).
        width: Range of the stroke width in pixels.
        length: Range of the length as a fraction of the shorter image side.
        curvature: Range of the bow (sagitta) as a fraction of the length; 0 is straight.
        colour: Grey level or per-channel colour; ``None`` picks one that contrasts with the object.
    """
    height, width_px = image.shape[:2]
    region = _region_or_all(image, region)
    centre_y, centre_x = _random_point(region, rng)
    half = rng.uniform(*length) * min(height, width_px) / 2
    angle = rng.uniform(0, math.pi)
    bow = rng.uniform(*curvature) * 2 * half
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    centre = np.array([centre_x, centre_y])
    steps = np.linspace(-1.0, 1.0, 64)[:, None]
    # A parabola through both ends, bowed by ``bow`` at the middle.
    points = centre + steps * half * direction + (1 - steps**2) * bow * normal
    centreline = np.ones((height, width_px), dtype=np.uint8)
    cv2.polylines(centreline, [np.rint(points).astype(np.int32)], isClosed=False, color=0, thickness=1)
    # cv2's own thick lines grow in odd steps (thickness 3 draws 5 pixels): measure the width instead.
    distance = cv2.distanceTransform(centreline, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    stroke = distance < max(1.0, rng.uniform(*width)) / 2
    paint = _contrasting_colour(image, region, rng) if colour is None else np.asarray(colour, dtype=np.float32)
    painted = _as_float(image).copy()
    painted[stroke] = paint if image.ndim == 3 else float(np.mean(paint))
    return _finish(image, painted, region & stroke)


def rotate_locally(
    image: np.ndarray,
    rng: np.random.Generator,
    region: np.ndarray | None = None,
    radius: tuple[float, float] = (0.06, 0.15),
    angle: tuple[float, float] = (45.0, 120.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a disc of the object about its centre; the rotation fades to zero at the rim (no seam).

    Args:
        image: ``uint8`` image, grey or colour.
        rng: Source of randomness.
        region: Where the disc centre may lie, and what may change (``None``: anywhere).
        radius: Range of the disc radius as a fraction of the shorter image side.
        angle: Range of the rotation at the centre, in degrees (either direction).
    """
    region = _region_or_all(image, region)
    height, width = region.shape
    centre_y, centre_x = _random_point(region, rng)
    disc_radius = max(3.0, rng.uniform(*radius) * min(height, width))
    turn = math.radians(rng.uniform(*angle)) * rng.choice([-1.0, 1.0])
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = rows - centre_y, cols - centre_x
    distance = np.sqrt(dx**2 + dy**2)
    falloff = np.clip(1.0 - distance / disc_radius, 0.0, 1.0) ** 2
    theta = turn * falloff
    cos, sin = np.cos(theta), np.sin(theta)
    source_x = (centre_x + cos * dx - sin * dy).astype(np.float32)
    source_y = (centre_y + sin * dx + cos * dy).astype(np.float32)
    warped = cv2.remap(_as_float(image), source_x, source_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return _finish(image, warped, region & (distance < disc_radius))


def _perlin(height: int, width: int, rng: np.random.Generator, scale: int) -> torch.Tensor:
    """Perlin noise from anomalib, seeded from ``rng`` without touching torch's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**31)))
        return generate_perlin_noise(height, width, scale=(scale, scale), device=torch.device("cpu"))


def perlin_blob(
    image: np.ndarray,
    rng: np.random.Generator,
    region: np.ndarray | None = None,
    blend: tuple[float, float] = (0.5, 1.0),
    scale: tuple[int, int] = (2, 5),
) -> tuple[np.ndarray, np.ndarray]:
    """A Perlin-shaped blob (as in anomalib's DRAEM augmenter) filled with a Perlin texture.

    Args:
        image: ``uint8`` image, grey or colour.
        rng: Source of randomness.
        region: What may change (``None``: anywhere).
        blend: Range of the texture's opacity.
        scale: Range of the noise scale exponent (blob grid of ``2 ** scale`` cells; larger is smaller blobs).
    """
    region = _region_or_all(image, region)
    height, width = region.shape
    shape_noise = _perlin(height, width, rng, 2 ** int(rng.integers(scale[0], scale[1])))
    blob = (shape_noise > 0.5).numpy()
    texture = (_perlin(height, width, rng, 2 ** int(rng.integers(scale[0], scale[1]))).numpy() + 1.0) * 127.5
    channels = 1 if image.ndim == 2 else image.shape[2]
    tint = rng.uniform(0.5, 1.0, size=channels)
    fill = texture if image.ndim == 2 else texture[..., None] * tint
    opacity = rng.uniform(*blend)
    blended = (1 - opacity) * _as_float(image) + opacity * fill
    return _finish(image, blended, region & blob)


_GENERATORS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "line": draw_line,
    "distortion": rotate_locally,
    "perlin": perlin_blob,
}


def add_defect(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    region: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One defect of ``kind`` (see :data:`DEFECT_KINDS`); retried until it changes at least one pixel.

    Raises:
        ValueError: Unknown kind, or the image cannot be changed there (e.g. a flat region for a distortion).
    """
    if kind not in _GENERATORS:
        msg = f"Unknown defect kind {kind!r}; choose from {DEFECT_KINDS}."
        raise ValueError(msg)
    for _ in range(_ATTEMPTS):
        defective, mask = _GENERATORS[kind](image, rng, region)
        if mask.any():
            return defective, mask
    msg = f"A {kind} defect changed no pixel in {_ATTEMPTS} attempts: the object region is too flat or too small."
    raise ValueError(msg)


def check_image_size(height: int, width: int) -> None:
    """Refuse images smaller than :data:`MIN_IMAGE_SIDE`, where a defect would cover most of the image."""
    if min(height, width) < MIN_IMAGE_SIDE:
        msg = (
            f"Images of {height} x {width} pixels are too small for synthetic defects: the shorter side must be at "
            f"least {MIN_IMAGE_SIDE} pixels. Resize them larger in the pre-processor (e.g. --model.image_size)."
        )
        raise ValueError(msg)


def _defect_anywhere_if_needed(
    image: np.ndarray, kind: str, rng: np.random.Generator, region: np.ndarray | None, allow_unchanged: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """A defect inside ``region``, else anywhere; ``None`` (when allowed) if the image cannot take one at all."""
    try:
        return add_defect(image, kind, rng, region)
    except ValueError:
        if region is None and not allow_unchanged:
            raise
    if region is not None:
        logger.info("A %s defect could not be made inside the object region; drawing it anywhere.", kind)
        try:
            return add_defect(image, kind, rng, None)
        except ValueError:
            if not allow_unchanged:
                raise
    return None


def add_defects_to_batch(
    images: torch.Tensor,
    kinds: Sequence[str | None],
    rng: np.random.Generator,
    region_finder: ObjectRegionFinder | None = None,
    allow_unchanged: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw defect ``kinds[i]`` on image ``i`` of a torch batch, for training on defects made on the fly.

    ``images`` is ``(B, C, H, W)`` with values in [0, 1] (before normalisation; a resize's slight
    overshoot is clipped). Every image,
    defective or not, is rounded to 8 bits as the generator works on ``uint8``; ``None`` leaves
    an image otherwise unchanged, so good and defective samples differ only by the defect.
    When a defect cannot be made inside the object (too flat there) it is retried on the whole
    image before giving up; with ``allow_unchanged`` that image is then returned unchanged with
    an empty mask (for a caller that leaves such samples out) instead of raising.

    Returns:
        The images (same dtype and device) and the masks of changed pixels, ``(B, 1, H, W)`` bool.
    """
    if images.ndim != 4 or len(kinds) != images.shape[0]:
        msg = f"Expected a (B, C, H, W) batch and one kind per image, got {tuple(images.shape)} and {len(kinds)}."
        raise ValueError(msg)
    if float(images.min()) < -_RESAMPLING_SLACK or float(images.max()) > 1.0 + _RESAMPLING_SLACK:
        msg = (
            f"Synthetic defects are drawn on images with values in [0, 1], got [{float(images.min()):.3g}, "
            f"{float(images.max()):.3g}]: the images were normalised before the defects (normalise after them)."
        )
        raise ValueError(msg)
    check_image_size(*images.shape[-2:])
    unknown = sorted({kind for kind in kinds if kind is not None} - set(DEFECT_KINDS))
    if unknown:
        msg = f"Unknown defect kind {unknown}; choose from {DEFECT_KINDS}."
        raise ValueError(msg)
    arrays = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    masks = np.zeros((len(kinds), *arrays.shape[1:3]), dtype=bool)
    results = []
    for index, (array, kind) in enumerate(zip(arrays, kinds, strict=True)):
        image = array[..., 0] if array.shape[2] == 1 else array
        if kind is not None:
            region = region_finder(image) if region_finder is not None else None
            made = _defect_anywhere_if_needed(image, kind, rng, region, allow_unchanged)
            if made is not None:
                image, masks[index] = made
        results.append(image.reshape(array.shape))
    defective = torch.from_numpy(np.stack(results)).permute(0, 3, 1, 2).to(images.device, images.dtype) / 255
    return defective, torch.from_numpy(masks)[:, None].to(images.device)


def check_share(share: float) -> None:
    """Refuse a held-out share outside (0, 1]: the one rule, checked by the command before anything is read."""
    if not 0.0 < share <= 1.0:
        msg = f"The held-out share must lie in (0, 1], got {share}."
        raise ValueError(msg)


def check_kinds(kinds: Sequence[str]) -> None:
    """Refuse unknown defect kinds, or none, naming the kinds there are."""
    unknown = sorted(set(kinds) - set(DEFECT_KINDS))
    if unknown or not kinds:
        msg = f"Unknown or no defect kinds {unknown or list(kinds)}; choose from {', '.join(DEFECT_KINDS)}."
        raise ValueError(msg)


def hold_out(paths: Sequence[Path], share: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """``(kept, held out)``: a seeded random ``share`` of ``paths`` (at least one) is held out, both in name order."""
    check_share(share)
    order = np.random.default_rng(seed).permutation(len(paths))
    count = max(1, round(share * len(paths)))
    return [paths[index] for index in sorted(order[count:])], [paths[index] for index in sorted(order[:count])]


def make_synthetic_split(
    good_images: Sequence[str | Path],
    category_dir: str | Path,
    split: str = "test",
    kinds: Sequence[str] = DEFECT_KINDS,
    seed: int = 0,
    region_finder: ObjectRegionFinder | None = None,
) -> dict[str, int]:
    """Write good images and one synthetic defect per image under ``category_dir`` in the MVTec AD layout.

    Image ``i`` gets defect ``kinds[i % len(kinds)]``, so kinds are balanced. Written files::

        category_dir/<split>/good/<i>.png              the good image itself
        category_dir/<split>/<kind>/<i>.png            the same image with a defect
        category_dir/ground_truth/<kind>/<i>_mask.png  its exact mask (0/255)

    With ``split="test"`` anomalib's ``MVTecAD`` reads it as the test split, and as the validation
    split with ``val_split_mode="same_as_test"``.

    Args:
        good_images: Paths of good images (not used for training, so the scores are honest).
        category_dir: Output category folder.
        split: Split folder name.
        kinds: Defect kinds to cycle through.
        seed: Same seed, same files.
        region_finder: Object finder; by default built from ``good_images`` themselves.

    Returns:
        Number of images written per label (``good`` and each kind).
    """
    if not good_images:
        msg = "No good images to build synthetic defects from."
        raise ValueError(msg)
    check_kinds(kinds)
    paths = [Path(path) for path in good_images]
    region_finder = region_finder or ObjectRegionFinder.from_images(read_gray_or_rgb(path) for path in paths)
    rng = np.random.default_rng(seed)
    category_dir = Path(category_dir)
    counts = {"good": 0, **dict.fromkeys(kinds, 0)}
    for index, path in enumerate(paths):
        image = read_gray_or_rgb(path)
        name = f"{index:03d}"
        _save(image, category_dir / split / "good" / f"{name}.png")
        counts["good"] += 1
        kind = kinds[index % len(kinds)]
        defective, mask = add_defect(image, kind, rng, region_finder(image))
        _save(defective, category_dir / split / kind / f"{name}.png")
        _save(mask.astype(np.uint8) * 255, category_dir / "ground_truth" / kind / f"{name}_mask.png")
        counts[kind] += 1
    logger.info("Synthetic split written to %s: %s", category_dir / split, counts)
    return counts


def hold_out_with_defects(
    good_images: Sequence[str | Path],
    category_dir: str | Path,
    share: float,
    kinds: Sequence[str] = DEFECT_KINDS,
    seed: int = 0,
) -> tuple[list[Path], list[Path], dict[str, int]]:
    """Hold out a seeded ``share`` of the good images and write the synthetic test split from them.

    The one hold-out step, so a seed gives the same defects wherever it is used. The object is found
    from all the good images, held out or not: they are all normal, and more of them give a steadier
    mean image. Returns ``(kept, held out, counts per label)``; the kept images are for fitting.
    """
    paths = [Path(path) for path in good_images]
    kept, held_out = hold_out(paths, share, seed)
    finder = ObjectRegionFinder.from_images(read_gray_or_rgb(path) for path in paths)
    counts = make_synthetic_split(held_out, category_dir, "test", kinds, seed, finder)
    return kept, held_out, counts


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
