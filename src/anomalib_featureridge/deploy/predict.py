"""Score a folder of new images with an exported model and write heatmap overlays and a CSV.

The exported graph resizes every image to the model's input size (256 x 256 by default) before
scoring, so the anomaly map it returns has that size, whatever the image's. For overlays and
measurements on the original image, the map is resized back to the original height and width
(bilinear, ``map_to_original_size``); scores and labels need no mapping.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from anomalib.data.utils import read_image
from anomalib.deploy import OpenVINOInferencer, TorchInferencer
from anomalib.visualization.image.functional import overlay_image, visualize_anomaly_map
from PIL import Image
from torch.nn import functional as F  # noqa: N812
from tqdm import tqdm

from .precision import EXACT, openvino_config

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Prediction:
    """One image's result, with the anomaly map at the image's original size."""

    path: Path
    pred_score: float
    pred_label: bool
    anomaly_map: np.ndarray


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; an empty or missing folder is an error."""
    if not folder.is_dir():
        msg = f"{folder} is not a folder."
        raise FileNotFoundError(msg)
    images = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        msg = f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}."
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


def predict_folder(model_path: Path, folder: Path, output: Path) -> list[Prediction]:
    """Score every image in ``folder``; write ``<name>.png`` overlays and ``predictions.csv`` to ``output``."""
    images = list_images(folder)
    inferencer = load_inferencer(model_path)
    output.mkdir(parents=True, exist_ok=True)
    predictions = []
    for path in tqdm(images, desc="Scoring", unit="image"):
        original = read_image(path, as_tensor=False)
        result = inferencer.predict(original)
        height, width = original.shape[:2]
        anomaly_map = map_to_original_size(np.asarray(result.anomaly_map), height, width)
        prediction = Prediction(
            path=path,
            pred_score=float(np.asarray(result.pred_score).reshape(-1)[0]),
            pred_label=bool(np.asarray(result.pred_label).reshape(-1)[0]),
            anomaly_map=anomaly_map,
        )
        heatmap = visualize_anomaly_map(np.clip(anomaly_map, 0.0, 1.0))
        base = Image.fromarray((np.asarray(original) * 255).round().astype(np.uint8))
        overlay_image(base, heatmap, alpha=0.4).convert("RGB").save(output / f"{path.stem}.png")
        predictions.append(prediction)
    with (output / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "pred_score", "pred_label"])
        writer.writerows(
            [prediction.path.name, f"{prediction.pred_score:.6f}", int(prediction.pred_label)]
            for prediction in predictions
        )
    return predictions
