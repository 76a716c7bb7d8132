"""FeatureRidge and WinClipPlus for anomalib, registered as if they were built in, and normal-only thresholds.

Importing this package is never needed: once installed, ``anomalib.models`` loads it through the
``anomalib.models`` entry point group (see ``anomalib_featureridge_plugin_loader``).
"""

from .models import FeatureRidge, FeatureRidgeModel, WinClipPlus, WinClipPlusModel
from .thresholds import NormalQuantilePostProcessor

__all__ = ["FeatureRidge", "FeatureRidgeModel", "NormalQuantilePostProcessor", "WinClipPlus", "WinClipPlusModel"]
__version__ = "0.1.0"
