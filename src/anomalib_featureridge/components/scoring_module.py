"""What the AnomalibModules of this package share: no optimiser, the paper metrics, validation scoring, run checks.

Validation and test score each image once across processes (the distributed sampler's repeats
are left out), so a run on several devices reports the metrics one device would.

The run checks are callbacks every model brings along: a learnt threshold that flags (nearly) every
good validation image is reported, and a fit that stops part-way leaves its version folder marked
incomplete, with anomalib's ``latest`` link back on the last complete run.

The data checks run at two points. Those that must come before the datamodule prepares or reads
its folders (a category that is not there, which ``MVTecAD.prepare_data`` would download; a defect
image without a mask, which stops anomalib's dataset builder) run in ``configure_callbacks``, the
first model hook of Lightning's run: it comes before the datamodule's ``prepare_data`` and ``setup``
(the model's own ``prepare_data`` comes after the datamodule's, too late). Those that read the
datasets' files (bit depth, masks) run in ``setup``, before any batch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT

from ..data.images import name_unreadable_files, refuse_high_bit_depth
from ..data.masks import check_masks, refuse_defect_images_without_masks
from ..data.roots import refuse_missing_mvtec_category
from .checkpoints import (
    loaded_naming_damage,
    name_damaged_checkpoints,
    record_model_class,
    refuse_other_models_checkpoint,
)
from .distributed import share_output_folder, unpadded, world_size
from .evaluator import segmentation_evaluator
from .run_folders import IncompleteRunMarker, discard_if_empty, is_version_folder

logger = logging.getLogger(__name__)

# A threshold that flags at least this share of the good validation images separates nothing.
FLAGGED_GOOD_SHARE = 0.9


class ThresholdCheck(Callback):
    """Warn when the image threshold learnt on validation flags (nearly) every good validation image.

    anomalib's default threshold maximises F1 on the validation set; for a model that separates the
    classes poorly that optimum is often "everything is anomalous", which no metric reports.
    """

    def __init__(self) -> None:
        self.good_scores: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a new count."""
        del trainer, pl_module
        self.good_scores = []

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        """Keep the raw scores of the good images (those the post-processor's threshold is compared to)."""
        del trainer, pl_module, args
        scores, labels = getattr(outputs, "pred_score", None), getattr(outputs, "gt_label", None)
        if scores is not None and labels is not None:
            self.good_scores.append(scores.detach().flatten()[labels.flatten() == 0].cpu())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compare the threshold just learnt (post-processors run before this callback) with the good scores."""
        del trainer
        post_processor = getattr(pl_module, "post_processor", None)
        threshold = getattr(post_processor, "image_threshold", None)
        if not self.good_scores or threshold is None or bool(torch.isnan(threshold)):
            return
        good = torch.cat(self.good_scores)
        flagged = int((good > threshold.cpu()).sum())
        if good.numel() and flagged >= FLAGGED_GOOD_SHARE * good.numel():
            logger.warning(
                "The image threshold learnt on the validation set (%s) flags %d of %d good validation images as "
                "anomalous: at this threshold the model does not tell good images from defective ones. For a "
                "threshold set from the good images at a chosen false-alarm rate, use --model.post_processor "
                "anomalib_featureridge.NormalQuantilePostProcessor (anomalib_featureridge.thresholds, "
                "docs/thresholds.md).",
                type(post_processor).__name__,
                flagged,
                good.numel(),
            )


# A training image whose pixels vary less than this (standard deviation, in the pre-processor's normalised
# units: about half a grey level of 255) is a blank frame, not a part.
CONSTANT_IMAGE_SPREAD = 0.01


class ConstantImagesCheck(Callback):
    """Warn once per fit when training images are constant or nearly so (a dead camera, blank frames).

    Such images teach a one-class model nothing about the part, and a set made of them trains a model that
    flags every real part; nothing else would say so. Counted on the batches as they arrive: no extra pass.
    """

    def __init__(self) -> None:
        self.constant = 0
        self.seen = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.constant = self.seen = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        images = getattr(batch, "image", None)
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            spread = images.detach().flatten(1).float().std(dim=1)
            self.constant += int((spread < CONSTANT_IMAGE_SPREAD).sum())
            self.seen += images.shape[0]

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.constant:
            msg = (
                f"{self.constant} of the {self.seen} training images are constant or nearly so (pixel standard "
                f"deviation below {CONSTANT_IMAGE_SPREAD} after normalisation): blank frames or a dead camera? They "
                "teach the model nothing about the part; remove them from the training folder."
            )
            warnings.warn(msg, UserWarning, stacklevel=2)
            logger.warning(msg)


class ScoringModelMixin:
    """What this package's models share: no optimiser, the paper metrics, the default post-processor.

    Put it before ``AnomalibModule`` in the bases; ``self.model`` must return an ``InferenceBatch``.
    """

    # Samples of this process's shard seen so far in the running loop (to tell the sampler's repeats).
    _seen = 0

    def setup(self, stage: str) -> None:
        """Refuse 16-bit grayscale files (anomalib's reader clips them to white) and masks that would be misread.

        Files that cannot be read are named when a batch meets them, and a damaged ``ckpt_path`` when
        Lightning loads it (after this hook). On several processes, every one writes into rank 0's output folder.
        """
        name_damaged_checkpoints(getattr(self._trainer, "strategy", None))
        datamodule = getattr(self._trainer, "datamodule", None)
        datasets = [getattr(datamodule, name, None) for name in ("train_data", "val_data", "test_data")]
        refuse_high_bit_depth(datasets)
        check_masks(datasets)
        name_unreadable_files(datamodule)
        super().setup(stage)
        if world_size() > 1:
            share_output_folder(self.trainer)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Load as anomalib does; a checkpoint file cut short is named, with the way out (torch's names none)."""
        return loaded_naming_damage(super().load_from_checkpoint, checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record which model class wrote the checkpoint, so that another model refuses it by name."""
        super().on_save_checkpoint(checkpoint)
        record_model_class(checkpoint, self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse another model's checkpoint, let the model adopt its settings, then resize the data as restored.

        anomalib copies the model's resize into the datasets at setup, which Lightning runs before it
        loads the checkpoint: a command-line model whose pre-processor the checkpoint changes would
        otherwise resize every image twice. Re-deriving the datasets' transforms is idempotent.
        """
        path = getattr(getattr(self, "_trainer", None), "ckpt_path", None)
        refuse_other_models_checkpoint(checkpoint, self, path)
        self.adopt_checkpoint_settings(checkpoint, path)
        super().on_load_checkpoint(checkpoint)
        datamodule = getattr(getattr(self, "_trainer", None), "datamodule", None)
        update = getattr(datamodule, "_update_augmentations", None)
        if update is not None:
            update()

    def adopt_checkpoint_settings(self, checkpoint: dict[str, Any], path: object) -> None:
        """Take the checkpoint's scoring settings before its tensors are copied; nothing to adopt by default."""
        del checkpoint, path

    def check_data_before_it_is_read(self) -> None:
        """Refuse data the datamodule would misread or fail on, before it prepares (downloads) or lists it.

        The fit's version folder, which anomalib's Engine made and pointed ``latest`` at before this,
        is still empty then: it is removed, and ``latest`` goes back to the last complete run.
        """
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            return
        try:
            refuse_missing_mvtec_category(datamodule)
            refuse_defect_images_without_masks(datamodule)
        except Exception:
            version_dir = Path(trainer.default_root_dir)
            if trainer.state.fn == TrainerFn.FITTING and trainer.is_global_zero and is_version_folder(version_dir):
                discard_if_empty(version_dir)
            raise

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """Check the data first (the earliest model hook of a run); the components' callbacks, then the run checks.

        The run checks come after the post-processor, which sets the threshold they check.
        """
        self.check_data_before_it_is_read()
        callbacks = super().configure_callbacks()
        callbacks = list(callbacks) if isinstance(callbacks, Sequence) else [callbacks]
        return [*callbacks, ThresholdCheck(), IncompleteRunMarker(), ConstantImagesCheck()]

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

    def _unpadded_size(self, batch: Batch, loader: Any) -> int:
        """How many of the batch's images come before the repeats a distributed sampler adds to even out shards."""
        keep = unpadded(loader, self._seen, len(batch.image))
        self._seen += len(batch.image)
        return keep

    @staticmethod
    def _truncate(batch: Batch, size: int) -> Batch:
        """Keep the batch's first ``size`` images and their fields, in place (callbacks read this object)."""
        values = {field.name: getattr(batch, field.name) for field in fields(batch)}
        return batch.update(**{name: value[:size] for name, value in values.items() if value is not None})

    def on_validation_epoch_start(self) -> None:
        """Count the shard's samples from the start, to tell the sampler's repeats."""
        super().on_validation_epoch_start()
        self._seen = 0

    def on_test_epoch_start(self) -> None:
        """Count the shard's samples from the start, to tell the sampler's repeats."""
        super().on_test_epoch_start()
        self._seen = 0

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> STEP_OUTPUT:
        """Score a batch; across processes, each image once, so that the metrics equal one device's."""
        del batch_idx
        loaders = self.trainer.test_dataloaders if self.trainer.testing else self.trainer.val_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, list | tuple) else loaders
        keep = self._unpadded_size(batch, loader)
        outputs = batch.update(**self.model(batch.image)._asdict())
        if keep == len(batch.image):
            return outputs
        if keep:
            return self._truncate(batch, keep)
        # Only repeats: the metrics, which read the batch, get no image; the post-processor, which reads
        # the returned copy, sees scores it has already seen, which leave its min-max normalisation as is.
        outputs = batch.update(in_place=False)
        self._truncate(batch, 0)
        return outputs

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> STEP_OUTPUT:
        """Score a test batch like a validation batch (each image once across processes)."""
        return self.validation_step(batch, batch_idx, dataloader_idx)
