"""SyntheticDefectMetric as an anomalib model: ``anomalib train --model SyntheticDefectMetric``.

A CNN is fine-tuned on the normal training images alone, to tell them apart from synthetic
defects drawn on them afresh for every batch (thin lines and local distortions inside the
object, which is found by differencing against the mean training image), with a deep metric
learning head. Test images are scored by how far their embedding lies from the good training
embeddings, stored in the model. The scheme (three classes good, line, distortion; L2-softmax
with LOF, ArcFace or AdaCos with cosine scoring) is the one summarised in this project's issue 15;
the heads follow Ranjan et al. 2017 (L2-constrained softmax), Deng et al. 2019 (ArcFace) and
Zhang et al. 2019 (AdaCos), the LOF scorer Breunig et al. 2000.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_featureridge import SyntheticDefectMetric
    >>> model = SyntheticDefectMetric(backbone_weights="../shared/weights/mobilenetv2_100.pth", max_epochs=10)
    >>> engine = Engine()
    >>> engine.train(model=model, datamodule=MVTecAD(category="grid", train_batch_size=32))
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.transforms.v2 import Resize

from anomalib_featureridge.components.distributed import broadcast_from_rank_zero, world_size
from anomalib_featureridge.components.export import PreparedExportMixin
from anomalib_featureridge.components.scoring_module import ScoringModelMixin
from anomalib_featureridge.data.defects import DEFECT_KINDS, ObjectRegionFinder, add_defects_to_batch

from .heads import LOSSES
from .scoring import check_neighbours
from .torch_model import SyntheticDefectMetricModel

logger = logging.getLogger(__name__)

__all__ = ["SyntheticDefectMetric"]

EMBEDDING_BATCH = 32


def _check_kinds(defect_kinds: Sequence[str]) -> list[str]:
    kinds = list(defect_kinds)
    unknown = [kind for kind in kinds if kind not in DEFECT_KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        msg = f"defect_kinds must be distinct names from {DEFECT_KINDS} (at least one), got {kinds}."
        raise ValueError(msg)
    return kinds


class SyntheticDefectMetric(ScoringModelMixin, PreparedExportMixin, AnomalibModule):
    """Metric learning on synthetic defects: fine-tuned CNN embeddings scored by distance to the good ones.

    Args:
        backbone: Any timm CNN (published: MobileNetV2 or EfficientNet-B0).
        layer: Feature layer pooled into the embedding; ``None``: the backbone's deepest.
        pre_trained: Use timm's ImageNet weights, downloaded as anomalib does.
        backbone_weights: Path to a local timm state dict, for machines without network access.
        trainable_blocks: Backbone modules to fine-tune by name (``None``: all, ``[]``: only the head).
        defect_kinds: Synthetic defect classes besides ``good`` (from ``data/defects.py``);
            ``[line]`` is the two-class variant.
        loss: ``softmax``, ``l2_softmax``, ``arcface`` or ``adacos`` (published defaults, see ``heads.py``).
        scorer: ``cosine`` (1 - max cosine similarity to the good embeddings) or ``lof``.
        n_neighbors: Neighbours of the LOF scorer (scikit-learn's default).
        anomaly_map: ``cam`` (the class-activation map, exports) or ``grad_cam`` (an analysis
            option: Grad-CAM, which needs autograd at inference and does not export).
        grad_cam_layer: Layer whose activations Grad-CAM weighs (e.g. ``blocks.4``, stride 16);
            ``None``: the embedding layer.
        max_embeddings: Keep at most this many good embeddings (a seeded random subset); ``None``
            keeps one per training image.
        max_epochs: Training epochs.
        learning_rate: Adam's learning rate.
        seed: Seed of the synthetic defects (and of the ``max_embeddings`` subset).
        pre_processor, post_processor, evaluator, visualizer: As in every anomalib model. A
            custom pre-processor must keep images in [0, 1] (the model normalises them itself,
            after drawing the defects).
    """

    def __init__(
        self,
        backbone: str = "mobilenetv2_100",
        layer: str | None = None,
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        trainable_blocks: Sequence[str] | None = None,
        defect_kinds: Sequence[str] = ("line", "distortion"),
        loss: str = "arcface",
        scorer: str = "cosine",
        n_neighbors: int = 20,
        anomaly_map: str = "cam",
        grad_cam_layer: str | None = None,
        max_embeddings: int | None = None,
        max_epochs: int = 10,
        learning_rate: float = 1e-4,
        seed: int = 0,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        self.defect_kinds = _check_kinds(defect_kinds)
        if loss not in LOSSES:
            msg = f"Unknown loss {loss!r}; choose from {LOSSES}."
            raise ValueError(msg)
        if max_embeddings is not None and max_embeddings < 1:
            msg = f"max_embeddings must be a positive number or None (keep all), got {max_embeddings}."
            raise ValueError(msg)
        if max_epochs < 1 or learning_rate <= 0:
            msg = f"max_epochs must be >= 1 and learning_rate > 0, got {max_epochs} and {learning_rate}."
            raise ValueError(msg)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model: SyntheticDefectMetricModel = SyntheticDefectMetricModel(
            backbone=backbone,
            layer=layer,
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            trainable_blocks=trainable_blocks,
            n_classes=1 + len(self.defect_kinds),
            loss=loss,
            scorer=scorer,
            n_neighbors=n_neighbors,
            anomaly_map=anomaly_map,
            grad_cam_layer=grad_cam_layer,
        )
        self.scorer = scorer
        self.n_neighbors = n_neighbors
        self.max_embeddings = max_embeddings
        self.max_epochs = max_epochs
        self.learning_rate = learning_rate
        self.seed = seed
        self.region_finder: ObjectRegionFinder | None = None
        self.rng = np.random.default_rng(seed)
        self.bank_is_stale = False
        self.defects_left_out = dict.fromkeys(self.defect_kinds, 0)
        self.defects_asked = dict.fromkeys(self.defect_kinds, 0)

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only (default 256 x 256): defects are drawn on [0, 1] images, the model normalises after."""
        return PreProcessor(transform=Resize(image_size or (256, 256), antialias=True))

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args, **kwargs) -> SyntheticDefectMetric:  # noqa: ANN002, ANN003
        """Load a trained model; the fine-tuned backbone comes from the checkpoint (no weights file, no download)."""
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("backbone_weights", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the fine-tuned backbone modules and the head."""
        parameters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        return torch.optim.Adam(parameters, lr=self.learning_rate)

    def _train_data(self) -> Any:
        datamodule = getattr(self._trainer, "datamodule", None)
        return getattr(datamodule, "train_data", None)

    def setup(self, stage: str) -> None:
        """Refuse, before any epoch, a training set too small to train on or to score with."""
        super().setup(stage)
        train_data = self._train_data()
        if stage != "fit" or train_data is None:
            return
        if len(train_data) < 2:
            msg = (
                f"SyntheticDefectMetric needs at least 2 normal training images (batch norm and the good "
                f"embeddings), but the training set has {len(train_data)}. Check the dataset root, category and "
                f"its train/good folder."
            )
            raise ValueError(msg)
        if self.scorer == "lof":
            check_neighbours(self.n_neighbors, min(len(train_data), self.max_embeddings or len(train_data)))

    def _pre_processed(self, indices: Sequence[int]) -> torch.Tensor:
        """Training images ``indices``, pre-processed one by one (sizes may differ on disk), as one batch."""
        dataset = self._train_data()
        transform = self.pre_processor.transform if self.pre_processor else None
        images = []
        for index in indices:
            image = dataset[index].image.unsqueeze(0)
            images.append(transform(image) if transform is not None else image)
        return torch.cat(images).to(self.device)

    def _training_batches(self) -> Iterator[torch.Tensor]:
        dataset = self._train_data()
        if dataset is None:
            msg = "SyntheticDefectMetric needs the training images here: train it through a datamodule."
            raise RuntimeError(msg)
        for start in range(0, len(dataset), EMBEDDING_BATCH):
            yield self._pre_processed(range(start, min(start + EMBEDDING_BATCH, len(dataset))))

    def on_train_start(self) -> None:
        """Find the object from the mean training image; seed the defects (one stream per process)."""
        images = (
            (batch.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for batch in self._training_batches()
        )
        self.region_finder = ObjectRegionFinder.from_images(image for batch in images for image in batch)
        self.rng = np.random.default_rng([self.seed, self.global_rank])

    def synthetic_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every image once as it is (label 0) and once per defect kind (label ``1 + k``), with the defect masks.

        A defect that cannot be drawn on an image (a surface too flat for a visible distortion)
        would be a good image labelled defective: that sample is left out and counted.
        """
        kinds: list[str | None] = [None, *self.defect_kinds]
        samples, masks = add_defects_to_batch(
            images.repeat(len(kinds), 1, 1, 1),
            [kind for kind in kinds for _ in range(images.shape[0])],
            self.rng,
            self.region_finder,
            allow_unchanged=True,
        )
        labels = torch.arange(len(kinds), device=images.device).repeat_interleave(images.shape[0])
        keep = (labels == 0) | masks.flatten(1).any(dim=1)
        for index, kind in enumerate(self.defect_kinds, start=1):
            self.defects_left_out[kind] += int((~keep & (labels == index)).sum())
            self.defects_asked[kind] += int((labels == index).sum())
        return samples[keep], labels[keep], masks[keep]

    def on_train_epoch_start(self) -> None:
        """Count, per epoch, the defects that could not be drawn."""
        self.defects_left_out = dict.fromkeys(self.defect_kinds, 0)
        self.defects_asked = dict.fromkeys(self.defect_kinds, 0)

    def on_train_epoch_end(self) -> None:
        """Say which defect kinds could not be drawn on some images, and how often."""
        for kind, missing in self.defects_left_out.items():
            if missing:
                logger.warning(
                    "SyntheticDefectMetric: %d of %d %r samples this epoch could not be drawn (the surface is too "
                    "flat for a visible %s) and were left out.%s",
                    missing,
                    self.defects_asked[kind],
                    kind,
                    kind,
                    f" Consider defect_kinds without {kind!r} for this data."
                    if missing == self.defects_asked[kind]
                    else "",
                )

    def training_step(self, batch: Batch, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        """Cross-entropy of the metric head on the batch and its synthetic defects."""
        del args, kwargs
        samples, labels, _ = self.synthetic_batch(batch.image)
        loss = F.cross_entropy(self.model.training_logits(samples, labels), labels)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=samples.shape[0])
        self.bank_is_stale = True
        return loss

    @torch.no_grad()
    def store_good_embeddings(self) -> None:
        """Embed the training images with the current network: the good embeddings the scores compare to.

        On several processes every one embeds the whole training set with rank 0's network: DDP keeps
        the weights equal, but each process's batch-norm statistics moved with its own last batch.
        """
        if world_size() > 1:
            broadcast_from_rank_zero(self.model.feature_extractor.buffers())
        was_training = self.model.training
        self.model.eval()
        embeddings = torch.cat([self.model.embed(batch) for batch in self._training_batches()])
        self.model.train(was_training)
        self.model.bank.fit(embeddings, self.max_embeddings, self.seed)
        logger.info("SyntheticDefectMetric: %d good embeddings stored.", self.model.bank.embeddings.shape[0])
        self.bank_is_stale = False

    def _refresh_bank(self) -> None:
        """The one rule for the good embeddings: re-embed when training has moved the network since they were stored.

        A model that was never trained has none; its forward says so (train it first).
        """
        if self.bank_is_stale:
            self.store_good_embeddings()

    def on_validation_start(self) -> None:
        """Scores need the good embeddings of the network as trained so far."""
        self._refresh_bank()

    def on_test_start(self) -> None:
        """As for validation, when the model was trained without a validation pass."""
        self._refresh_bank()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint always holds the embeddings of the network it saves (re-embedded if training moved it)."""
        if self.bank_is_stale:
            self._refresh_bank()
            checkpoint["state_dict"] = self.state_dict()
        super().on_save_checkpoint(checkpoint)

    @contextmanager
    def export_context(self) -> Iterator[None]:
        """Exports need the good embeddings; the training-only parts of the head are not in the graph."""
        self._refresh_bank()
        if self.model.bank.is_empty:
            msg = "Cannot export SyntheticDefectMetric before it is trained: train it, or export a trained checkpoint."
            raise RuntimeError(msg)
        yield

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """``max_epochs`` epochs, validated once at the end (each validation re-embeds the training set)."""
        return {"max_epochs": self.max_epochs, "check_val_every_n_epoch": self.max_epochs, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """Trained on normal images only."""
        return LearningType.ONE_CLASS
