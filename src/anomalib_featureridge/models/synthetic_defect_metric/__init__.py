"""SyntheticDefectMetric: a CNN fine-tuned by deep metric learning to tell good images from synthetic defects."""

from .lightning_model import SyntheticDefectMetric
from .torch_model import SyntheticDefectMetricModel

__all__ = ["SyntheticDefectMetric", "SyntheticDefectMetricModel"]
