"""Score a folder of new images with an exported model and write heatmap overlays and a CSV.

The exported graph resizes every image to the model's input size (256 x 256 by default) before
scoring, so the anomaly map it returns has that size, whatever the image's. For overlays and
measurements on the original image, the map is resized back to the original height and width
(bilinear, ``map_to_original_size``); scores and labels need no mapping.

Nothing is lost or overwritten: each row of ``predictions.csv`` is written (and flushed) as soon
as its image is scored; a file that cannot be read or scored gets a row with the reason, the run
goes on and ends with a non-zero status; an output folder holding an earlier run's results is
refused unless asked to replace them; and each overlay mirrors its image's relative path as a PNG
(``sub/04.png`` gives ``overlays/sub/04.png``, ``sub/part.jpg`` gives ``overlays/sub/part.png``), with the
image's format in the name only where two images would otherwise share one (``part.png`` and
``part.jpg`` give ``part.png`` and ``part_jpg.png``), so no two images share one.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain, count
from pathlib import Path

import numpy as np
import torch
from anomalib.deploy import OpenVINOInferencer, TorchInferencer
from anomalib.visualization.image.functional import overlay_image, visualize_anomaly_map
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo
from torch.nn import functional as F  # noqa: N812
from tqdm import tqdm

from ..data.images import IMAGE_SUFFIXES, UnreadableImageError, list_images, read_rgb
from .precision import EXACT, openvino_config

RESULTS_FILE = "predictions.csv"
OVERLAY_FOLDER = "overlays"
CSV_COLUMNS = ("image", "pred_score", "pred_label", "error")


@dataclass(frozen=True)
class Prediction:
    """One image's result, with the anomaly map at the image's original size."""

    path: Path
    pred_score: float
    pred_label: bool
    anomaly_map: np.ndarray


@dataclass
class PredictionRun:
    """What a folder run did: how many images were scored and flagged, and which were skipped and why."""

    scored: int = 0
    flagged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def input_images(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Image files in ``folder`` and its sub-folders (not under ``exclude``), sorted; none is an error."""
    if not folder.is_dir():
        msg = f"{folder} is not a folder: pass --input a folder of images."
        raise FileNotFoundError(msg)
    images = list_images(folder, recursive=True, exclude=exclude)
    if not images:
        msg = f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder} or its sub-folders."
        raise FileNotFoundError(msg)
    return images


def map_to_original_size(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a model-resolution anomaly map ``(..., h, w)`` back to the image's ``(height, width)``."""
    tensor = torch.as_tensor(np.asarray(anomaly_map, dtype=np.float32)).reshape(1, 1, *np.shape(anomaly_map)[-2:])
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def load_inferencer(model_path: Path, precision: str = EXACT) -> OpenVINOInferencer | TorchInferencer:
    """Anomalib's inferencer for an export: OpenVINO for ``.xml``/``.onnx`` (at ``precision``), torch for ``.pt``."""
    if not model_path.is_file():
        msg = f"Exported model not found: {model_path}"
        raise FileNotFoundError(msg)
    if model_path.suffix in {".xml", ".onnx"}:
        return OpenVINOInferencer(path=model_path, device="CPU", config=openvino_config(precision))
    if model_path.suffix == ".pt":
        return TorchInferencer(path=model_path, device="auto")
    msg = f"Unsupported export {model_path.name}: use model.xml (OpenVINO), model.onnx or model.pt."
    raise ValueError(msg)


def fixed_input_size(inferencer: OpenVINOInferencer | TorchInferencer) -> tuple[int, int] | None:
    """The ``(height, width)`` an OpenVINO/ONNX export was fixed to (``anomalib export --input_size``), else ``None``.

    Exports without an input size take any size and resize inside the graph; torch exports always do.
    """
    if not isinstance(inferencer, OpenVINOInferencer):
        return None
    shape = inferencer.model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or len(shape) != 4 or shape[2].is_dynamic or shape[3].is_dynamic:
        return None
    return shape[2].get_length(), shape[3].get_length()


def _wrong_size_message(model_path: Path | None, size: tuple[int, int], example: Path, shape: tuple[int, int]) -> str:
    export = f"{model_path}" if model_path is not None else "The model"
    return (
        f"{export} was exported for {size[0]} x {size[1]} images only (a fixed input size), but {example} is "
        f"{shape[0]} x {shape[1]} (height x width). Export again without an input size (anomalib export without "
        f"--input_size, or to_openvino/to_onnx without input_size), which takes images of any size and resizes them "
        f"as the model was trained, or resize the images to {size[0]} x {size[1]} yourself."
    )


def refuse_other_sizes(inferencer: OpenVINOInferencer | TorchInferencer, images: list[Path], model_path: Path) -> None:
    """Stop before scoring if an export of fixed input size meets images of another size (read from headers only).

    Otherwise every image would fail on the runtime's raw shape error. Files whose header cannot be read are
    left to the scoring loop, which records them.
    """
    size = fixed_input_size(inferencer)
    if size is None:
        return
    others = []
    for path in images:
        try:
            with Image.open(path) as image:
                shape = (image.height, image.width)
        except (OSError, SyntaxError):
            continue
        if shape != size:
            others.append((path, shape))
    if others:
        path, shape = others[0]
        msg = _wrong_size_message(model_path, size, path, shape)
        raise ValueError(f"{len(others)} of {len(images)} images have another size. {msg}")


def predict_image(inferencer: OpenVINOInferencer | TorchInferencer, path: Path) -> tuple[Prediction, np.ndarray]:
    """Score one file (read with 16-bit files scaled); return the prediction and the RGB image it scored."""
    original = read_rgb(path)
    size = fixed_input_size(inferencer)
    if size is not None and original.shape[:2] != size:
        raise ValueError(_wrong_size_message(None, size, path, original.shape[:2]))
    result = inferencer.predict(original)
    height, width = original.shape[:2]
    prediction = Prediction(
        path=path,
        pred_score=float(np.asarray(result.pred_score).reshape(-1)[0]),
        pred_label=bool(np.asarray(result.pred_label).reshape(-1)[0]),
        anomaly_map=map_to_original_size(np.asarray(result.anomaly_map), height, width),
    )
    return prediction, original


def overlay_paths(relatives: Iterable[Path]) -> dict[Path, Path]:
    """Each image's overlay path under ``overlays/``: the image's relative path as a PNG, never shared.

    ``sub/04.png`` keeps its name (not ``04.png.png``) and ``sub/part.jpg`` becomes ``sub/part.png``. PNG images
    claim their names first; an image whose name is taken keeps its format in it (``part_jpg.png``), then a
    number. Names are compared case-insensitively, so no overlay replaces another on such file systems either.
    """
    ordered = sorted(relatives, key=lambda relative: (relative.suffix != ".png", relative.as_posix()))
    taken: set[str] = set()
    paths: dict[Path, Path] = {}
    for relative in ordered:
        with_format = f"{relative.stem}_{relative.suffix.lstrip('.').lower()}"
        candidates = chain(
            (relative.with_suffix(".png"), relative.with_name(f"{with_format}.png")),
            (relative.with_name(f"{with_format}_{number}.png") for number in count(2)),
        )
        path = next(candidate for candidate in candidates if candidate.as_posix().casefold() not in taken)
        taken.add(path.as_posix().casefold())
        paths[relative] = path
    return paths


def _verdict(prediction: Prediction) -> str:
    return f"score {prediction.pred_score:.3f}  {'ANOMALOUS' if prediction.pred_label else 'normal'}"


def render_overlay(prediction: Prediction, original: np.ndarray) -> Image.Image:
    """The heatmap over the image, with a banner giving the score and the label (red when anomalous)."""
    heatmap = visualize_anomaly_map(np.clip(prediction.anomaly_map, 0.0, 1.0))
    base = Image.fromarray((original * 255).round().astype(np.uint8))
    overlay = overlay_image(base, heatmap, alpha=0.4).convert("RGB")
    font = ImageFont.load_default(size=max(10, overlay.width // 24))
    draw = ImageDraw.Draw(overlay)
    left, top, right, bottom = draw.textbbox((0, 0), _verdict(prediction), font=font)
    padding = max(2, (bottom - top) // 4)
    banner = (180, 0, 0) if prediction.pred_label else (0, 110, 0)
    draw.rectangle((0, 0, right - left + 2 * padding, bottom - top + 2 * padding), fill=banner)
    draw.text((padding - left, padding - top), _verdict(prediction), fill=(255, 255, 255), font=font)
    return overlay


def _save_overlay(overlay: Image.Image, prediction: Prediction, relative: Path, path: Path) -> None:
    info = PngInfo()  # the figures in the file too, for tools that read overlays without the CSV
    info.add_text("image", relative.as_posix())
    info.add_text("pred_score", f"{prediction.pred_score:.6f}")
    info.add_text("pred_label", str(int(prediction.pred_label)))
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay.save(path, pnginfo=info)


class UnwritableOutputError(OSError):
    """The output folder cannot be created or written to: found before any image is scored, not at the first."""


def refuse_unwritable_output(output: Path) -> None:
    """Create ``output`` and write a scratch file in it, or say which folder and the way out.

    A probe rather than permission bits: they do not stop root, and do not see read-only mounts.
    """
    if output.exists() and not output.is_dir():
        msg = f"The output {output} is a file, not a folder: choose another --output folder."
        raise UnwritableOutputError(msg)
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as error:
        msg = (
            f"Cannot write to the output folder {output} ({error.strerror or error}): choose another --output "
            f"folder, or fix its permissions."
        )
        raise UnwritableOutputError(msg) from error


def check_output(output: Path, overwrite: bool = False) -> list[Path]:
    """Refuse an output folder holding an earlier run's results (unless ``overwrite``) or that cannot be written to.

    Returns the earlier results that ``overwrite`` replaces; nothing is removed here, so that a later refusal
    (the model's input size, say) leaves them in place.
    """
    earlier = [output / name for name in (RESULTS_FILE, OVERLAY_FOLDER) if (output / name).exists()]
    if earlier and not overwrite:
        names = " and ".join(f"{path.name}{'/' if path.is_dir() else ''}" for path in earlier)
        msg = (
            f"{output} already holds the results of an earlier run ({names}): choose a new --output folder, "
            f"or pass --overwrite to replace them."
        )
        raise FileExistsError(msg)
    refuse_unwritable_output(output)
    return earlier


def remove_earlier_results(earlier: list[Path]) -> None:
    """Remove the earlier run's ``predictions.csv`` and ``overlays/`` that ``check_output`` found."""
    for path in earlier:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def prepare_output(output: Path, overwrite: bool = False) -> None:
    """:func:`check_output`, then remove the earlier results it found."""
    remove_earlier_results(check_output(output, overwrite))


def predict_folder(
    model_path: Path, folder: Path, output: Path, overwrite: bool = False, precision: str = EXACT
) -> PredictionRun:
    """Score every image under ``folder``; write overlays and ``predictions.csv`` (row by row) to ``output``.

    A file that cannot be read or scored is skipped and recorded with its reason (in the CSV's
    ``error`` column and in the returned run); everything else goes on.
    """
    if not model_path.is_file():
        msg = f"Exported model not found: {model_path}"
        raise FileNotFoundError(msg)
    images = input_images(folder, exclude=output)
    earlier = check_output(output, overwrite)
    inferencer = load_inferencer(model_path, precision)
    refuse_other_sizes(inferencer, images, model_path)
    remove_earlier_results(earlier)
    run = PredictionRun()
    overlays = overlay_paths(path.relative_to(folder) for path in images)
    with (output / RESULTS_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for path in tqdm(images, desc="Scoring", unit="image"):
            relative = path.relative_to(folder)
            try:
                prediction, original = predict_image(inferencer, path)
                overlay = output / OVERLAY_FOLDER / overlays[relative]
                _save_overlay(render_overlay(prediction, original), prediction, relative, overlay)
            except Exception as error:  # one bad file must not cost the others' results
                reason = str(error) if isinstance(error, UnreadableImageError) else f"{type(error).__name__}: {error}"
                run.skipped.append((relative.as_posix(), reason))
                writer.writerow([relative.as_posix(), "", "", reason])
            else:
                run.scored += 1
                run.flagged += prediction.pred_label
                writer.writerow([relative.as_posix(), f"{prediction.pred_score:.6f}", int(prediction.pred_label), ""])
            handle.flush()
    return run
