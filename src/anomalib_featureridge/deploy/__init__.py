"""Running exported models on new images."""

from .predict import Prediction, list_images, map_to_original_size, predict_folder

__all__ = ["Prediction", "list_images", "map_to_original_size", "predict_folder"]
