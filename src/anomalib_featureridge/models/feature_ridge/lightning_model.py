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

import inspect
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
from .ridge import RidgeStatistics
from .torch_model import LOCAL_HEADS, OPTIONS_BEFORE_THEY_EXISTED, POSITION_STATISTICS, FeatureRidgeModel

logger = logging.getLogger(__name__)

__all__ = ["FeatureRidge"]


TRAINED_WITH_KEY = "feature_ridge_trained_with"
SCORING_SETTINGS = (
    "backbone",
    "layers",
    "head",
    "region",
    "pool",
    "reference",
    "channels",
    "rank",
    "alpha",
    "sigma",
    "keep_statistics",
)


class FeatureRidge(ScoringModelMixin, PreparedExportMixin, AnomalibModule):
    """FeatureRidge: Ridge regression from a shallow to a deep CNN feature map, fitted on normal images.

    Whether it is fitted is the torch model's ``fitted`` buffer alone (it travels with exports);
    anomalib's ``MemoryBankMixin`` would keep a second flag that has to be kept in step with it.

    Args:
        backbone: Any timm CNN. The default matches anomalib's Patchcore so that both compare
            like for like; the paper used ``wide_resnet101_2``.
        layers: ``[shallow, deep]``; the shallow map (with its 3x3 neighbours) predicts the deep one.
        pre_trained: Use timm's ImageNet weights, downloaded as anomalib does.
        backbone_weights: Path to a local timm state dict, for machines without network access.
        alpha: Ridge penalty (paper: 1.0).
        sigma: Gaussian smoothing of the anomaly map in pixels (0 = off).
        rank: Rank of the Ridge map; ``None`` (the paper) fits the full map. A rank below the deep
            layer's channel count makes scoring cheaper (the best map of that rank, as two
            convolutions; measured in docs/benchmarks.md).
        head: ``"paper"`` (default): the paper's log squared error, for images of any size.
            ``"gaussian"`` (opt-in, ``--model.head gaussian``): the regression centred per position,
            its residual scored by the Mahalanobis norm plus how typical the shallow features are;
            it scores only images of the training size (docs/method.md).
            ``"local"`` (opt-in, ``--model.head local``): a Gaussian of the shallow features per position
            and a Ridge map from them to the deep ones per block of positions; the same limits as
            ``"gaussian"`` (docs/method.md). A checkpoint from before this option has the paper's head.
            ``"two_scale"`` (opt-in, ``configs/feature_ridge_two_scale.yaml``): the local head and a coarse one on
            averaged maps, the larger of the fine score and the eroded coarse one times a fixed weight; for hard
            textures. The same limits as ``"local"``, and updates as exact.
        region: Side, in feature positions, of the blocks that share one map in the local heads.
        pool: Side (odd) of the mean over neighbouring feature positions taken of both maps before the
            head; ``1`` (default) takes none. Better on large, faint defects, worse on small ones
            (docs/method.md).
        reference: ``"none"`` (default), or ``"median"``: both maps (after ``pool``) minus their own
            per-channel median over the image, so that a shift of a whole image's features (another batch
            of material, other lighting) scores nothing; or ``"contrast"``: that, over the image's own
            contrast, so that a whole image that varies more strongly scores nothing either; both measured
            in docs/method.md. A checkpoint from before this option has ``"none"``.
        keep_statistics: Keep the sufficient statistics in the checkpoint so that new normal images
            can be added later with ``model.model.update(images)``; ``False`` gives smaller
            checkpoints.
        fit_precision: ``"float64"`` (default, exact) or ``"float32"``: the dtype of each batch's
            products in the fit, always summed in float64. float32 fits faster, most on GPUs with slow
            float64, and changes the map by float32 rounding (measured in docs/method.md).
        channels: With ``head="local"`` or ``"two_scale"``: ``[shallow, deep]``, how many of each map's
            channels to keep, a seeded random subset as Padim's; ``None`` (default) keeps them all. The
            head's size falls with the square of the counts (measured in docs/method.md). A checkpoint
            keeps its subset, and one from before this option kept every channel.
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
        head: str = "paper",
        region: int = 2,
        pool: int = 1,
        reference: str = "none",
        fit_precision: str = "float64",
        channels: Sequence[int] | None = None,
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
        # Pretrained weights are fetched on first use: a checkpoint loaded first brings its own.
        defer_weights = pre_trained and backbone_weights is None
        self.model: FeatureRidgeModel = FeatureRidgeModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained and not defer_weights,
            backbone_weights=backbone_weights,
            alpha=alpha,
            sigma=sigma,
            rank=rank,
            keep_statistics=keep_statistics,
            head=head,
            region=region,
            pool=pool,
            reference=reference,
            fit_precision=fit_precision,
            channels=channels,
        )
        if defer_weights:
            defer_pretrained_weights(self.model.feature_extractor, backbone, layers)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args, **kwargs) -> FeatureRidge:  # noqa: ANN002, ANN003
        """Load a trained model; the backbone comes from the checkpoint, so no weights file or download is needed."""
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("backbone_weights", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the scoring settings and the model class beside the hyper-parameters."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[TRAINED_WITH_KEY] = _settings_of_head(self._scoring_settings())

    def _scoring_settings(self) -> dict[str, Any]:
        """What the fitted tensors and the scores depend on (plus keep_statistics, which fixes the state's shape)."""
        return {
            "backbone": self.model.backbone,
            "layers": list(self.model.layers),
            "head": self.model.head,
            "region": self.model.region,
            "pool": self.model.pool,
            "reference": self.model.reference,
            "channels": self.model.channels,
            "rank": self.model.rank,
            "alpha": float(self.model.alpha),
            "sigma": float(self.hparams.get("sigma", _DEFAULTS["sigma"])),
            "keep_statistics": bool(self.model.keep_statistics),
        }

    @staticmethod
    def _trained_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's scoring settings; older checkpoints keep some only in the hyper-parameters."""
        recorded = checkpoint.get(TRAINED_WITH_KEY, {})
        # load_from_checkpoint writes its keyword arguments into the hyper-parameters, so a setting that
        # the recorded ones lack predates its option and scores as models did before it.
        saved = {**checkpoint.get("hyper_parameters", {}), **recorded}
        trained = {
            key: recorded.get(key, OPTIONS_BEFORE_THEY_EXISTED[key])
            if key in OPTIONS_BEFORE_THEY_EXISTED
            else saved.get(key, _DEFAULTS[key])
            for key in SCORING_SETTINGS
        }
        trained["layers"] = list(trained["layers"])
        trained["channels"] = None if trained["channels"] is None else [int(count) for count in trained["channels"]]
        trained["alpha"], trained["sigma"] = float(trained["alpha"]), float(trained["sigma"])
        return _settings_of_head(trained)

    def adopt_checkpoint_settings(self, checkpoint: dict[str, Any], path: object) -> None:
        """Score with the checkpoint's settings, before tensors are copied (components/checkpoints.py has the rule)."""
        trained = self._trained_settings(checkpoint)
        if settings_from_checkpoint(self._scoring_settings(), trained, _DEFAULTS, path):
            device = self.model.fitted.device
            self.model = FeatureRidgeModel(
                **trained, fit_precision=self.model.fit_precision, pre_trained=False, backbone_weights=None
            ).to(device)
            self.hparams.update({**trained, "pre_trained": False, "backbone_weights": None})

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
                {"model": type(self).__name__, **self._scoring_settings()},
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
        logger.info("Solved the %s head from %s.", self.model.head, self.model.describe_fit())

    def _require_fitted(self) -> None:
        if not bool(self.model.fitted):
            msg = "Cannot export FeatureRidge before it is fitted: train it first, or export a trained checkpoint."
            raise RuntimeError(msg)

    @contextmanager
    def export_context(self) -> Iterator[None]:
        """Every export needs a fitted model and leaves the training-only statistics out (the live model keeps them)."""
        self._require_fitted()
        kept = {name: getattr(self.model, name) for name in ("statistics", *POSITION_STATISTICS)}
        self.model.statistics = RidgeStatistics().to(kept["statistics"].count.device)
        for name in POSITION_STATISTICS:
            if kept[name] is not None:
                setattr(self.model, name, kept[name].empty_copy().to(kept[name].count.device))
        try:
            yield
        finally:
            for name, statistics in kept.items():
                setattr(self.model, name, statistics)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """One pass over the data, no sanity validation; any number of devices (the statistics add up exactly)."""
        return {"gradient_clip_val": 0, "max_epochs": 1, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """Trained on normal images only."""
        return LearningType.ONE_CLASS


def _settings_of_head(settings: dict[str, Any]) -> dict[str, Any]:
    """The scoring settings that the head's scores depend on: only the local heads read ``region``."""
    if settings["head"] in LOCAL_HEADS:
        return settings
    return {key: value for key, value in settings.items() if key != "region"}


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


_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(FeatureRidge.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}
_DEFAULTS["layers"] = list(_DEFAULTS["layers"])
