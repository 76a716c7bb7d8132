"""SyntheticDefectMetric in pure torch: a fine-tuned CNN embedding, a metric head and the good embeddings.

The backbone's deepest requested feature map is average-pooled into the embedding. In training
the metric head turns it into class logits (``good`` and each synthetic defect kind). In eval
mode the image score is the embedding's distance to the good training embeddings (cosine or
LOF, see :mod:`.scoring`), and the anomaly map is the class-activation map of the defect
classes against ``good``: ``max_k (CAM_k - CAM_good)``, computed from the feature map and the
class weights in the forward pass, so no gradient is needed and the whole model exports.

``anomaly_map="grad_cam"`` is the analysis option: Grad-CAM (Selvaraju et al., 2017) of the same
evidence, ``logit_k - logit_good`` without margin or scale, at a shallower layer if asked
(``grad_cam_layer``), for a finer map than the embedding layer's stride. It needs autograd, so a
model with it does not export.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from anomalib.data import InferenceBatch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_featureridge.components.export import is_exporting
from anomalib_featureridge.components.feature_extractor import available_layers, create_feature_extractor

from .heads import MetricHead, make_head
from .scoring import SCORERS, EmbeddingBank

ANOMALY_MAPS = ("cam", "grad_cam")


def _module_names(features: nn.Module) -> list[str]:
    """Names a fine-tuning choice can use: top-level modules and, for block models, each block."""
    names = [name for name, _ in features.named_children()]
    blocks = getattr(features, "blocks", None)
    if isinstance(blocks, nn.Sequential):
        names += [f"blocks.{index}" for index in range(len(blocks))]
    return names


def _check_grad_cam_layer(backbone: str, layer: str, grad_cam_layer: str | None) -> str:
    """The layer Grad-CAM weighs: the embedding layer or one before it (later ones do not feed the score)."""
    if grad_cam_layer is None:
        return layer
    names = available_layers(backbone)
    allowed = names[: names.index(layer) + 1]
    if grad_cam_layer not in allowed:
        msg = f"grad_cam_layer {grad_cam_layer!r} must be the embedding layer {layer!r} or one before it: {allowed}."
        raise ValueError(msg)
    return grad_cam_layer


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
        anomaly_map: ``cam`` (exports) or ``grad_cam`` (analysis only: needs autograd, does not export).
        grad_cam_layer: Layer whose activations Grad-CAM weighs; ``None``: the embedding layer.
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
        anomaly_map: str = "cam",
        grad_cam_layer: str | None = None,
    ) -> None:
        super().__init__()
        if scorer not in SCORERS:
            msg = f"Unknown scorer {scorer!r}; choose from {SCORERS}."
            raise ValueError(msg)
        if anomaly_map not in ANOMALY_MAPS:
            msg = f"Unknown anomaly_map {anomaly_map!r}; choose from {ANOMALY_MAPS}."
            raise ValueError(msg)
        if n_classes < 2:
            msg = f"Need good and at least one defect class, got {n_classes} classes."
            raise ValueError(msg)
        self.backbone = backbone
        self.layer = layer or available_layers(backbone)[-1]
        self.scorer = scorer
        self.anomaly_map = anomaly_map
        self.grad_cam_layer = _check_grad_cam_layer(backbone, self.layer, grad_cam_layer)
        layers = [self.layer] if self.grad_cam_layer == self.layer else [self.grad_cam_layer, self.layer]
        self.feature_extractor = create_feature_extractor(backbone, layers, pre_trained, backbone_weights, frozen=False)
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

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The extractor's maps of images in [0, 1] (normalised here): the embedding layer's is the last."""
        if images.ndim != 4 or images.shape[1] not in {1, 3}:
            msg = f"Expected images of shape (B, 3, H, W) (or (B, 1, H, W) grayscale), got {tuple(images.shape)}."
            raise ValueError(msg)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.feature_extractor((images - self.mean) / self.std)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The embedding layer's feature map ``(B, D, h, w)``."""
        return self.feature_maps(images)[-1]

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

    def grad_cam_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding layer's map and Grad-CAM of ``logit_k - logit_good`` at ``grad_cam_layer``, max over ``k``.

        Per defect class, the weighed layer's channels get the spatial mean of the evidence's
        gradient; the map is the ReLU of their weighted sum (as published), upsampled to the
        image. Runs with autograd even inside ``torch.inference_mode`` (anomalib's test loop);
        the parameters' gradients are not touched.
        """
        with torch.inference_mode(False), torch.enable_grad():
            inputs = images.clone().requires_grad_(True)  # a normal tensor, so that the graph can be built
            maps = self.feature_maps(inputs)
            weighed, deep = maps[0], maps[-1]
            logits = self.head.class_maps(deep).mean(dim=(2, 3))
            evidence = logits[:, 1:] - logits[:, :1]
            class_maps = []
            for index in range(evidence.shape[1]):
                # Samples are independent in eval mode, so the gradient of the sum is each sample's own.
                (gradient,) = torch.autograd.grad(evidence[:, index].sum(), weighed, retain_graph=True)
                weights = gradient.mean(dim=(2, 3), keepdim=True)
                class_maps.append(F.relu((weights * weighed).sum(dim=1, keepdim=True)))
            defect = torch.cat(class_maps, dim=1).amax(dim=1, keepdim=True).detach()
        upsampled = F.interpolate(defect, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return deep.detach(), upsampled

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Score a batch: distance to the good embeddings, and the defect-class activation map."""
        if not is_exporting() and self.bank.is_empty:
            msg = "SyntheticDefectMetric has no good embeddings yet: train it first (anomalib train / engine.fit)."
            raise RuntimeError(msg)
        if self.anomaly_map == "grad_cam":
            if is_exporting():
                msg = (
                    "anomaly_map='grad_cam' needs autograd at inference and cannot be exported. Export with "
                    "anomaly_map='cam' (--model.anomaly_map cam): the scores are the same, only the map differs."
                )
                raise RuntimeError(msg)
            features, anomaly_map = self.grad_cam_maps(images)
        else:
            features = self.features(images)
            anomaly_map = self.anomaly_maps(features, images.shape[-2:])
        embeddings = features.mean(dim=(2, 3))
        score = self.bank.cosine_score(embeddings) if self.scorer == "cosine" else self.bank.lof_score(embeddings)
        return InferenceBatch(pred_score=score, anomaly_map=anomaly_map)
