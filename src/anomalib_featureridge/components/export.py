"""Export preparation: every format and every model goes through one path."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ..deploy.precision import UNPINNED_PRECISION_WARNING

logger = logging.getLogger(__name__)


def is_exporting() -> bool:
    """True while a model is traced or compiled (an ONNX, OpenVINO or TorchScript export), not run eagerly.

    Then checks that read a tensor's value must be skipped, and only operators the formats have may run.
    """
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


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
