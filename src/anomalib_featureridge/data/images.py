"""Reading image files the one way this package does: 16-bit files scaled to 8 bits, never clipped.

Industrial cameras often write 16-bit grayscale PNG or TIFF files. PIL opens them in an integer
mode (``I;16``, ``I``) whose ``convert("RGB")``, which anomalib's datasets and inferencers use,
clips every value above 255: the image comes out white. Here such files are scaled (value / 257,
rounded: 65535 becomes 255); every other file is read as anomalib reads it, so 8-bit files give
exactly the values a model was trained on. (PIL already scales 16-bit colour files to 8 bits.)

anomalib's datasets do their own reading, so training on 16-bit grayscale files cannot be fixed
here: :func:`refuse_high_bit_depth` stops a run on them, and :func:`convert_to_8bit` (the
``anomalib-featureridge to-8bit`` command) is the way out.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_SINGLE_CHANNEL_MODES = frozenset({"1", "L", "F"} | HIGH_BIT_DEPTH_MODES)
_FULL_SCALE_16_BIT = 65535


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of the image suffixes this package reads."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: str | Path, recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """The image files in ``folder`` (with ``recursive``, in its sub-folders too, none under ``exclude``), sorted.

    The one lister of this package: every command that takes a folder of images sees the same files.
    """
    folder = Path(folder)
    excluded = exclude.resolve() if exclude is not None else None
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.is_file() and is_image_file(path) and (excluded is None or excluded not in path.resolve().parents)
    )


def _scaled_to_8_bit(image: Image.Image, path: Path) -> Image.Image:
    values = np.asarray(image, dtype=np.int64)
    if values.min() < 0 or values.max() > _FULL_SCALE_16_BIT:
        msg = (
            f"{path} holds {image.mode} values from {values.min()} to {values.max()}, outside the 16-bit range: "
            f"convert it to an 8-bit image first."
        )
        raise ValueError(msg)
    return Image.fromarray(((values * 255 + _FULL_SCALE_16_BIT // 2) // _FULL_SCALE_16_BIT).astype(np.uint8))


class UnreadableImageError(OSError):
    """An image file that cannot be decoded (truncated, damaged, not an image): the message names it."""


def unreadable_message(path: str | Path, error: BaseException, folder: str = "its folder") -> str:
    """Why ``path`` cannot be read and the way out; PIL's own messages ("image file is truncated") name no file."""
    return (
        f"Cannot read {path}: {error}. The file is damaged, incomplete (an interrupted copy?) or not an image: "
        f"copy it again from its source, or remove it from {folder}, then run again."
    )


def decoded(path: Path) -> Image.Image:
    """The opened and fully decoded file; decoding errors name the file (a missing file stays FileNotFoundError)."""
    try:
        image = Image.open(path)
    except UnidentifiedImageError as error:
        raise UnreadableImageError(unreadable_message(path, error)) from error
    try:
        image.load()
    except (OSError, SyntaxError) as error:
        image.close()
        raise UnreadableImageError(unreadable_message(path, error)) from error
    return image


def open_8_bit(path: str | Path) -> Image.Image:
    """The file as an 8-bit PIL image (``L``, ``RGB``, ... as stored), high bit depths scaled, not clipped.

    A file that cannot be decoded raises :class:`UnreadableImageError` naming it.
    """
    path = Path(path)
    with decoded(path) as image:
        if image.mode in HIGH_BIT_DEPTH_MODES:
            return _scaled_to_8_bit(image, path)
        if image.mode == "F":
            msg = f"{path} is a floating-point image, whose value range is unknown: convert it to 8 or 16 bits first."
            raise ValueError(msg)
        return image.copy()


def read_gray_or_rgb(path: str | Path) -> np.ndarray:
    """A ``uint8`` array: ``(H, W)`` for single-channel files, ``(H, W, 3)`` otherwise."""
    image = open_8_bit(path)
    return np.asarray(image.convert("L" if image.mode in _SINGLE_CHANNEL_MODES else "RGB"))


def read_rgb(path: str | Path) -> np.ndarray:
    """A float32 ``(H, W, 3)`` RGB array in [0, 1], as anomalib's ``read_image`` gives for 8-bit files."""
    return np.asarray(open_8_bit(path).convert("RGB"), dtype=np.float32) / 255.0


def high_bit_depth_mode(path: str | Path) -> str | None:
    """The PIL mode of a file that anomalib would clip (from its header only), else ``None``."""
    try:
        with Image.open(path) as image:
            return image.mode if image.mode in HIGH_BIT_DEPTH_MODES else None
    except OSError:  # unreadable: the loader reports it with its own error
        return None


def _dataset_paths(dataset: Any) -> list[str]:
    samples = getattr(dataset, "samples", None)
    if samples is not None and "image_path" in getattr(samples, "columns", ()):
        return [str(path) for path in samples["image_path"]]
    return [str(path) for path in getattr(dataset, "image_filenames", ())]


def refuse_high_bit_depth(datasets: Iterable[Any]) -> None:
    """Stop before anomalib's reader turns 16-bit grayscale files into white frames; name them and the fix."""
    clipped = [
        (path, mode) for dataset in datasets for path in _dataset_paths(dataset) if (mode := high_bit_depth_mode(path))
    ]
    if not clipped:
        return
    path, mode = clipped[0]
    msg = (
        f"{len(clipped)} image(s) are 16-bit grayscale (PIL mode {mode}), e.g. {path}. anomalib's datasets read "
        f"images with PIL's convert('RGB'), which clips every value above 255 to white, so the model would see "
        f"blank frames. Convert the dataset to 8-bit first (scaled, not clipped; the folder layout is kept): "
        f"`anomalib-featureridge to-8bit DATASET_ROOT NEW_ROOT`, then point the datamodule's root at NEW_ROOT."
    )
    raise ValueError(msg)


def convert_to_8bit(source: str | Path, target: str | Path) -> int:
    """Copy every image under ``source`` to the same place under ``target``, 16-bit files scaled to 8 bits.

    Files that are already 8-bit are copied byte for byte; nothing in ``target`` is overwritten.
    Returns the number of files converted.
    """
    source, target = Path(source).resolve(), Path(target).resolve()
    if not source.is_dir():
        msg = f"{source} is not a folder."
        raise FileNotFoundError(msg)
    if target == source or source in target.parents:
        msg = f"The target {target} must lie outside the source folder {source}."
        raise ValueError(msg)
    images = sorted(path for path in source.rglob("*") if path.is_file() and is_image_file(path))
    existing = [target / path.relative_to(source) for path in images if (target / path.relative_to(source)).exists()]
    if existing:
        msg = f"{len(existing)} file(s) already exist under {target}, e.g. {existing[0]}: choose a new target folder."
        raise FileExistsError(msg)
    return sum(copy_as_8_bit(path, target / path.relative_to(source)) for path in images)


def copy_as_8_bit(path: Path, destination: Path) -> bool:
    """Copy one image, scaled to 8 bits if it is 16-bit (then ``True``), else byte for byte."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if high_bit_depth_mode(path):
        open_8_bit(path).save(destination)
        return True
    shutil.copy2(path, destination)
    return False


def _unreadable(path: str | Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError):
        return True
    return False


class NamingUnreadableFiles:
    """An anomalib dataset whose read errors name the file and the way out (PIL's say only "image file is truncated").

    Everything but item access is the wrapped dataset's (length, samples, collate function, ...),
    read and written: anomalib sets ``augmentations`` on the datamodule's datasets after setup, and
    that must reach the dataset that applies them. Nothing is read ahead, so a large dataset costs
    nothing extra.
    """

    def __init__(self, dataset: Any) -> None:
        object.__setattr__(self, "dataset", dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.dataset, name, value)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except (OSError, SyntaxError) as error:
            sample = self.dataset.samples.iloc[index]
            mask = sample.get("mask_path")
            mask_failed = isinstance(mask, str) and mask and not _unreadable(sample.image_path) and _unreadable(mask)
            path = mask if mask_failed else sample.image_path
            raise OSError(unreadable_message(path, error, "the dataset folder")) from error


def name_unreadable_files(datamodule: Any) -> None:
    """Wrap the datamodule's datasets so that a file that cannot be read is named in the error."""
    for name in ("train_data", "val_data", "test_data"):
        dataset = getattr(datamodule, name, None)
        if dataset is not None and hasattr(dataset, "samples") and not isinstance(dataset, NamingUnreadableFiles):
            setattr(datamodule, name, NamingUnreadableFiles(dataset))
