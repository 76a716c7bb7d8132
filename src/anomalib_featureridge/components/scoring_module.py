"""What the AnomalibModules of this package share: no optimiser, the paper metrics, validation scoring."""

from __future__ import annotations

from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from lightning.pytorch.utilities.types import STEP_OUTPUT

from ..data.images import refuse_high_bit_depth
from .evaluator import segmentation_evaluator


class ScoringModelMixin:
    """What this package's models share: no optimiser, the paper metrics, the default post-processor.

    Put it before ``AnomalibModule`` in the bases; ``self.model`` must return an ``InferenceBatch``.
    """

    def setup(self, stage: str) -> None:
        """Refuse 16-bit grayscale dataset files before anomalib's reader clips them to white frames."""
        datamodule = getattr(self._trainer, "datamodule", None)
        refuse_high_bit_depth(getattr(datamodule, name, None) for name in ("train_data", "val_data", "test_data"))
        super().setup(stage)

    @staticmethod
    def configure_optimizers() -> None:
        """Nothing is fitted by gradient descent: no optimiser."""
        return

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Image AUROC, pixel AUROC and pixel AUPRO (FPR limit 0.3), the figures the papers report."""
        return segmentation_evaluator()

    @staticmethod
    def configure_post_processor() -> PostProcessor:
        """Anomalib's default post-processor (normalisation and thresholds learnt on the validation set)."""
        return PostProcessor()

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:  # noqa: ANN002, ANN003
        """Score a validation batch."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())
