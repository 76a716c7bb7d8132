"""Anomaly detection models contributed to anomalib by this package."""

from .feature_ridge import FeatureRidge, FeatureRidgeModel

__all__ = ["FeatureRidge", "FeatureRidgeModel"]
