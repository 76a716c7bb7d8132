"""Thresholds from good images only: the score that gives a requested false-alarm rate.

anomalib's default post-processor maximises F1 on the validation set, which needs defective images;
with good images only it settles on the lowest score and flags nearly everything. Here the
threshold is a quantile of held-out good scores, so a line can be set up before any defect has been
seen. The post-processor keeps anomalib's min/max normalisation, so 0.5 stays the decision boundary
in the checkpoint and in every export (the thresholds are buffers of the post-processor).

Example (anomalib's CLI; the validation images are held out from the good training images)::

    anomalib train --model FeatureRidge --data MVTecAD --data.category bottle \
        --data.val_split_mode from_train --data.val_split_ratio 0.2 \
        --model.post_processor anomalib_featureridge.NormalQuantilePostProcessor \
        --model.post_processor.false_alarm_rate 0.01

Offline, on images already scored (a loaded or exported model, a new line's good images),
:func:`calibrate` sets any post-processor's thresholds and normalisation without a trainer.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from anomalib.data import ImageBatch, InferenceBatch
from anomalib.metrics import AnomalibMetric
from anomalib.metrics.threshold import Threshold
from anomalib.post_processing import PostProcessor
from lightning import LightningModule, Trainer

logger = logging.getLogger(__name__)

__all__ = [
    "NormalQuantilePostProcessor",
    "NormalQuantileThreshold",
    "calibrate",
    "normal_quantile_threshold",
    "required_normal_count",
]

_RATE_TOLERANCE = 1e-9


def _check_rate(false_alarm_rate: float, name: str = "false_alarm_rate") -> float:
    rate = float(false_alarm_rate)
    if not 0.0 < rate < 1.0:
        msg = f"{name} must lie strictly between 0 and 1 (0.01 = one good image in a hundred flagged), got {rate}."
        raise ValueError(msg)
    return rate


def _allowed_above(count: int, false_alarm_rate: float) -> int:
    """How many of ``count`` good scores may lie at or above the threshold for the requested rate."""
    return math.floor((count + 1) * false_alarm_rate + _RATE_TOLERANCE)


def required_normal_count(false_alarm_rate: float) -> int:
    """The fewest good validation scores that can resolve ``false_alarm_rate`` (19 for 5 %, 99 for 1 %)."""
    rate = _check_rate(false_alarm_rate)
    return max(1, math.ceil(1.0 / rate - 1.0 - _RATE_TOLERANCE))


def normal_quantile_threshold(scores: torch.Tensor, false_alarm_rate: float) -> torch.Tensor:
    """Threshold on good scores such that a new good score exceeds it with probability at most the rate.

    With ``n`` exchangeable good scores, the ``r``-th smallest with ``r = ceil((n + 1) * (1 - rate))``
    is exceeded by a new good score with probability ``(n + 1 - r) / (n + 1) <= rate`` (the
    split-conformal quantile). It needs ``n >= 1 / rate - 1``; with fewer scores the largest one is
    returned and a warning says how many are needed.

    Raises:
        ValueError: No scores, or a rate outside (0, 1).
    """
    rate = _check_rate(false_alarm_rate)
    values = scores.detach().reshape(-1).float()
    count = values.numel()
    if count == 0:
        msg = "Cannot set a threshold from an empty set of good scores: the validation set has no good images."
        raise ValueError(msg)
    allowed = _allowed_above(count, rate)
    if allowed == 0:
        needed = required_normal_count(rate)
        warnings.warn(
            f"{count} good validation scores cannot resolve a false-alarm rate of {rate:g}: at least {needed} are "
            f"needed. Using the largest good score, which gives a false-alarm rate of about {1 / (count + 1):.3g}. "
            f"Hold out more good images (val_split_ratio) or request a higher rate.",
            UserWarning,
            stacklevel=2,
        )
        allowed = 1
    return torch.kthvalue(values.cpu(), count + 1 - allowed).values.to(scores.device)


class _NormalQuantile(Threshold):
    """Collects the scores of good (label 0) samples and returns their false-alarm quantile.

    Memory stays bounded for pixel scores: each value gets a random key and only the ``max_samples``
    values with the smallest keys are kept, which is a uniform sample without replacement of
    everything seen (exact when fewer values arrive).
    """

    def __init__(self, false_alarm_rate: float, max_samples: int = 2_000_000, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.false_alarm_rate = _check_rate(false_alarm_rate)
        self.max_samples = int(max_samples)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self.add_state("values", default=torch.empty(0), dist_reduce_fx="cat")
        self.add_state("keys", default=torch.empty(0), dist_reduce_fx="cat")
        self.add_state("normal_images", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("ignored_images", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep the scores of the good samples of a batch (labels: one per image)."""
        is_normal = labels.reshape(-1) == 0
        self.normal_images += int(is_normal.sum())
        self.ignored_images += int((~is_normal).sum())
        new_values = scores[is_normal.to(scores.device)].detach().reshape(-1).float()
        new_keys = torch.rand(new_values.numel(), generator=self._generator).to(new_values.device)
        self.values, self.keys = self._keep_smallest_keys(
            torch.cat([self.values, new_values]), torch.cat([self.keys, new_keys])
        )

    def _keep_smallest_keys(self, values: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if values.numel() <= self.max_samples:
            return values, keys
        kept = torch.topk(keys, self.max_samples, largest=False).indices
        return values[kept], keys[kept]

    def compute(self) -> torch.Tensor:
        """The threshold; raises when no good sample was seen."""
        if int(self.normal_images) == 0:
            msg = (
                f"The validation set has no good (label 0) images ({int(self.ignored_images)} anomalous ones were "
                f"seen): a normal-quantile threshold needs held-out good images, e.g. --data.val_split_mode "
                f"from_train --data.val_split_ratio 0.2."
            )
            raise ValueError(msg)
        values, _ = self._keep_smallest_keys(self.values, self.keys)
        return normal_quantile_threshold(values, self.false_alarm_rate)

    def reset(self) -> None:
        """Forget the collected scores; the same data then gives the same sample again."""
        super().reset()
        self._generator.manual_seed(self.seed)


class NormalQuantileThreshold(AnomalibMetric, _NormalQuantile):  # type: ignore[misc]
    """:class:`_NormalQuantile` reading its fields from anomalib batches (scores first, image labels second)."""


class NormalQuantilePostProcessor(PostProcessor):
    """anomalib's post-processor with thresholds set from good validation images only.

    The image threshold is the held-out good score that a new good image exceeds with probability
    ``false_alarm_rate``; the pixel threshold does the same over the pixels of the good images.
    Normalisation, sensitivity and export behave as in anomalib's :class:`PostProcessor`, so 0.5 is
    the threshold of the normalised scores in checkpoints and exports.

    Anomalous validation images (label 1) are left out of the thresholds with a warning: they usually
    mean the validation set was drawn from the test set (anomalib's default for MVTecAD), so hold out
    good training images instead (``val_split_mode="from_train"``). They still count for the min/max
    normalisation range, as in anomalib.

    Args:
        false_alarm_rate: Fraction of good images to flag, in (0, 1).
        pixel_false_alarm_rate: Fraction of good pixels to flag; ``None`` uses ``false_alarm_rate``.
        max_pixel_samples: Good pixel scores kept (a uniform random sample) to bound memory.
        **kwargs: As for :class:`anomalib.post_processing.PostProcessor`.

    Raises:
        ValueError: A rate outside (0, 1) (at construction); a validation set with no good images, or
            none at all, when fitting ends.
    """

    def __init__(
        self,
        false_alarm_rate: float = 0.01,
        pixel_false_alarm_rate: float | None = None,
        max_pixel_samples: int = 2_000_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.false_alarm_rate = _check_rate(false_alarm_rate)
        self.pixel_false_alarm_rate = (
            None if pixel_false_alarm_rate is None else _check_rate(pixel_false_alarm_rate, "pixel_false_alarm_rate")
        )
        self.max_pixel_samples = int(max_pixel_samples)
        self._build_threshold_metrics()

    def _build_threshold_metrics(self) -> None:
        """Replace anomalib's F1 threshold metrics; the inherited hooks then update and compute these."""
        pixel_rate = self.false_alarm_rate if self.pixel_false_alarm_rate is None else self.pixel_false_alarm_rate
        self._image_threshold_metric = NormalQuantileThreshold(
            fields=["pred_score", "gt_label"], false_alarm_rate=self.false_alarm_rate
        )
        # Pixels are selected by their image's label, so validation sets without masks work too.
        self._pixel_threshold_metric = NormalQuantileThreshold(
            fields=["anomaly_map", "gt_label"],
            strict=False,
            false_alarm_rate=pixel_rate,
            max_samples=self.max_pixel_samples,
        )

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, "false_alarm_rate", "pixel_false_alarm_rate", "max_pixel_samples")

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the rates and rebuild the metrics with them."""
        super().load_checkpoint_config(config)
        self._build_threshold_metrics()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Warn about anomalous validation images, then compute thresholds and normalisation as anomalib does."""
        if self.enable_thresholding and self._image_threshold_metric.update_called:
            ignored = int(self._image_threshold_metric.ignored_images)
            normal = int(self._image_threshold_metric.normal_images)
            if ignored and normal:
                warnings.warn(
                    f"The validation set holds {ignored} anomalous images; the thresholds use only its {normal} good "
                    f"ones. Anomalous validation images usually come from the test set (anomalib's default "
                    f"val_split_mode for MVTecAD): hold out good training images instead "
                    f"(--data.val_split_mode from_train), or the test false-alarm rate is optimistic.",
                    UserWarning,
                    stacklevel=2,
                )
        super().on_validation_epoch_end(trainer, pl_module)
        if self.enable_thresholding:
            logger.info(
                "Normal-quantile thresholds (false-alarm rate %g): image %.6g, pixel %.6g",
                self.false_alarm_rate,
                float(self._image_threshold),
                float(self._pixel_threshold),
            )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Refuse to end fitting without a threshold: validation never ran, so there were no good images."""
        del trainer, pl_module
        if self.enable_thresholding and bool(torch.isnan(self._image_threshold)):
            msg = (
                "NormalQuantilePostProcessor got no validation images, so it has no threshold. Hold out good "
                "training images for validation, e.g. --data.val_split_mode from_train --data.val_split_ratio 0.2."
            )
            raise ValueError(msg)


def calibrate(post_processor: PostProcessor, predictions: Iterable[InferenceBatch], labels: Sequence[int]) -> None:
    """Set a post-processor's thresholds and normalisation from raw predictions, as ``Engine.fit``'s validation does.

    For scores that already exist: re-calibrating a loaded model on the good images of a new line,
    or comparing several post-processors on the same scores, without fitting or scoring again.
    ``predictions`` are the torch model's raw outputs on pre-processed images (not normalised), in
    batches; ``labels`` holds one label per image across all batches, in order (0 good, 1 defective).
    Works with any anomalib post-processor; :class:`NormalQuantilePostProcessor` uses the good ones.

    Example::

        post_processor = NormalQuantilePostProcessor(false_alarm_rate=0.01)
        with torch.no_grad():
            predictions = [model.model(model.pre_processor(batch)) for batch in good_batches]
        calibrate(post_processor, predictions, [0] * sum(len(batch) for batch in good_batches))
        model.post_processor = post_processor

    Raises:
        ValueError: ``labels`` does not hold exactly one label per scored image.
    """
    predictions = list(predictions)
    scored = sum(prediction.pred_score.shape[0] for prediction in predictions)
    if scored != len(labels):
        # Checked before any update: a refused call leaves the post-processor as it was.
        msg = f"calibrate got {len(labels)} labels for {scored} scored images: give one label per image, in order."
        raise ValueError(msg)
    offset = 0
    for prediction in predictions:
        count = prediction.pred_score.shape[0]
        batch = ImageBatch(
            image=torch.zeros(count, 3, 1, 1),
            pred_score=prediction.pred_score,
            anomaly_map=prediction.anomaly_map,
            gt_label=torch.as_tensor(labels[offset : offset + count]),
        )
        post_processor.on_validation_batch_end(None, None, batch)
        offset += count
    post_processor.on_validation_epoch_end(None, None)
