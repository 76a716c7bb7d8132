"""WinClipPlus as an anomalib model: ``anomalib test --model WinClipPlus`` (zero-shot) or with ``--model.k_shot``.

Nothing is trained. Before the first validation, test or prediction (and before an export) the model
builds the text anchors for the class name and, for few-shot, the reference embeddings of ``k_shot``
normal images; both are buffers, saved in the checkpoint and part of the export. A checkpoint loaded
first brings them, its CLIP weights and its scoring settings, so ``--ckpt_path`` alone downloads nothing.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_featureridge import WinClipPlus
    >>> model = WinClipPlus(k_shot=4)  # open_clip ViT-B-16-plus-240, laion400m_e31
    >>> Engine().test(model=model, datamodule=MVTecAD(category="bottle"))
"""

from __future__ import annotations

import inspect
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

from anomalib_featureridge.components.checkpoints import settings_from_checkpoint
from anomalib_featureridge.components.export import PreparedExportMixin
from anomalib_featureridge.components.scoring_module import ScoringModelMixin

from ...components.weights import state_fingerprint
from ...data.images import refuse_high_bit_depth
from .clip_loader import ClipWeightsError, create_clip
from .torch_model import BACKBONE, PRETRAINED, TEMPERATURE, WinClipPlusModel

logger = logging.getLogger(__name__)

__all__ = ["WinClipPlus"]

MADE_WITH_KEY = "win_clip_plus_made_with"
CLIP_WEIGHTS_KEY = "win_clip_plus_clip_weights"
VISUAL_PREFIX = "model.encoder.visual."
SCORING_SETTINGS = (
    "class_name",
    "k_shot",
    "backbone",
    "scales",
    "window_stride",
    "temperature",
    "few_shot_source",
    "reference_seed",
)
ARCHITECTURE_SETTINGS = ("backbone", "scales", "window_stride", "temperature")


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
            defer_weights=True,
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

    @property
    def k_shot(self) -> int:
        """Requested number of reference images; the hyper-parameters hold every setting, once."""
        return int(self.hparams["k_shot"])

    @property
    def class_name(self) -> str | None:
        """Requested class name (``None``: the datamodule's category)."""
        return self.hparams["class_name"]

    @property
    def few_shot_source(self) -> Path | None:
        """Folder of reference images, ``None`` for the training set."""
        source = self.hparams["few_shot_source"]
        return Path(source) if source else None

    @property
    def reference_seed(self) -> int | None:
        """Seed of the reference draw, ``None`` for the first ``k_shot`` images."""
        return self.hparams["reference_seed"]

    def _scoring_settings(self) -> dict[str, Any]:
        """The settings the saved anchors and references were made with; a prepared model's own, else the requested."""
        settings = {key: self.hparams[key] for key in SCORING_SETTINGS}
        settings["scales"] = [int(scale) for scale in settings["scales"]]
        settings["few_shot_source"] = str(settings["few_shot_source"]) if settings["few_shot_source"] else None
        if self.model.prepared:
            settings["class_name"], settings["k_shot"] = self.model.class_name, self.model.k_shot
        return settings

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the scoring settings and the model class, so that a loader scores as this model did.

        CLIP weights read from a tag or a file stay out of the checkpoint (nothing of them is trained): it
        records the tag or file and a fingerprint, and loading reads and checks them. Random weights are saved.
        """
        super().on_save_checkpoint(checkpoint)
        checkpoint[MADE_WITH_KEY] = self._scoring_settings()
        if self.model.weights_source is not None:
            state = checkpoint["state_dict"]
            visual = {key: state.pop(key) for key in [key for key in state if key.startswith(VISUAL_PREFIX)]}
            checkpoint[CLIP_WEIGHTS_KEY] = {
                "backbone": self.hparams["backbone"],
                "pretrained": self.model.weights_source,
                "sha256": state_fingerprint(visual),
            }

    def adopt_checkpoint_settings(self, checkpoint: dict[str, Any], path: object) -> None:
        """Take the checkpoint's scoring settings (components/checkpoints.py rule) and its CLIP weights.

        A checkpoint without recorded settings (older) has them in its hyper-parameters.
        """
        saved = checkpoint.get(MADE_WITH_KEY) or {
            key: checkpoint.get("hyper_parameters", {}).get(key, _DEFAULTS[key]) for key in SCORING_SETTINGS
        }
        saved = {**saved, "scales": [int(scale) for scale in saved["scales"]]}
        adopted = settings_from_checkpoint(self._scoring_settings(), saved, _DEFAULTS, path, made="made")
        self.hparams.update(adopted)
        if any(key in adopted for key in ARCHITECTURE_SETTINGS):
            settings = {key: self.hparams[key] for key in ARCHITECTURE_SETTINGS}
            device = self.model.text_embeddings.device
            pretrained = self.hparams["pretrained"]
            self.model = WinClipPlusModel(**settings, pretrained=pretrained, defer_weights=True).to(device)
        self.model.check_references(checkpoint.get("state_dict", {}), prefix="model.")
        self.model.class_name = saved["class_name"]  # the word of the anchors about to be loaded
        if CLIP_WEIGHTS_KEY in checkpoint:
            self._restore_clip_weights(checkpoint, path)

    def _restore_clip_weights(self, checkpoint: dict[str, Any], path: object) -> None:
        """Put the CLIP weights the checkpoint names back into its state, refusing any other weights.

        They come from the recorded tag or file, or from ``pretrained`` when it is given another value
        (the same weights elsewhere); the fingerprint decides whether they are the checkpoint's.
        """
        record = checkpoint[CLIP_WEIGHTS_KEY]
        given = self.hparams["pretrained"]
        source = given if given and given != _DEFAULTS["pretrained"] else record["pretrained"]
        where = f"The checkpoint {path}" if path else "This checkpoint"
        try:
            clip, _, _ = create_clip(record["backbone"], source)
        except ClipWeightsError as error:
            msg = f"{where} holds no CLIP weights: it reads them from {source!r}. {error}"
            raise ClipWeightsError(msg) from error
        visual = {VISUAL_PREFIX + key: value for key, value in clip.visual.state_dict().items()}
        if state_fingerprint(visual) != record["sha256"]:
            msg = (
                f"{where} was made with the CLIP weights {record['pretrained']!r}, and {source!r} holds other "
                f"weights. Pass the file it was made with: --model.pretrained PATH."
            )
            raise ClipWeightsError(msg)
        checkpoint["state_dict"].update(visual)
        self.model.weights_source = source

    def on_validation_start(self) -> None:
        """Build the anchors and references before the first score, unless a loaded checkpoint brought them."""
        self._prepare()

    def on_test_start(self) -> None:
        """Build the anchors and references before the first score, unless a loaded checkpoint brought them."""
        self._prepare()

    def on_predict_start(self) -> None:
        """Build the anchors and references before the first score, unless a loaded checkpoint brought them."""
        self._prepare()

    def export_context(self) -> AbstractContextManager:
        """Every export first builds what a run would (anchors, references): no run is needed before it."""
        self._prepare()
        return nullcontext()

    def _prepare(self) -> None:
        """Anchors and references, once: after ``setup`` and any checkpoint (Lightning loads one after ``setup``)."""
        if not self.model.prepared:
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


_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(WinClipPlus.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}
_DEFAULTS["scales"] = list(_DEFAULTS["scales"])
