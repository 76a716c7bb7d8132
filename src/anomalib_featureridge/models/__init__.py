"""Anomaly detection models contributed to anomalib by this package.

The models are imported on first access (PEP 562): a model's light modules (FeatureRidge's option
declarations) then load without importing torch and every other model.
"""

from __future__ import annotations

from anomalib_featureridge.lazy import lazy_exports

__all__ = [
    "FeatureRidge",
    "FeatureRidgeModel",
    "SyntheticDefectMetric",
    "SyntheticDefectMetricModel",
    "WinClipPlus",
    "WinClipPlusModel",
]
_HOMES = {
    "FeatureRidge": ".feature_ridge",
    "FeatureRidgeModel": ".feature_ridge",
    "SyntheticDefectMetric": ".synthetic_defect_metric",
    "SyntheticDefectMetricModel": ".synthetic_defect_metric",
    "WinClipPlus": ".win_clip_plus",
    "WinClipPlusModel": ".win_clip_plus",
}

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
