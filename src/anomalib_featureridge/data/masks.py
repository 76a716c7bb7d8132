"""Ground-truth masks, checked where the datasets are read: present, the size of their image, binary.

anomalib reads a mask as ``convert("L") > 0``, so a JPEG mask's compression noise or a grey
background becomes defect and the pixel metrics are wrong without a word; a mask of another size
than its image is resized with it, which shifts the defect; and a defect image without a mask stops
anomalib's dataset builder with a pandas error that names no file. Here each case is refused by
name, once per run, before any batch.

The checks read what anomalib's ``MVTecAD`` and ``Folder`` datasets share: their ``samples``
(``image_path``, ``mask_path``). Each mask is decoded once (in threads; cached by path, size and
modification time, so the test after a fit costs only a ``stat`` per file); images are opened for
their header only.

Masks that are not binary may be thresholded instead of refused: set the environment variable
``ANOMALIB_FEATURERIDGE_MASK_THRESHOLD`` to a grey value from 1 to 255; pixels at or above it are
defect. An environment variable because the datamodules are anomalib's (no setting can be added to
them) and a model setting would differ per model and be saved with its checkpoint, while a mask is
a property of the data: the variable reaches every model, ``anomalib train``/``test`` and the
Python API alike. The thresholded copies are written to a temporary folder, which the datasets then
read; the run reports the threshold once.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .images import decoded

logger = logging.getLogger(__name__)

MASK_THRESHOLD_VARIABLE = "ANOMALIB_FEATURERIDGE_MASK_THRESHOLD"
_WORKERS = 8


@dataclass(frozen=True)
class MaskContent:
    """What the checks need of one mask file: its size and the grey values anomalib's reader sees."""

    size: tuple[int, int]
    values: tuple[int, ...]

    @property
    def binary(self) -> bool:
        """At most two values, and when two, one of them 0 (anomalib counts everything above 0 as defect)."""
        return len(self.values) == 1 or (len(self.values) == 2 and self.values[0] == 0)


_contents: dict[tuple[str, int, int], MaskContent] = {}
_thresholded: dict[tuple[str, int, int, int], str] = {}


def _key(path: str) -> tuple[str, int, int]:
    status = os.stat(path)
    return path, status.st_mtime_ns, status.st_size


def mask_content(path: str) -> MaskContent:
    """The mask's size and grey values (as ``convert("L")``, anomalib's reading), decoded once per file version."""
    key = _key(path)
    if key not in _contents:
        with decoded(Path(path)) as image:
            histogram = image.convert("L").histogram()
            _contents[key] = MaskContent(image.size, tuple(value for value, count in enumerate(histogram) if count))
    return _contents[key]


def image_size(path: str) -> tuple[int, int]:
    """``(width, height)`` from the file's header, without decoding its pixels."""
    with Image.open(path) as image:
        return image.size


def mask_threshold() -> int | None:
    """The grey value set in ``ANOMALIB_FEATURERIDGE_MASK_THRESHOLD`` (1 to 255), or ``None`` when it is not set."""
    text = os.environ.get(MASK_THRESHOLD_VARIABLE, "").strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 255:
        msg = (
            f"{MASK_THRESHOLD_VARIABLE}={text!r} is not a grey value from 1 to 255: set it to the value at or above "
            f"which a mask pixel is defect (e.g. 128), or unset it to have masks that are not binary refused."
        )
        raise ValueError(msg)
    return int(text)


def _mask_pairs(datasets: Iterable[Any]) -> list[tuple[str, str]]:
    """``(image_path, mask_path)`` for every sample with a mask, each mask once."""
    pairs, seen = [], set()
    for dataset in datasets:
        samples = getattr(dataset, "samples", None)
        if samples is None or "mask_path" not in getattr(samples, "columns", ()):
            continue
        for image, mask in zip(samples["image_path"], samples["mask_path"], strict=True):
            if isinstance(mask, str) and mask and mask not in seen:
                seen.add(mask)
                pairs.append((str(image), mask))
    return pairs


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _refuse_other_sizes(
    pairs: Sequence[tuple[str, str]], masks: Sequence[MaskContent], sizes: Sequence[tuple[int, int]]
) -> None:
    wrong = [(pair, mask.size, size) for pair, mask, size in zip(pairs, masks, sizes, strict=True) if mask.size != size]
    if not wrong:
        return
    (image, mask), mask_size, size = wrong[0]
    msg = (
        f"{len(wrong)} mask(s) differ in size from their image, e.g. the mask {mask} is {_size_text(mask_size)} "
        f"(width x height) but its image {image} is {_size_text(size)}: anomalib would resize the mask with the "
        f"image and misplace the defect. Save each mask at its image's size (or check that masks and images are "
        f"paired by name), then run again."
    )
    raise ValueError(msg)


def _thresholded_copy(mask: str, threshold: int, folder: list[Path]) -> str:
    """A 0/255 copy of the mask, thresholded, in this process's temporary folder (made on first use)."""
    key = (*_key(mask), threshold)
    if key not in _thresholded:
        if not folder:
            folder.append(Path(tempfile.mkdtemp(prefix="anomalib_featureridge_masks_")))
            atexit.register(shutil.rmtree, folder[0], ignore_errors=True)
        with decoded(Path(mask)) as image:
            values = np.asarray(image.convert("L"))
        target = folder[0] / f"{len(_thresholded):06d}_{Path(mask).stem}.png"
        Image.fromarray(((values >= threshold) * 255).astype(np.uint8)).save(target)
        _thresholded[key] = str(target)
    return _thresholded[key]


_folder: list[Path] = []


def check_masks(datasets: Iterable[Any]) -> None:
    """Refuse masks of another size than their image, and masks that are not binary unless a threshold is set.

    With ``ANOMALIB_FEATURERIDGE_MASK_THRESHOLD`` set, masks that are not binary are replaced, in the
    datasets' ``samples``, by thresholded copies, and the run says so once.
    """
    datasets = [dataset for dataset in datasets if dataset is not None and hasattr(dataset, "samples")]
    pairs = _mask_pairs(datasets)
    if not pairs:
        return
    with ThreadPoolExecutor(min(_WORKERS, len(pairs))) as pool:
        masks = list(pool.map(mask_content, [mask for _, mask in pairs]))
        sizes = list(pool.map(image_size, [image for image, _ in pairs]))
    _refuse_other_sizes(pairs, masks, sizes)
    grey = [(mask, content) for (_, mask), content in zip(pairs, masks, strict=True) if not content.binary]
    if not grey:
        return
    example, content = grey[0]
    threshold = mask_threshold()
    described = f"{len(content.values)} grey values from {content.values[0]} to {content.values[-1]}"
    if threshold is None:
        msg = (
            f"{len(grey)} mask(s) are not binary, e.g. {example} holds {described} (a JPEG-compressed or "
            f"anti-aliased mask?): anomalib counts every value above 0 as defect. Save the masks as PNG with the "
            f"values 0 and 255 only, or set {MASK_THRESHOLD_VARIABLE}=128 (a mask pixel at or above it is defect), "
            f"then run again."
        )
        raise ValueError(msg)
    replaced = {mask: _thresholded_copy(mask, threshold, _folder) for mask, _ in grey}
    for dataset in datasets:  # each dataset that holds one (validation may share the test set's masks)
        samples = dataset.samples
        if "mask_path" in samples.columns:  # only those rows: the others keep their None or ""
            rows = samples["mask_path"].isin(list(replaced))
            samples.loc[rows, "mask_path"] = [replaced[mask] for mask in samples.loc[rows, "mask_path"]]
    logger.warning(
        "%d mask(s) are not binary (e.g. %s holds %s): they are thresholded at %d, as %s asks (a pixel at or above "
        "it is defect); the thresholded copies are in %s.",
        len(grey),
        example,
        described,
        threshold,
        MASK_THRESHOLD_VARIABLE,
        _folder[0],
    )


def _files(folder: Path, extensions: Iterable[str], recursive: bool) -> list[Path]:
    """The files anomalib's dataset builders list in ``folder`` (suffixes as they compare them)."""
    if not folder.is_dir():
        return []
    candidates = folder.glob("**/*") if recursive else folder.iterdir()
    return sorted(path for path in candidates if path.is_file() and path.suffix in extensions)


def _unmasked(images: Iterable[Path], masks: Iterable[Path]) -> list[Path]:
    """Images no mask is named after (anomalib's pairing rule: the image's stem is part of the mask's)."""
    stems = [mask.stem for mask in masks]
    return [image for image in images if not any(image.stem in stem for stem in stems)]


def _mvtec_unmasked(datamodule: Any) -> list[tuple[Path, Path]]:
    from anomalib.data.datasets.image.mvtecad import IMG_EXTENSIONS

    category = Path(datamodule.root) / datamodule.category
    missing = []
    for defect in sorted(path for path in (category / "test").glob("*") if path.is_dir() and path.name != "good"):
        folder = category / "ground_truth" / defect.name
        images = _files(defect, IMG_EXTENSIONS, recursive=False)
        missing += [(image, folder) for image in _unmasked(images, _files(folder, IMG_EXTENSIONS, recursive=False))]
    return missing


def _folder_unmasked(datamodule: Any) -> list[tuple[Path, Path]]:
    from anomalib.data.utils.path import IMG_EXTENSIONS, validate_and_resolve_path

    def folders(value: Any) -> list[Path]:
        values = [value] if isinstance(value, str | Path) else list(value or ())
        return [validate_and_resolve_path(folder, datamodule.root) for folder in values]

    extensions = {suffix.lower() for suffix in (datamodule.extensions or IMG_EXTENSIONS)}
    extensions |= {suffix.upper() for suffix in extensions} | {suffix.title() for suffix in extensions}
    try:
        defect_folders, mask_folders = folders(datamodule.abnormal_dir), folders(datamodule.mask_dir)
    except (OSError, ValueError):  # a folder anomalib refuses itself, with its own message
        return []
    if not defect_folders or not mask_folders:
        return []
    masks = [mask for folder in mask_folders for mask in _files(folder, extensions, recursive=True)]
    images = [image for folder in defect_folders for image in _files(folder, extensions, recursive=True)]
    shown = mask_folders[0] if len(mask_folders) == 1 else ", ".join(map(str, mask_folders))
    return [(image, Path(shown)) for image in _unmasked(images, masks)]


def refuse_defect_images_without_masks(datamodule: Any) -> None:
    """Name a defect image that has no mask, and the folder searched, before anomalib builds its datasets.

    anomalib pairs the sorted masks with the sorted defect images; one missing mask stops it with
    ``ValueError: Must have equal len keys and value when setting with an iterable``, which names no file.
    Runs before the datamodule's setup (which raises that error), for ``MVTecAD`` and ``Folder``.
    """
    from anomalib.data import Folder, MVTecAD

    if isinstance(datamodule, MVTecAD):
        missing = _mvtec_unmasked(datamodule)
    elif isinstance(datamodule, Folder):
        missing = _folder_unmasked(datamodule)
    else:
        return
    if not missing:
        return
    image, folder = missing[0]
    msg = (
        f"{len(missing)} defect image(s) have no mask, e.g. {image}: no file in {folder} is named after it "
        f"(like {image.stem}_mask.png or {image.stem}.png; anomalib pairs masks with images by name). Add the "
        f"missing masks, or move those images out of {image.parent}, then run again."
    )
    raise FileNotFoundError(msg)
