"""FeatureRidge, WinClipPlus and SyntheticDefectMetric for anomalib, registered as if built in; normal-only thresholds.

Importing this package is never needed: once installed, ``anomalib.models`` loads it through the
``anomalib.models`` entry point group (see ``anomalib_plugin_loader``).
"""

from .models import (
    FeatureRidge,
    FeatureRidgeModel,
    SyntheticDefectMetric,
    SyntheticDefectMetricModel,
    WinClipPlus,
    WinClipPlusModel,
)
from .thresholds import NormalQuantilePostProcessor

__all__ = [
    "FeatureRidge",
    "FeatureRidgeModel",
    "NormalQuantilePostProcessor",
    "SyntheticDefectMetric",
    "SyntheticDefectMetricModel",
    "WinClipPlus",
    "WinClipPlusModel",
]
__version__ = "0.1.0"
