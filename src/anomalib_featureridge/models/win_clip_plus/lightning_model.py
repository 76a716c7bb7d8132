"""WinClipPlus as an anomalib model: ``anomalib test --model WinClipPlus`` (zero-shot) or with ``--model.k_shot``.

Nothing is trained. ``setup`` builds the text anchors for the class name and, for few-shot, the
reference embeddings of ``k_shot`` normal images; both are buffers, saved in the checkpoint and
part of the export.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_featureridge import WinClipPlus
    >>> model = WinClipPlus(k_shot=4)  # open_clip ViT-B-16-plus-240, laion400m_e31
    >>> Engine().test(model=model, datamodule=MVTecAD(category="bottle"))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data.predict import PredictDataset
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from torch import nn
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

from anomalib_featureridge.components.export import PreparedExportMixin
from anomalib_featureridge.components.scoring_module import ScoringModelMixin

from ...data.images import refuse_high_bit_depth
from ..checkpoints import record_model_class, refuse_other_models_checkpoint
from .torch_model import BACKBONE, PRETRAINED, TEMPERATURE, WinClipPlusModel

logger = logging.getLogger(__name__)

__all__ = ["WinClipPlus"]


class WinClipPlus(ScoringModelMixin, PreparedExportMixin, AnomalibModule):
    """WinCLIP (zero-shot, ``k_shot=0``) and WinCLIP+ (few-shot) on any open_clip ViT.

    Args:
        class_name: Object word for the prompts; default: the datamodule's category, else "object".
        k_shot: Number of normal reference images (0 = zero-shot).
        backbone: open_clip model name, or a path to an open_clip model config JSON.
        pretrained: open_clip pretrained tag (downloaded once), or a local checkpoint file (no
            network needed); ``None`` gives random weights (tests, speed measurements).
        scales: Window sizes in patches (paper: 2 and 3).
        window_stride: Step between windows in patches; 1 is the paper, 2 is faster (fewer windows).
        few_shot_source: Folder of reference images; default: the training set.
        reference_seed: ``None`` takes the first ``k_shot`` training images; a seed draws them at random.
        temperature: Softmax temperature of the zero-shot score.
        pre_processor, post_processor, evaluator, visualizer: As in every anomalib model.
    """

    def __init__(
        self,
        class_name: str | None = None,
        k_shot: int = 0,
        backbone: str = BACKBONE,
        pretrained: str | None = PRETRAINED,
        scales: Sequence[int] = (2, 3),
        window_stride: int = 1,
        few_shot_source: str | Path | None = None,
        reference_seed: int | None = None,
        temperature: float = TEMPERATURE,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if k_shot < 0:
            msg = f"k_shot must be 0 (zero-shot) or a positive number of reference images, got {k_shot}."
            raise ValueError(msg)
        model = WinClipPlusModel(
            backbone=backbone,
            pretrained=pretrained,
            scales=scales,
            window_stride=window_stride,
            temperature=temperature,
        )
        if pre_processor is True:
            pre_processor = self.clip_pre_processor(model)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model: WinClipPlusModel = model
        self.class_name = class_name
        self.k_shot = k_shot
        self.few_shot_source = Path(few_shot_source) if few_shot_source else None
        self.reference_seed = reference_seed

    @staticmethod
    def clip_pre_processor(model: WinClipPlusModel) -> PreProcessor:
        """Resize to the backbone's input size (bicubic, as CLIP was trained) and normalise with its statistics."""
        mean, std = model.normalisation
        transform = Compose(
            [
                Resize(model.image_size, antialias=True, interpolation=InterpolationMode.BICUBIC),
                Normalize(mean=mean, std=std),
            ]
        )
        return PreProcessor(transform=transform)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args, **kwargs) -> WinClipPlus:  # noqa: ANN002, ANN003
        """Load a prepared model; CLIP weights, anchors and references come from the checkpoint (no download)."""
        kwargs.setdefault("pretrained", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the model class, so that another model refuses the checkpoint by name."""
        super().on_save_checkpoint(checkpoint)
        record_model_class(checkpoint, self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse another model's checkpoint, and references made with other window scales or stride."""
        refuse_other_models_checkpoint(checkpoint, self, getattr(getattr(self, "_trainer", None), "ckpt_path", None))
        self.model.check_references(checkpoint.get("state_dict", {}), prefix="model.")
        super().on_load_checkpoint(checkpoint)

    def setup(self, stage: str) -> None:
        """Build the text anchors and, for few-shot, the reference embeddings (once)."""
        super().setup(stage)
        self._prepare()

    def export_context(self) -> AbstractContextManager:
        """Every export first builds what ``setup`` would (anchors, references): no run is needed before it."""
        self._prepare()
        return nullcontext()

    def _prepare(self) -> None:
        if self.model.text_embeddings.shape[0] == 0:
            self.model.set_class_name(self._resolve_class_name())
        if self.k_shot and self.model.k_shot != self.k_shot:
            images = self._reference_images()
            logger.info("WinClipPlus: %d reference images for the few-shot scores.", images.shape[0])
            self.model.set_reference_images(images.to(self.device))

    def _resolve_class_name(self) -> str | None:
        if self.class_name:
            return self.class_name
        category = getattr(getattr(self._trainer, "datamodule", None), "category", None)
        if category:
            logger.info("WinClipPlus: no class name given, using the dataset category %r.", category)
            return str(category).replace("_", " ")
        return None

    def _reference_images(self) -> torch.Tensor:
        """``k_shot`` pre-processed normal images: from ``few_shot_source`` or the training set."""
        if self.few_shot_source is not None:
            dataset = PredictDataset(self.few_shot_source)
            refuse_high_bit_depth([dataset])
            source = f"the folder {self.few_shot_source}"
        else:
            dataset = getattr(getattr(self._trainer, "datamodule", None), "train_data", None)
            source = "the training set"
            if dataset is None:
                msg = "Few-shot WinClipPlus needs a datamodule with training images, or few_shot_source=FOLDER."
                raise ValueError(msg)
        if self.k_shot > len(dataset):
            msg = (
                f"k_shot={self.k_shot} reference images were requested, but {source} has only {len(dataset)}. "
                f"Lower --model.k_shot or add normal images."
            )
            raise ValueError(msg)
        if self.reference_seed is None:
            chosen = list(range(self.k_shot))
        else:
            generator = torch.Generator().manual_seed(self.reference_seed)
            chosen = torch.randperm(len(dataset), generator=generator)[: self.k_shot].tolist()
        transform = self.pre_processor.transform if self.pre_processor is not None else None
        images = [dataset[index].image.unsqueeze(0) for index in chosen]
        return torch.cat([transform(image) if transform is not None else image for image in images])

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No training epochs; anomalib only validates zero- and few-shot models before testing."""
        return {}

    @property
    def learning_type(self) -> LearningType:
        """Zero-shot without references, few-shot with them."""
        return LearningType.FEW_SHOT if self.k_shot else LearningType.ZERO_SHOT
