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
from functools import partial
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.visualization import Visualizer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from anomalib_featureridge.components.checkpoints import settings_from_checkpoint
from anomalib_featureridge.components.distributed import world_size
from anomalib_featureridge.components.export import PreparedExportMixin
from anomalib_featureridge.components.feature_extractor import defer_pretrained_weights, materialise_pretrained_weights
from anomalib_featureridge.components.scoring_module import ScoringModelMixin

from . import distributed
from .options import ALWAYS, BY_NAME, DEFAULTS, OPTIONS, check_options, describe, recorded_settings, saved_value
from .torch_model import FeatureRidgeModel

logger = logging.getLogger(__name__)

__all__ = ["FeatureRidge"]


TRAINED_WITH_KEY = "feature_ridge_trained_with"


class FeatureRidge(ScoringModelMixin, PreparedExportMixin, AnomalibModule):
    """FeatureRidge: a shallow CNN feature map predicts a deeper one; defects are what the head finds abnormal.

    Whether it is fitted is the torch model's ``fitted`` buffer alone (it travels with exports);
    anomalib's ``MemoryBankMixin`` would keep a second flag that has to be kept in step with it. Every
    option but the four anomalib components is declared in ``options.py``, which writes the lines below.
    """

    def __init__(
        self,
        backbone: str = DEFAULTS["backbone"],
        layers: Sequence[str] = DEFAULTS["layers"],
        pre_trained: bool = DEFAULTS["pre_trained"],
        backbone_weights: str | Path | None = DEFAULTS["backbone_weights"],
        alpha: float = DEFAULTS["alpha"],
        sigma: float = DEFAULTS["sigma"],
        rank: int | None = DEFAULTS["rank"],
        keep_statistics: bool = DEFAULTS["keep_statistics"],
        head: str = DEFAULTS["head"],
        region: int = DEFAULTS["region"],
        pool: int = DEFAULTS["pool"],
        reference: str = DEFAULTS["reference"],
        fit_precision: str = DEFAULTS["fit_precision"],
        channels: Sequence[int] | None = DEFAULTS["channels"],
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        # The model's own options, as given: every keyword above but the anomalib components.
        options = {name: value for name, value in locals().items() if name in BY_NAME}
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        # Pretrained weights are fetched on first use: a checkpoint loaded first brings its own.
        defer_weights = pre_trained and backbone_weights is None
        options["pre_trained"] = pre_trained and not defer_weights
        self.model: FeatureRidgeModel = FeatureRidgeModel(**options)
        if defer_weights:
            defer_pretrained_weights(self.model.feature_extractor, self.model.backbone, self.model.layers)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args, **kwargs) -> FeatureRidge:  # noqa: ANN002, ANN003
        """Load a trained model; the backbone comes from the checkpoint, so no weights file or download is needed."""
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("backbone_weights", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the settings the head's scores depend on beside the hyper-parameters."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[TRAINED_WITH_KEY] = recorded_settings(self.model.settings)

    def _scoring_settings(self) -> dict[str, Any]:
        """Every recorded option's value in this model (what the checkpoint rules compare)."""
        return {option.name: self.model.settings[option.name] for option in OPTIONS if option.recorded}

    @staticmethod
    def _trained_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's value of every recorded option; those its head does not read take their defaults.

        Options added after a checkpoint was saved take the value models scored with before they existed.
        """
        recorded = checkpoint.get(TRAINED_WITH_KEY, {})
        # load_from_checkpoint writes its keyword arguments into the hyper-parameters, so only the options
        # every checkpoint recorded are read from them; one the recorded settings lack predates its option.
        hyper_parameters = checkpoint.get("hyper_parameters", {})
        always = {
            name: value
            for name, value in hyper_parameters.items()
            if name in BY_NAME and BY_NAME[name].before_it_existed is ALWAYS
        }
        saved = {**always, **recorded}
        head = saved_value(BY_NAME["head"], "paper", saved)
        trained = {
            option.name: option.validated(saved_value(option, head, saved)) for option in OPTIONS if option.recorded
        }
        return trained

    def adopt_checkpoint_settings(self, checkpoint: dict[str, Any], path: object) -> None:
        """Score with the checkpoint's settings, before tensors are copied (components/checkpoints.py has the rule)."""
        trained = self._trained_settings(checkpoint)
        if settings_from_checkpoint(self._scoring_settings(), trained, check_options({}), path):
            device = self.model.fitted.device
            # Options checkpoints do not record stay this model's where the checkpoint's head reads them.
            unrecorded = {
                option.name: self.model.settings[option.name]
                for option in OPTIONS
                if not option.recorded and option.name in self.model.settings and option.reads(trained["head"])
            }
            self.model = FeatureRidgeModel(**trained, **unrecorded, pre_trained=False, backbone_weights=None).to(device)
            self.hparams.update({**self.model.settings, "pre_trained": False, "backbone_weights": None})

    def setup(self, stage: str) -> None:
        """Refuse an empty training set before Lightning fails on it with a sampler error."""
        super().setup(stage)
        datamodule = getattr(self._trainer, "datamodule", None)
        train_data = getattr(datamodule, "train_data", None)
        if stage == "fit" and train_data is not None and len(train_data) == 0:
            msg = (
                f"FeatureRidge needs normal training images, but the training set of {type(datamodule).__name__} "
                f"is empty. {_empty_train_folder_hint(datamodule)}"
            )
            raise ValueError(msg)
        if world_size() > 1:
            self._setup_distributed(stage)

    def _setup_distributed(self, stage: str) -> None:
        """Data-parallel fits run on DDP without its gradient wrapper: same weights at the start, one all-reduce."""
        strategy = self.trainer.strategy
        if not isinstance(strategy, DDPStrategy):
            msg = (
                f"FeatureRidge fits on several devices with Lightning's DDP strategies (ddp, ddp_spawn, torchrun, "
                f"SLURM), not with {type(strategy).__name__}: pass --trainer.strategy ddp."
            )
            raise ValueError(msg)
        if stage == "fit":
            # DistributedDataParallel refuses a module with no trainable parameter; nothing here has gradients.
            strategy.configure_ddp = partial(
                distributed.synchronise,
                self.model,
                {"model": type(self).__name__, **recorded_settings(self.model.settings)},
            )

    def on_train_start(self) -> None:
        """Fetch deferred pretrained weights (a resumed checkpoint brought them); a fitted model is updated.

        Fitting a fitted model adds the new images to its statistics (an incremental update) and re-solves.
        """
        materialise_pretrained_weights(self.model.feature_extractor)
        if bool(self.model.fitted):
            self.model.require_statistics()
            logger.info(
                "FeatureRidge is already fitted on %s: the new training images are added to them.",
                self.model.describe_fit(),
            )

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        # Checkpoints written while this class used MemoryBankMixin hold its flag; ``model.fitted`` says the same.
        state_dict.pop(prefix + "_is_fitted", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def on_train_epoch_start(self) -> None:
        """A fit starts clean: rows left pending by an interrupted or failed fit are dropped, never counted twice."""
        if self.current_epoch > 0:
            logger.warning(
                "FeatureRidge fits in one epoch: the images of epoch %d were counted already and are not added again.",
                self.current_epoch + 1,
            )
        if self.model.discard_pending():
            logger.warning("Dropped the statistics of an unfinished fit: this fit starts from the last completed one.")
        self._seen = 0

    def training_step(self, batch: Batch, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        """Accumulate the batch's features into the pending Ridge statistics (each training image once, in epoch 1)."""
        del args, kwargs
        keep = self._unpadded_size(batch, self.trainer.train_dataloader)
        if keep and self.current_epoch == 0:
            self.model.accumulate(batch.image[:keep])
        return torch.tensor(0.0, requires_grad=True, device=self.device)

    def _solve_due(self) -> bool:
        """The map is due when it was never solved, or when rows of this fit wait to be committed."""
        return not bool(self.model.fitted) or self.model.has_pending

    def on_validation_start(self) -> None:
        """Score with this fit's map: Lightning validates before the training epoch's end hook runs."""
        if self._solve_due():
            self.fit()

    def on_train_epoch_end(self) -> None:
        """Solve the map from the epoch's rows (unless the validation that ran first has)."""
        if self._solve_due():
            self.fit()

    def fit(self) -> None:
        """Solve the Ridge map once the training epoch has been seen, from every process's rows.

        Called when the training epoch ends. Outside a fit (a ``validate`` after an interrupted
        fit) the rows of the unfinished fit are dropped, not committed.
        """
        if self._trainer is None or self._trainer.state.fn != TrainerFn.FITTING:
            self.model.discard_pending()
        reduce = distributed.AllReduce(self.device) if world_size() > 1 else None
        self.model.fit(reduce)
        logger.info("Solved the %s head from %s.", self.model.settings["head"], self.model.describe_fit())

    def _require_fitted(self) -> None:
        if not bool(self.model.fitted):
            msg = "Cannot export FeatureRidge before it is fitted: train it first, or export a trained checkpoint."
            raise RuntimeError(msg)

    @contextmanager
    def export_context(self) -> Iterator[None]:
        """Every export needs a fitted model and leaves the training-only statistics out (the live model keeps them)."""
        self._require_fitted()
        with self.model.head.without_statistics():
            yield

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """One pass over the data, no sanity validation; any number of devices (the statistics add up exactly)."""
        return {"gradient_clip_val": 0, "max_epochs": 1, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """Trained on normal images only."""
        return LearningType.ONE_CLASS


def _empty_train_folder_hint(datamodule: object) -> str:
    """Name the folder anomalib read and, when it holds images it ignores, why (MVTecAD reads only .png)."""
    root, category = getattr(datamodule, "root", None), getattr(datamodule, "category", None)
    if root is None or category is None:
        return "Check the dataset root, the category and its train/good folder."
    folder = Path(root) / str(category) / "train" / "good"
    if not folder.is_dir():
        return f"The folder {folder} does not exist: check --data.root and --data.category."
    ignored = sorted({path.suffix for path in folder.iterdir() if path.suffix.lower() != ".png" and path.is_file()})
    if ignored:
        return (
            f"{folder} holds {', '.join(ignored)} files, but {type(datamodule).__name__} reads only .png: convert "
            f"them to PNG, or use anomalib's Folder datamodule (--data Folder --data.normal_dir ...), which reads "
            f"other formats."
        )
    return f"{folder} holds no .png images."


FeatureRidge.__doc__ = (
    f"{FeatureRidge.__doc__}\n\n"
    + describe(extra=["pre_processor, post_processor, evaluator, visualizer: As in every anomalib model."])
    + "\n"
)
