"""SyntheticDefectMetric: a CNN fine-tuned by metric learning to tell good images from synthetic defects.

Thin lines and local distortions are drawn on the good training images, inside the object, afresh
for every batch; a timm CNN with an L2-softmax, ArcFace or AdaCos head learns to tell them apart
from the good ones, and a test image is scored by how far its embedding lies from the good
training embeddings (cosine or local outlier factor). Losses: Ranjan et al. 2017 (L2-softmax),
Deng et al. 2019 (ArcFace, https://arxiv.org/abs/1801.07698), Zhang et al. 2019 (AdaCos,
https://arxiv.org/abs/1905.00292). Details and measurements: this package's ``README.md``.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_featureridge import SyntheticDefectMetric
    >>> model = SyntheticDefectMetric(loss="arcface", scorer="cosine")
    >>> Engine(max_epochs=10).fit(model, datamodule=MVTecAD(category="grid"))  # doctest: +SKIP
"""

from .lightning_model import SyntheticDefectMetric
from .torch_model import SyntheticDefectMetricModel

__all__ = ["SyntheticDefectMetric", "SyntheticDefectMetricModel"]
