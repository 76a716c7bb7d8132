"""FeatureRidge in pure torch: backbone -> map preparation -> head -> resize and smoothing -> ``InferenceBatch``.

A frozen ImageNet CNN gives a shallow and a deep feature map; the kept ``channels`` of each, averaged over
``pool`` positions and referred to their image (``maps.py``), go to the head (``heads/``), which fits
closed-form statistics on normal images and scores each position of the shallow grid by how far it is
from normal. The patch scores are bilinearly resized to the image and smoothed (``sigma``); the image
score is the map's maximum. This module is the pipeline and the fit loop; what a head is and does lives
in its own file, and each option is declared once (``options.py``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from anomalib.data import InferenceBatch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_featureridge.components.export import is_exporting
from anomalib_featureridge.components.feature_extractor import create_feature_extractor
from anomalib_featureridge.components.filters import gaussian_blur_or_none

from . import legacy
from .channels import channel_subsets
from .heads import head_class
from .heads.base import Reduction
from .maps import FeatureMaps
from .options import BY_NAME, DEFAULTS, check_options, describe
from .ridge import refuse_non_finite


class FeatureRidgeModel(nn.Module):
    """FeatureRidge torch module; eval-mode ``forward`` returns ``InferenceBatch(pred_score, anomaly_map)``."""

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
    ) -> None:
        super().__init__()
        # Every keyword above is a declared option (options.py): checked there, defaults filled in.
        settings = check_options({name: value for name, value in locals().items() if name in BY_NAME})
        # The checked options, minus how the backbone's weights were found (the state carries them).
        self.settings = {k: v for k, v in settings.items() if k not in ("pre_trained", "backbone_weights")}
        self.feature_extractor = create_feature_extractor(
            settings["backbone"], settings["layers"], pre_trained, backbone_weights
        )
        reductions = self.feature_extractor.feature_info.reduction()
        if reductions[0] > reductions[1]:
            msg = (
                f"The first layer must be the shallower one (finer grid); got strides {reductions} for "
                f"{settings['layers']}."
            )
            raise ValueError(msg)
        counts = self._register_kept_channels(tuple(self.feature_extractor.feature_info.channels()))
        self.head = head_class(settings["head"])(counts, self.settings)
        self.register_buffer("fitted", torch.tensor(False))
        self.fitted: torch.Tensor
        self.blur = gaussian_blur_or_none(settings["sigma"])

    def _register_kept_channels(self, available: tuple[int, int]) -> tuple[int, int]:
        """The indices of the channels kept of each map (buffers, so a checkpoint keeps its subset); their counts."""
        requested = self.settings["channels"]
        kept = None if requested is None else channel_subsets(requested, available, self.settings["layers"])
        self.register_buffer("shallow_channels", None if kept is None else kept[0])
        self.register_buffer("deep_channels", None if kept is None else kept[1])
        self.shallow_channels: torch.Tensor | None
        self.deep_channels: torch.Tensor | None
        return available if kept is None else (len(kept[0]), len(kept[1]))

    @property
    def backbone(self) -> str:
        """The timm backbone's name."""
        return self.settings["backbone"]

    @property
    def layers(self) -> list[str]:
        """The ``[shallow, deep]`` layer names."""
        return self.settings["layers"]

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        # A state saved before heads were modules keeps the head's tensors under the model's own names.
        legacy.move_head_state(state_dict, prefix, type(self.head))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __setstate__(self, state: dict) -> None:
        """Unpickle (a torch export); one pickled before heads were modules is brought to this layout."""
        super().__setstate__(legacy.upgraded_pickle(state) if "settings" not in state else state)

    def train(self, mode: bool = True) -> FeatureRidgeModel:
        """Switch mode but keep the frozen backbone in eval mode (BatchNorm must not adapt)."""
        super().train(mode)
        self.feature_extractor.eval()
        return self

    def maps(self, images: torch.Tensor) -> FeatureMaps:
        """The backbone's shallow and deep map of a batch (only the kept ``channels``), ready for the head."""
        if images.ndim != 4 or images.shape[1] not in {1, 3}:
            msg = f"Expected images of shape (B, 3, H, W) (or (B, 1, H, W) grayscale), got {tuple(images.shape)}."
            raise ValueError(msg)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        with torch.no_grad():
            shallow, deep = self.feature_extractor(images)
        if self.shallow_channels is not None:
            shallow, deep = shallow.index_select(1, self.shallow_channels), deep.index_select(1, self.deep_channels)
        return FeatureMaps(shallow, deep, self.settings["pool"], self.settings["reference"])

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prepared shallow map and the prepared deep map upsampled to the shallow grid."""
        return self.maps(images).on_shallow_grid()

    @torch.no_grad()
    def accumulate(self, images: torch.Tensor) -> None:
        """Add a batch of normal images to the head's pending sums; :meth:`fit` commits them and re-solves.

        A fitted model whose sums were dropped refuses the batch (:meth:`require_statistics`), whichever way
        it arrives (``update``, a training step, a hand-made fit).
        """
        if bool(self.fitted):
            self.require_statistics()
        maps = self.maps(images)
        refuse_non_finite(*maps.prepared())
        self.head.accumulate(maps)

    @property
    def has_pending(self) -> bool:
        """True when images were accumulated since the last fit (the fit in progress has rows to commit)."""
        return self.head.has_pending

    def discard_pending(self) -> bool:
        """Forget the rows accumulated since the last fit (an unfinished fit); True if there were any."""
        return self.head.discard_pending()

    def describe_fit(self) -> str:
        """How much the fit's sums hold, for logs."""
        return f"{self.head.fit_count()} {self.head.counts}"

    @torch.no_grad()
    def fit(self, reduce: Reduction | None = None) -> None:
        """Add the pending rows to the head's sums and solve, all or nothing.

        ``reduce`` combines the pending rows with other processes' (a distributed fit). The sums, the
        head's tensors and ``fitted`` change only when the solve succeeds; the pending rows are used up
        either way, so a failed fit is never counted twice.
        """
        self.head.fit(reduce)
        self.fitted.fill_(True)
        if not self.settings["keep_statistics"]:
            self.head.clear_statistics()

    def require_statistics(self) -> None:
        """Refuse to add images to a fitted model whose statistics were dropped: the first fit would be lost."""
        if bool(self.fitted) and self.head.statistics_dropped:
            msg = (
                "This model's sufficient statistics were dropped (keep_statistics=False), so new images would "
                "silently replace the first fit instead of adding to it. Refit on all images, from a new model "
                "with keep_statistics=True."
            )
            raise RuntimeError(msg)

    @torch.no_grad()
    def update(self, images: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Add new normal images and re-solve, without revisiting the images already fitted.

        ``images`` is a pre-processed batch ``(B, 3, H, W)`` or an iterable of such batches or
        single images ``(3, H, W)``, which may differ in size (for the heads that score any size).
        """
        self.require_statistics()
        batches = [images] if isinstance(images, torch.Tensor) else images
        try:
            for batch in batches:
                self.accumulate(batch.unsqueeze(0) if batch.ndim == 3 else batch)
        except BaseException:
            # A refused batch fails the whole update: none of its rows may reach a later fit.
            self.discard_pending()
            raise
        self.fit()

    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Patch scores on the shallow grid, ``(B, 1, h, w)``: the head's distance from normal."""
        return self.head.scores(self.maps(images))

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Score a batch: pixel map resized to the input, image score = its maximum.

        An image with a NaN or infinite pixel (a camera or pipeline fault) scores +inf everywhere, in every
        export too, so that it can never pass as a normal part; eagerly, a warning says how many there were.
        """
        if not is_exporting() and not bool(self.fitted):
            msg = "FeatureRidge has not been fitted: train it on normal images first (anomalib train / engine.fit)."
            raise RuntimeError(msg)
        patch_scores = self.patch_scores(images)
        if self.blur is None:
            anomaly_map = F.interpolate(patch_scores, size=images.shape[-2:], mode="bilinear", align_corners=False)
        else:
            anomaly_map = self.blur(patch_scores, images.shape[-2:])
        finite = torch.isfinite(images).flatten(1).all(dim=1)
        anomaly_map = torch.where(finite[:, None, None, None], anomaly_map, torch.full_like(anomaly_map, math.inf))
        if not is_exporting() and not bool(finite.all()):
            warnings.warn(
                f"{int((~finite).sum())} of {len(finite)} images have NaN or infinite pixels: they score +inf "
                "(anomalous). Check the camera and the pre-processing.",
                UserWarning,
                stacklevel=2,
            )
        pred_score = torch.amax(anomaly_map, dim=(-3, -2, -1))
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)


FeatureRidgeModel.__doc__ = f"{FeatureRidgeModel.__doc__}\n\n{describe()}\n"
