"""FeatureRidge, WinClipPlus and SyntheticDefectMetric for anomalib, registered as if built in; normal-only thresholds.

Importing this package is never needed: once installed, ``anomalib.models`` loads it through the
``anomalib.models`` entry point group (see ``anomalib_featureridge_plugin_loader``). The names
below are imported on first access (PEP 562), so that ``anomalib-featureridge --help`` and the
data helpers start without importing anomalib and torch.
"""

from __future__ import annotations

from anomalib_featureridge.lazy import lazy_exports

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

_HOMES = {
    "FeatureRidge": ".models",
    "FeatureRidgeModel": ".models",
    "SyntheticDefectMetric": ".models",
    "SyntheticDefectMetricModel": ".models",
    "WinClipPlus": ".models",
    "WinClipPlusModel": ".models",
    "NormalQuantilePostProcessor": ".thresholds",
}

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
