"""Anomaly detection models contributed to anomalib by this package."""

from .feature_ridge import FeatureRidge, FeatureRidgeModel
from .synthetic_defect_metric import SyntheticDefectMetric, SyntheticDefectMetricModel
from .win_clip_plus import WinClipPlus, WinClipPlusModel

__all__ = [
    "FeatureRidge",
    "FeatureRidgeModel",
    "SyntheticDefectMetric",
    "SyntheticDefectMetricModel",
    "WinClipPlus",
    "WinClipPlusModel",
]
