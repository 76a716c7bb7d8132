"""Anomaly detection models contributed to anomalib by this package.

The models are imported on first access (PEP 562): a model's light modules (FeatureRidge's option
declarations) then load without importing torch and every other model.
"""

from __future__ import annotations

from importlib import import_module

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


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
