"""SyntheticDefectMetric in pure torch: a fine-tuned CNN embedding, a metric head and the good embeddings.

The backbone's deepest requested feature map is average-pooled into the embedding. In training
the metric head turns it into class logits (``good`` and each synthetic defect kind). In eval
mode the image score is the embedding's distance to the good training embeddings (cosine or
LOF, see :mod:`.scoring`), and the anomaly map is the class-activation map of the defect
classes against ``good``: ``max_k (CAM_k - CAM_good)``, computed from the feature map and the
class weights in the forward pass, so no gradient is needed and the whole model exports.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from anomalib.data import InferenceBatch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_featureridge.components.feature_extractor import available_layers, create_feature_extractor

from .heads import MetricHead, make_head
from .scoring import SCORERS, EmbeddingBank


def _module_names(features: nn.Module) -> list[str]:
    """Names a fine-tuning choice can use: top-level modules and, for block models, each block."""
    names = [name for name, _ in features.named_children()]
    blocks = getattr(features, "blocks", None)
    if isinstance(blocks, nn.Sequential):
        names += [f"blocks.{index}" for index in range(len(blocks))]
    return names


class SyntheticDefectMetricModel(nn.Module):
    """Torch module; eval-mode ``forward`` returns ``InferenceBatch(pred_score, anomaly_map)``.

    Args:
        backbone: timm CNN name.
        layer: Feature layer whose map is pooled into the embedding; ``None``: the deepest one.
        pre_trained: Use timm's ImageNet weights (from the local cache, else downloaded).
        backbone_weights: Local timm state dict; overrides ``pre_trained`` and needs no network.
        trainable_blocks: Modules of the backbone to fine-tune, by name (e.g. ``["blocks.5",
            "blocks.6"]``); ``None`` fine-tunes all of it, ``[]`` none (only the head learns).
        n_classes: ``good`` plus the number of defect kinds.
        loss: Metric head, one of :data:`.heads.LOSSES`.
        scorer: One of :data:`.scoring.SCORERS`.
        n_neighbors: Neighbours of the LOF scorer.
    """

    def __init__(
        self,
        backbone: str = "mobilenetv2_100",
        layer: str | None = None,
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        trainable_blocks: Sequence[str] | None = None,
        n_classes: int = 3,
        loss: str = "arcface",
        scorer: str = "cosine",
        n_neighbors: int = 20,
    ) -> None:
        super().__init__()
        if scorer not in SCORERS:
            msg = f"Unknown scorer {scorer!r}; choose from {SCORERS}."
            raise ValueError(msg)
        if n_classes < 2:
            msg = f"Need good and at least one defect class, got {n_classes} classes."
            raise ValueError(msg)
        self.backbone = backbone
        self.layer = layer or available_layers(backbone)[-1]
        self.scorer = scorer
        self.feature_extractor = create_feature_extractor(
            backbone, [self.layer], pre_trained, backbone_weights, frozen=False
        )
        self._set_trainable(trainable_blocks)
        dim = self.feature_extractor.feature_info.channels()[-1]
        self.head: MetricHead = make_head(loss, dim, n_classes)
        self.bank = EmbeddingBank(dim, n_neighbors)
        config = getattr(self.feature_extractor, "pretrained_cfg", None) or {}
        mean = torch.tensor(config.get("mean", IMAGENET_DEFAULT_MEAN), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(config.get("std", IMAGENET_DEFAULT_STD), dtype=torch.float32).view(1, -1, 1, 1)
        # Normalisation is part of the model: the synthetic defects are drawn on [0, 1] images before it.
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.mean: torch.Tensor
        self.std: torch.Tensor

    def _set_trainable(self, trainable_blocks: Sequence[str] | None) -> None:
        if trainable_blocks is None:
            return
        names = _module_names(self.feature_extractor)
        unknown = [name for name in trainable_blocks if name not in names]
        if unknown:
            msg = f"Backbone {self.backbone!r} has no module {unknown} to fine-tune. Its modules are: {names}."
            raise ValueError(msg)
        chosen = tuple(f"{name}." for name in trainable_blocks)
        for name, parameter in self.feature_extractor.named_parameters():
            parameter.requires_grad_(name.startswith(chosen))

    def train(self, mode: bool = True) -> SyntheticDefectMetricModel:
        """Switch mode, but keep the batch norms of frozen modules in eval mode (their statistics must not move)."""
        super().train(mode)
        for module in self.feature_extractor.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                parameter.requires_grad for parameter in module.parameters()
            ):
                module.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The feature map ``(B, D, h, w)`` of images in [0, 1] (normalised here)."""
        if images.ndim != 4 or images.shape[1] not in {1, 3}:
            msg = f"Expected images of shape (B, 3, H, W) (or (B, 1, H, W) grayscale), got {tuple(images.shape)}."
            raise ValueError(msg)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.feature_extractor((images - self.mean) / self.std)[-1]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings ``(B, D)`` (not normalised)."""
        return self.features(images).mean(dim=(2, 3))

    def training_logits(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Class logits of the metric head for the cross-entropy loss."""
        return self.head.logits(self.embed(images), labels)

    def anomaly_maps(self, features: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
        """Evidence for the strongest defect class over ``good``, ``(B, 1, H, W)`` at ``size``."""
        maps = self.head.class_maps(features)
        defect = (maps[:, 1:] - maps[:, :1]).amax(dim=1, keepdim=True)
        return F.interpolate(defect, size=size, mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Score a batch: distance to the good embeddings, and the defect-class activation map."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and self.bank.is_empty:
            msg = "SyntheticDefectMetric has no good embeddings yet: train it first (anomalib train / engine.fit)."
            raise RuntimeError(msg)
        features = self.features(images)
        embeddings = features.mean(dim=(2, 3))
        score = self.bank.cosine_score(embeddings) if self.scorer == "cosine" else self.bank.lof_score(embeddings)
        return InferenceBatch(pred_score=score, anomaly_map=self.anomaly_maps(features, images.shape[-2:]))
