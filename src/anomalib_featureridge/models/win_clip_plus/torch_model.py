"""WinCLIP / WinCLIP+ scoring as a plain torch module (Jeong et al., CVPR 2023).

After :meth:`WinClipPlusModel.set_class_name` (text anchors) and, for few-shot,
:meth:`WinClipPlusModel.set_reference_images`, everything inference needs is in buffers: the
module holds only the CLIP image tower, so scoring and export never touch the text encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin
from torch import nn

from .clip_loader import clip_normalisation, create_clip
from .encoder import WindowEncoder
from .prompting import GENERIC_OBJECT, text_anchors
from .windows import coverage_matrix, harmonic_aggregation, window_patch_index

logger = logging.getLogger(__name__)

BACKBONE = "ViT-B-16-plus-240"
PRETRAINED = "laion400m_e31"
TEMPERATURE = 0.07


def anomaly_probability(embeddings: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """Paper Eq. (1): softmax over the cosine similarities to ``[normal, anomalous]``; the anomalous share."""
    similarity = nn.functional.normalize(embeddings, dim=-1) @ anchors.T
    return (similarity / temperature).softmax(dim=-1)[..., 1]


def association_distance(embeddings: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Paper Eq. (4): ``min_r (1 - cos(e, r)) / 2`` over the reference embeddings ``(R, D)`` (unit norm)."""
    similarity = nn.functional.normalize(embeddings, dim=-1) @ references.T
    return (1.0 - similarity.amax(dim=-1)) / 2.0


class WinClipPlusModel(DynamicBufferMixin, nn.Module):
    """Zero-shot (WinCLIP) and few-shot (WinCLIP+) anomaly scores from CLIP windows.

    Args:
        backbone: open_clip ViT name, or a path to an open_clip model config JSON.
        pretrained: open_clip pretrained tag, a local checkpoint file, or ``None`` (random weights).
        scales: Window sizes in patches (paper: 2 and 3); the whole image is always a further scale.
        window_stride: Step between windows in patches (1 = paper). 2 runs about a quarter of the
            windows, for speed.
        temperature: Softmax temperature of Eq. (1) (CLIP's 0.07, as anomalib's WinClip).
        defer_weights: Fetch the ``pretrained`` weights on first use (anchors, references or scores), not now:
            a state dict of a prepared model loaded first brings them, so loading a checkpoint never downloads.
    """

    def __init__(
        self,
        backbone: str = BACKBONE,
        pretrained: str | None = PRETRAINED,
        scales: Sequence[int] = (2, 3),
        window_stride: int = 1,
        temperature: float = TEMPERATURE,
        defer_weights: bool = False,
    ) -> None:
        super().__init__()
        if not scales:
            msg = "WinClipPlus needs at least one window scale, e.g. scales=(2, 3)."
            raise ValueError(msg)
        clip, tokenizer, self.model_name = create_clip(backbone, pretrained, defer=defer_weights)
        self._pending_weights: tuple[str, str] | None = (backbone, pretrained) if defer_weights and pretrained else None
        # The tag or file the image tower's weights were read from; None: random, not fetched yet, or a state dict's.
        self.weights_source: str | None = pretrained if pretrained and not defer_weights else None
        self.scales = tuple(int(scale) for scale in scales)
        self.window_stride = int(window_stride)
        self.temperature = float(temperature)
        self.image_size: tuple[int, int] = tuple(clip.visual.image_size)
        self.grid_size: tuple[int, int] = tuple(clip.visual.grid_size)
        self.normalisation = clip_normalisation(clip)
        n_patches = self.grid_size[0] * self.grid_size[1]
        indices = [window_patch_index(self.grid_size, scale, self.window_stride) for scale in self.scales]
        self.encoder = WindowEncoder(clip.visual, indices)
        for scale, index in zip(self.scales, indices, strict=True):
            self.register_buffer(f"coverage_{scale}", coverage_matrix(index, n_patches), persistent=False)
        embed_dim = clip.visual.output_dim
        self.register_buffer("text_embeddings", torch.zeros(0, embed_dim))
        self.register_buffer("reference_patches", torch.zeros(0, clip.visual.ln_post.normalized_shape[0]))
        for scale in self.scales:
            self.register_buffer(f"reference_windows_{scale}", torch.zeros(0, embed_dim))
        self.class_name: str | None = None  # the word the anchors were made for
        # Text tower kept off the module (not saved, not exported) until the anchors are computed.
        self._text_side: tuple[nn.Module, object] | None = (clip, tokenizer)

    @property
    def prepared(self) -> bool:
        """Whether the text anchors exist: the one test of a model ready to score (references are optional)."""
        return self.text_embeddings.shape[0] > 0

    def materialise_weights(self) -> None:
        """Fetch deferred pretrained weights now (image and text tower); nothing to do if none are pending."""
        if self._pending_weights is None:
            return
        clip, tokenizer, _ = create_clip(*self._pending_weights)
        self.encoder.visual.load_state_dict(clip.visual.state_dict())
        if self._text_side is not None:
            self._text_side = (clip, tokenizer)
        self.weights_source = self._pending_weights[1]
        self._pending_weights = None

    @property
    def k_shot(self) -> int:
        """Number of reference images the few-shot buffers were built from (0: zero-shot); the buffers are the truth."""
        return self._images_in(self.reference_patches)

    def _images_in(self, reference_patches: torch.Tensor) -> int:
        """How many reference images ``reference_patches`` (one row per patch of each image) hold."""
        return reference_patches.shape[0] // (self.grid_size[0] * self.grid_size[1])

    def coverage(self, scale: int) -> torch.Tensor:
        """Window-to-patch coverage matrix of ``scale``."""
        return getattr(self, f"coverage_{scale}")

    def reference_windows(self, scale: int) -> torch.Tensor:
        """Unit-norm reference window embeddings of ``scale``, ``(k_shot * n_windows, D)``."""
        return getattr(self, f"reference_windows_{scale}")

    @torch.no_grad()
    def set_class_name(self, class_name: str | None) -> None:
        """Compute the prompt-ensemble anchors for ``class_name`` (Sec. 4.1) and release the text tower."""
        if not class_name:
            logger.warning("No class name given: the prompts use the generic word %r.", GENERIC_OBJECT)
            class_name = GENERIC_OBJECT
        if self._text_side is None:
            msg = "The text tower was released after the first class name; build a new model for another class."
            raise RuntimeError(msg)
        self.materialise_weights()
        clip, tokenizer = self._text_side
        self.text_embeddings = text_anchors(clip, tokenizer, class_name).to(self.text_embeddings.device)
        self.class_name = class_name
        self._text_side = None

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        """A loaded prepared model needs neither the text tower nor deferred weights (its own came with it)."""
        super()._load_from_state_dict(state_dict, prefix, *args)
        if self.prepared:
            self._text_side = None
            self._pending_weights = None

    def check_references(self, state_dict: dict[str, torch.Tensor], prefix: str = "") -> None:
        """Raise if ``state_dict``'s reference windows do not fit this model's scales and stride."""
        patches = state_dict.get(f"{prefix}reference_patches")
        k_shot = 0 if patches is None else self._images_in(patches)
        if not k_shot:
            return
        for scale in self.scales:
            windows = state_dict.get(f"{prefix}reference_windows_{scale}")
            expected = k_shot * self.coverage(scale).shape[0]
            if windows is None or windows.shape[0] != expected:
                found = "none" if windows is None else windows.shape[0]
                msg = (
                    f"The saved few-shot references do not fit scales={self.scales}, "
                    f"window_stride={self.window_stride}: scale {scale} needs {expected} reference windows, "
                    f"the checkpoint has {found}. Use the scales and window_stride the checkpoint was made with."
                )
                raise ValueError(msg)

    @torch.no_grad()
    def set_reference_images(self, images: torch.Tensor) -> None:
        """Store unit-norm patch and window embeddings of ``k`` normal pre-processed images (Sec. 4.3)."""
        self.materialise_weights()
        _, patch_tokens, window_embeddings = self.encoder(images)
        self.reference_patches = nn.functional.normalize(patch_tokens.flatten(0, 1), dim=-1)
        for scale, windows in zip(self.scales, window_embeddings, strict=True):
            setattr(self, f"reference_windows_{scale}", nn.functional.normalize(windows.flatten(0, 1), dim=-1))

    def zero_shot_maps(
        self, image_embeddings: torch.Tensor, window_embeddings: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image score (Eq. 1 on the class token) and the zero-shot patch map ``(B, P)`` (Sec. 4.2).

        The map is the harmonic mean, per patch, of the harmonically aggregated window scores of
        every scale and of the image score (the whole image as the largest window).
        """
        image_scores = anomaly_probability(image_embeddings, self.text_embeddings, self.temperature)
        per_scale = [image_scores.unsqueeze(1).expand(-1, self.grid_size[0] * self.grid_size[1])]
        for scale, windows in zip(self.scales, window_embeddings, strict=True):
            window_scores = anomaly_probability(windows, self.text_embeddings, self.temperature)
            per_scale.append(harmonic_aggregation(window_scores, self.coverage(scale)))
        stacked = torch.stack(per_scale)
        return image_scores, stacked.shape[0] / (1.0 / stacked).sum(dim=0)

    def few_shot_map(self, patch_tokens: torch.Tensor, window_embeddings: list[torch.Tensor]) -> torch.Tensor:
        """WinCLIP+ visual association map ``(B, P)`` (Sec. 4.3, Eq. 4).

        Mean over scales of: the patch tokens' distance to the nearest reference patch token, and
        per window scale the harmonically aggregated distance of each window to the nearest
        reference window of that scale.
        """
        per_scale = [association_distance(patch_tokens, self.reference_patches)]
        for scale, windows in zip(self.scales, window_embeddings, strict=True):
            distances = association_distance(windows, self.reference_windows(scale))
            per_scale.append(harmonic_aggregation(distances, self.coverage(scale)))
        return torch.stack(per_scale).mean(dim=0)

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Score pre-processed images ``(B, 3, H, W)``: image scores ``(B,)`` and maps ``(B, 1, H, W)``.

        Few-shot (Sec. 4.3): the map is the mean of the zero-shot and few-shot maps, the image
        score the mean of the zero-shot image score and the few-shot map's maximum.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            msg = f"WinClipPlus expects images of shape (B, 3, H, W), got {tuple(images.shape)}."
            raise ValueError(msg)
        if not self.prepared:
            msg = "WinClipPlus has no text anchors yet: call set_class_name() (WinClipPlus does it before scoring)."
            raise RuntimeError(msg)
        image_embeddings, patch_tokens, window_embeddings = self.encoder(images)
        image_scores, patch_map = self.zero_shot_maps(image_embeddings, window_embeddings)
        if self.k_shot:
            few_shot = self.few_shot_map(patch_tokens, window_embeddings)
            patch_map = (patch_map + few_shot) / 2.0
            image_scores = (image_scores + few_shot.amax(dim=1)) / 2.0
        anomaly_map = nn.functional.interpolate(
            patch_map.reshape(-1, 1, *self.grid_size), size=images.shape[-2:], mode="bilinear", align_corners=False
        )
        return InferenceBatch(pred_score=image_scores, anomaly_map=anomaly_map)
