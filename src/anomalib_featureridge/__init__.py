"""FeatureRidge (and WinClipPlus) for anomalib, registered as if they were built in.

Importing this package is never needed: once installed, ``anomalib.models`` loads it through the
``anomalib.models`` entry point group (see ``anomalib_plugin_loader``).
"""

from .models import FeatureRidge, FeatureRidgeModel, WinClipPlus, WinClipPlusModel

__all__ = ["FeatureRidge", "FeatureRidgeModel", "WinClipPlus", "WinClipPlusModel"]
__version__ = "0.1.0"
