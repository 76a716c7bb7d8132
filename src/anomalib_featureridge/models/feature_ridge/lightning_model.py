"""FeatureRidge as an anomalib model: ``anomalib train --model FeatureRidge``.

One pass over the normal training images accumulates the Ridge statistics; the map is solved in
closed form when the epoch ends (no optimiser, no coreset search). Scoring is the backbone plus
one 3x3 convolution.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_featureridge import FeatureRidge
    >>> model = FeatureRidge(backbone="wide_resnet50_2", layers=["layer2", "layer3"], alpha=1.0)
    >>> engine = Engine()
    >>> engine.train(model=model, datamodule=MVTecAD(category="bottle"))
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule, MemoryBankMixin
from anomalib.visualization import Visualizer
from torch import nn

from ..common import ScoringModelMixin, SingleFileOnnxMixin
from .positions import PositionStatistics
from .ridge import RidgeStatistics
from .torch_model import FeatureRidgeModel

logger = logging.getLogger(__name__)

__all__ = ["FeatureRidge"]


TRAINED_WITH_KEY = "feature_ridge_trained_with"


def _describe(geometry: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in geometry.items())


class FeatureRidge(ScoringModelMixin, SingleFileOnnxMixin, MemoryBankMixin, AnomalibModule):
    """FeatureRidge: Ridge regression from a shallow to a deep CNN feature map, fitted on normal images.

    Args:
        backbone: Any timm CNN. The default matches anomalib's Patchcore so that both compare
            like for like; the paper used ``wide_resnet101_2``.
        layers: ``[shallow, deep]``; the shallow map (with its 3x3 neighbours) predicts the deep one.
        pre_trained: Use timm's ImageNet weights, downloaded as anomalib does.
        backbone_weights: Path to a local timm state dict, for machines without network access.
        alpha: Ridge penalty (paper: 1.0).
        sigma: Gaussian smoothing of the anomaly map in pixels (0 = off).
        rank: Rank of the Ridge map; ``None`` (the paper) fits the full map. A rank below the deep
            layer's channel count makes scoring cheaper: with wide_resnet50_2, rank 128 runs at
            1.06x the backbone's time instead of 1.41x (docs/benchmarks.md).
        head: ``"gaussian"`` (default): the regression centred per position, its residual scored by
            the Mahalanobis norm plus how typical the shallow features are; ``"paper"``: the paper's
            log squared error (docs/method.md). A checkpoint from before this option has the paper's head.
        keep_statistics: Keep the sufficient statistics in the checkpoint so that new normal images
            can be added later with ``model.model.update(images)``; ``False`` gives smaller
            checkpoints.
        pre_processor, post_processor, evaluator, visualizer: As in every anomalib model.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] = ("layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        alpha: float = 1.0,
        sigma: float = 4.0,
        rank: int | None = None,
        keep_statistics: bool = True,
        head: str = "gaussian",
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model: FeatureRidgeModel = FeatureRidgeModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            alpha=alpha,
            sigma=sigma,
            rank=rank,
            keep_statistics=keep_statistics,
            head=head,
        )

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args, **kwargs) -> FeatureRidge:  # noqa: ANN002, ANN003
        """Load a trained model; the backbone comes from the checkpoint, so no weights file or download is needed."""
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("backbone_weights", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the feature geometry apart from the hyper-parameters, which ``load_from_checkpoint`` overrides."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[TRAINED_WITH_KEY] = self._feature_geometry()

    def _feature_geometry(self) -> dict[str, Any]:
        """What fixes the shapes of the fitted tensors: a checkpoint only loads into the same."""
        return {
            "backbone": self.model.backbone,
            "layers": list(self.model.layers),
            "rank": self.model.rank,
            "head": self.model.head,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint made with another backbone, layers or rank, naming both, before tensors are copied."""
        saved = checkpoint.get(TRAINED_WITH_KEY) or checkpoint.get("hyper_parameters", {})
        current = self._feature_geometry()
        # A checkpoint from before the rank option has a full map, one from before the head option the paper's head.
        defaults = {"rank": None, "head": "paper"}
        trained = {key: saved.get(key, defaults.get(key, value)) for key, value in current.items()}
        trained["layers"] = list(trained["layers"])
        if trained != current:
            settings = ", ".join(f"--model.{key}" for key in current)
            msg = (
                f"This checkpoint was trained with {_describe(trained)}, but the model is configured with "
                f"{_describe(current)}. Pass the training settings ({settings}) with this checkpoint."
            )
            raise ValueError(msg)
        super().on_load_checkpoint(checkpoint)

    def setup(self, stage: str) -> None:
        """Refuse an empty training set before Lightning fails on it with a sampler error."""
        super().setup(stage)
        datamodule = getattr(self._trainer, "datamodule", None)
        train_data = getattr(datamodule, "train_data", None)
        if stage == "fit" and train_data is not None and len(train_data) == 0:
            msg = (
                f"FeatureRidge needs normal training images, but the training set of {type(datamodule).__name__} "
                f"is empty. Check the dataset root, the category and its train/good folder."
            )
            raise ValueError(msg)

    def on_train_start(self) -> None:
        """Fitting a fitted model adds the new images to its statistics (an incremental update) and re-solves."""
        if bool(self.model.fitted):
            self.model.require_statistics()
            logger.info(
                "FeatureRidge is already fitted on %d feature vectors: the new training images are added to them.",
                int(self.model.statistics.count),
            )
            self._is_fitted = torch.tensor([False], device=self.device)

    def training_step(self, batch: Batch, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        """Accumulate the batch's features into the Ridge statistics."""
        del args, kwargs
        self.model.accumulate(batch.image)
        return torch.tensor(0.0, requires_grad=True, device=self.device)

    def fit(self) -> None:
        """Solve the Ridge map once the training epoch has been seen."""
        logger.info("Solving the Ridge map from %d feature vectors.", int(self.model.statistics.count))
        self.model.fit()

    def _require_fitted(self) -> None:
        if not bool(self.model.fitted):
            msg = "Cannot export FeatureRidge before it is fitted: train it first, or export a trained checkpoint."
            raise RuntimeError(msg)

    @contextmanager
    def export_context(self) -> Iterator[None]:
        """Exports need a fitted model and leave the training-only statistics out, without touching the live model."""
        self._require_fitted()
        statistics, positions = self.model.statistics, self.model.positions
        self.model.statistics = RidgeStatistics().to(statistics.count.device)
        if positions is not None:
            self.model.positions = PositionStatistics().to(positions.count.device)
        try:
            yield
        finally:
            self.model.statistics, self.model.positions = statistics, positions

    def to_torch(self, export_root: Path | str, model_file_name: str = "model") -> Path:
        """Export for torch inference, without the sufficient statistics (they only serve updates)."""
        with self.export_context():
            return super().to_torch(export_root, model_file_name)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """One pass over the data, no sanity validation, one device (the statistics live on one)."""
        return {"gradient_clip_val": 0, "max_epochs": 1, "num_sanity_val_steps": 0, "devices": 1}

    @property
    def learning_type(self) -> LearningType:
        """Trained on normal images only."""
        return LearningType.ONE_CLASS
