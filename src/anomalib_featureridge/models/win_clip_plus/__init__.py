"""WinClipPlus: zero-shot (WinCLIP) and few-shot (WinCLIP+) anomaly detection with CLIP windows.

Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023
(https://arxiv.org/abs/2303.14814). Image windows at several scales are compared with text prompts
of normal and anomalous states (zero-shot) and, given a few good images, with their window and
patch embeddings (few-shot), on any open_clip vision transformer. For lines with no or very few
good images. Details: ``docs/win_clip_plus.md``.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_featureridge import WinClipPlus
    >>> model = WinClipPlus(class_name="bottle", k_shot=4)
    >>> Engine().test(model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP
"""

from .lightning_model import WinClipPlus
from .torch_model import WinClipPlusModel

__all__ = ["WinClipPlus", "WinClipPlusModel"]
