"""Running exported models on new images."""

from .precision import compile_openvino, openvino_config
from .predict import Prediction, PredictionRun, list_images, map_to_original_size, predict_folder, predict_image

__all__ = [
    "Prediction",
    "PredictionRun",
    "compile_openvino",
    "list_images",
    "map_to_original_size",
    "openvino_config",
    "predict_folder",
    "predict_image",
]
