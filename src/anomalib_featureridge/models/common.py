"""Pieces shared by this package's models: optimiser-free scoring, the paper-style evaluator, export."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from anomalib.data import Batch
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score
from anomalib.post_processing import PostProcessor
from lightning.pytorch.utilities.types import STEP_OUTPUT

from ..data.images import refuse_high_bit_depth
from ..deploy.precision import UNPINNED_PRECISION_WARNING

logger = logging.getLogger(__name__)


def segmentation_evaluator() -> Evaluator:
    """Image AUROC, pixel AUROC and pixel AUPRO (FPR limit 0.3): the figures anomaly papers report."""
    test_metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
    ]
    return Evaluator(test_metrics=test_metrics)


class PreparedExportMixin:
    """One export path for every format: torch, ONNX (one self-contained file) and OpenVINO.

    Each export runs inside :meth:`export_context`, where a model gets ready for export (checks it is
    fitted, builds what setup would have built, leaves training-only state out); a model that needs
    this overrides :meth:`export_context` and nothing else, so no format can skip the preparation.
    OpenVINO exports through ONNX, so the context is entered again inside: it must allow nesting.
    Put the mixin before ``AnomalibModule`` in the bases.
    """

    def export_context(self) -> AbstractContextManager:
        """Context in which the model is exported; nothing to prepare by default."""
        return nullcontext()

    def to_torch(self, export_root: Path | str, model_file_name: str = "model") -> Path:
        """Export the prepared model for torch inference (``TorchInferencer``)."""
        with self.export_context():
            return super().to_torch(export_root, model_file_name)

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Path:
        """Export to ONNX as a single file (opset 18 unless given, no external data file)."""
        kwargs.setdefault("opset_version", 18)
        kwargs.setdefault("external_data", False)
        with self.export_context():
            return super().to_onnx(export_root, model_file_name, input_size, **kwargs)

    def to_openvino(self, export_root: Path | str, *args: Any, **kwargs: Any) -> Path:
        """Export to OpenVINO IR; warns that the precision is the deployer's to set (the file cannot)."""
        with self.export_context():
            path = super().to_openvino(export_root, *args, **kwargs)
        logger.warning("Exported %s. %s", path, UNPINNED_PRECISION_WARNING)
        return path


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
