"""FeatureRidge: closed-form Ridge regression between two CNN feature maps."""

from .lightning_model import FeatureRidge
from .torch_model import FeatureRidgeModel

__all__ = ["FeatureRidge", "FeatureRidgeModel"]
