"""Deep metric learning heads: the training objective that shapes the embedding, and the class maps.

Each head turns a pooled embedding into class logits for the cross-entropy loss, with the
hyper-parameters of its paper as defaults:

* ``softmax``: a plain linear classifier;
* ``l2_softmax``: the embedding L2-normalised and scaled by ``alpha`` = 16 before the linear
  classifier (Ranjan et al., 2017);
* ``arcface``: cosine logits scaled by ``s`` = 64, with an additive angular margin ``m`` = 0.5 on
  the true class (Deng et al., 2019);
* ``adacos``: cosine logits with a scale re-estimated from every batch (Zhang et al., 2019);
  nothing to tune.

Training logits need the labels (margins, scale updates); the class maps do not, so inference
(and export) uses only :meth:`MetricHead.class_maps`, whose spatial mean is the head's logit
without margin and scale.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

LOSSES = ("softmax", "l2_softmax", "arcface", "adacos")
L2_SOFTMAX_ALPHA = 16.0
ARCFACE_SCALE = 64.0
ARCFACE_MARGIN = 0.5


class MetricHead(nn.Module):
    """Class weights over the embedding; subclasses define how they become training logits.

    Args:
        dim: Embedding size (channels of the backbone layer).
        n_classes: Number of classes (``good`` and each defect kind).
    """

    #: Whether the logits compare directions only (cosine heads), so the class maps are normalised too.
    cosine = True

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of each embedding with each class weight, ``(B, n_classes)``."""
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training logits for the cross-entropy loss."""
        raise NotImplementedError

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """Class-activation maps ``(B, n_classes, h, w)`` of a feature map ``(B, dim, h, w)``.

        Linear in the features, so their spatial mean is the logit of the pooled embedding
        (the cosine for cosine heads): where a class's evidence lies, with no gradient needed.
        """
        if self.cosine:
            norm = features.mean(dim=(2, 3)).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
            return F.conv2d(features, F.normalize(self.weight, dim=1)[:, :, None, None]) / norm
        return F.conv2d(features, self.weight[:, :, None, None])


class SoftmaxHead(MetricHead):
    """Linear classifier with bias on the raw embedding."""

    cosine = False

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__(dim, n_classes)
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``W e + b``."""
        del labels
        return F.linear(embeddings, self.weight, self.bias)

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """``W f(x, y) + b``: averages to the logit."""
        return F.conv2d(features, self.weight[:, :, None, None], self.bias)


class L2SoftmaxHead(MetricHead):
    """Linear classifier with bias on the embedding L2-normalised to length ``alpha``."""

    cosine = False

    def __init__(self, dim: int, n_classes: int, alpha: float = L2_SOFTMAX_ALPHA) -> None:
        super().__init__(dim, n_classes)
        self.bias = nn.Parameter(torch.zeros(n_classes))
        self.alpha = alpha

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``W (alpha e / |e|) + b``."""
        del labels
        return F.linear(self.alpha * F.normalize(embeddings, dim=1), self.weight, self.bias)

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """``W (alpha f(x, y) / |e|) + b``: averages to the logit."""
        norm = features.mean(dim=(2, 3)).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
        return F.conv2d(self.alpha * features / norm, self.weight[:, :, None, None], self.bias)


class ArcFaceHead(MetricHead):
    """``s cos(theta_j)``, with ``s cos(theta_y + m)`` for the true class ``y``.

    Where ``theta_y + m`` would pass pi, ``cos`` stops decreasing; there the logit continues as
    ``cos(theta_y) - m sin(m)`` instead, which keeps it monotonic (as the ArcFace authors do).
    """

    def __init__(self, dim: int, n_classes: int, scale: float = ARCFACE_SCALE, margin: float = ARCFACE_MARGIN) -> None:
        super().__init__(dim, n_classes)
        self.scale = scale
        self.margin = margin

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled cosines with the angular margin on the true class."""
        cosine = self.cosines(embeddings)
        sine = (1.0 - cosine.pow(2)).clamp_min(0.0).sqrt()
        with_margin = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        fallback = cosine - math.sin(math.pi - self.margin) * self.margin
        with_margin = torch.where(cosine > math.cos(math.pi - self.margin), with_margin, fallback)
        target = F.one_hot(labels, cosine.shape[1]).bool()
        return self.scale * torch.where(target, with_margin, cosine)


class AdaCosHead(MetricHead):
    """``s cos(theta_j)`` with ``s`` set from each training batch (the paper's dynamic AdaCos).

    ``s`` starts at ``sqrt(2) log(C - 1)``; each batch sets it to
    ``log(B_avg) / cos(min(pi / 4, theta_med))``, where ``B_avg`` is the batch mean of
    ``sum_{j != y} exp(s cos theta_j)`` and ``theta_med`` the median angle to the true class.

    It needs at least three classes. With two, ``B_avg`` is one term, ``exp(s cos theta_other)``,
    so the update is ``s cos theta_other / cos theta_med``: it changes sign as soon as the classes
    separate (``cos theta_other < 0``) and shrinks to 0 within a few batches, where the logits are
    flat and training stops (the fixed scale, ``log(1) = 0``, says the same). The model README has
    what that did to the maps before it was refused.
    """

    def __init__(self, dim: int, n_classes: int) -> None:
        if n_classes < 3:
            msg = (
                f"loss='adacos' needs at least two defect kinds ({n_classes} classes given): with one, its adaptive "
                "scale flips sign and falls to 0 in a few batches, and training stops. Use defect_kinds with two "
                "kinds (the default [line, distortion]) or another loss (arcface)."
            )
            raise ValueError(msg)
        super().__init__(dim, n_classes)
        self.register_buffer("scale", torch.tensor(math.sqrt(2.0) * math.log(n_classes - 1)))
        self.scale: torch.Tensor

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled cosines; in training mode the scale is updated from this batch first."""
        cosine = self.cosines(embeddings)
        if self.training:
            with torch.no_grad():
                target = F.one_hot(labels, cosine.shape[1]).bool()
                others = torch.where(target, torch.zeros_like(cosine), torch.exp(self.scale * cosine))
                b_avg = others.sum(dim=1).mean()
                theta = torch.acos(cosine[target].clamp(-1.0 + 1e-7, 1.0 - 1e-7))
                theta_med = torch.median(theta).clamp_max(math.pi / 4)
                self.scale.copy_(torch.log(b_avg) / torch.cos(theta_med))
        return self.scale * cosine


def make_head(loss: str, dim: int, n_classes: int) -> MetricHead:
    """The head for ``loss`` (one of :data:`LOSSES`), with its published defaults."""
    heads = {"softmax": SoftmaxHead, "l2_softmax": L2SoftmaxHead, "arcface": ArcFaceHead, "adacos": AdaCosHead}
    if loss not in heads:
        msg = f"Unknown loss {loss!r}; choose from {LOSSES}."
        raise ValueError(msg)
    return heads[loss](dim, n_classes)
