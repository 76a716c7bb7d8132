"""WinClipPlus: zero-shot (WinCLIP) and few-shot (WinCLIP+) anomaly detection on open_clip ViTs."""

from .lightning_model import WinClipPlus
from .torch_model import WinClipPlusModel

__all__ = ["WinClipPlus", "WinClipPlusModel"]
