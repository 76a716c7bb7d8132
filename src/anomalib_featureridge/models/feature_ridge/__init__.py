"""FeatureRidge: a shallow CNN feature map predicts a deeper one; defects are what it cannot predict.

A frozen ImageNet CNN gives two feature maps. Each position of the shallow one, with its 3x3
neighbours, predicts the deep one through a Ridge regression fitted in closed form on normal
images; the pixel score is the log squared prediction error. The fit is a sum of statistics
(exact incremental and multi-device updates) and inference is one convolution after the backbone,
so the exported model scores exactly as the checkpoint. Method, paper setting and measurements:
``docs/method.md`` and this package's ``README.md``.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_featureridge import FeatureRidge
    >>> model = FeatureRidge(backbone="wide_resnet50_2", layers=("layer2", "layer3"))
    >>> engine = Engine()
    >>> engine.fit(model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP

    The same from the command line: ``anomalib train --model FeatureRidge --data MVTecAD``.
"""

from __future__ import annotations

from anomalib_featureridge.lazy import lazy_exports

__all__ = ["FeatureRidge", "FeatureRidgeModel"]
# Imported on first access (PEP 562), so that the option declarations (``options.py``) and the heads'
# names load without torch, for ``--help``.
_HOMES = {"FeatureRidge": ".lightning_model", "FeatureRidgeModel": ".torch_model"}

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
