"""How the backbone's two maps are prepared before a head reads them: ``pool``, then ``reference``.

``pool`` averages both maps over neighbouring positions (Patchcore's locally aware features): better on
large, faint defects. ``reference="median"`` then subtracts each map's own per-channel median, so that a
shift of a whole image's features (another batch of material, other lighting) scores nothing;
``"contrast"`` also divides by the image's own contrast. Every head, its fit and its exports read the
maps through :class:`FeatureMaps`, so each preparation is computed once per batch and is the same
everywhere (docs/method.md has the measurements).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812

from anomalib_featureridge.components.export import is_exporting

NEIGHBOURHOOD = 3
# Added to the contrast before dividing by it, so that a flat map is not blown up: features are O(1).
CONTRAST_FLOOR = 0.01


def neighbourhood_features(features: torch.Tensor) -> torch.Tensor:
    """Concatenate each position's 3x3 neighbours (zero-padded): ``(B, C, H, W) -> (B, 9 C, H, W)``.

    Channel order is ``c * 9 + 3 * dy + dx``, the layout of ``F.unfold`` and of a 3x3 conv kernel.
    """
    batch, channels, height, width = features.shape
    unfolded = F.unfold(features, kernel_size=NEIGHBOURHOOD, padding=NEIGHBOURHOOD // 2)
    return unfolded.reshape(batch, channels * NEIGHBOURHOOD**2, height, width)


def average_neighbours(features: torch.Tensor, size: int) -> torch.Tensor:
    """Each position's mean over its ``size x size`` neighbours (stride 1), taken over the positions inside the map.

    Padding is not counted: zero padding would pull the border positions towards zero, which the
    per-position heads then read as abnormal borders (docs/method.md has the measurement).
    """
    return F.avg_pool2d(features, size, stride=1, padding=size // 2, count_include_pad=False)


def lower_median(values: torch.Tensor) -> torch.Tensor:
    """The lower middle value along the last dimension, kept: ``torch.median``, or ``topk`` in an export.

    ONNX has no median operator, and ``topk`` picks the same element; eagerly, ``torch.median`` takes half
    the time (a selection, not a partial sort), in the fit and in scoring alike.
    """
    if is_exporting():
        return torch.topk(values, (values.shape[-1] + 1) // 2, dim=-1, largest=False).values[..., -1:]
    return torch.median(values, dim=-1, keepdim=True).values


def refer_to_median(features: torch.Tensor) -> torch.Tensor:
    """Each channel of each map minus its median over the map's positions (the lower middle value, as ``torch.median``).

    A shift of a whole image's features (another batch of material, another lighting) then moves no
    score, while a defect, a minority of the positions, does not move the median.
    """
    return features - lower_median(features.flatten(2)).unsqueeze(-1)


def refer_to_contrast(features: torch.Tensor) -> torch.Tensor:
    """The median-referred map over its image's contrast: the median over channels of each channel's mean deviation.

    One number per image and map, so the ratios between channels (the texture) stay, while a
    whole image whose features vary more or less strongly than usual (another strip of cloth, another
    exposure) is brought to the usual spread. Divided per channel instead, magnetic_tile's large
    defects scored worse. The deviation is a mean, not a median: after a ReLU most positions of a
    channel are often zero, and their median deviation with them (docs/method.md has the measurements).
    """
    referred = refer_to_median(features)
    channel_deviations = referred.abs().flatten(2).mean(dim=-1, keepdim=True)
    contrast = lower_median(channel_deviations.transpose(1, 2))
    return referred / (contrast.unsqueeze(-1) + CONTRAST_FLOOR)


# What each image's feature maps are taken relative to before any head reads them (``reference``), and how.
REFERRERS = {"median": refer_to_median, "contrast": refer_to_contrast}


def upsample_to(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``features`` to ``reference``'s spatial grid."""
    return F.interpolate(features, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class FeatureMaps:
    """One batch's shallow and deep backbone maps, and the prepared versions the heads read, each made once.

    ``pool`` and ``reference`` are the model's; a head that reads the maps at another scale (the two-scale
    head's coarse one) asks for its own ``pool``.
    """

    def __init__(self, shallow: torch.Tensor, deep: torch.Tensor, pool: int, reference: str) -> None:
        self.raw = (shallow, deep)
        self.pool = pool
        self.reference = reference
        self._prepared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepared(self, pool: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Both maps, each on its own grid, averaged over ``pool`` (the model's by default), then referred."""
        pool = self.pool if pool is None else pool
        if pool not in self._prepared:
            shallow, deep = self.raw
            if pool > 1:
                shallow, deep = average_neighbours(shallow, pool), average_neighbours(deep, pool)
            if self.reference in REFERRERS:
                refer = REFERRERS[self.reference]
                shallow, deep = refer(shallow), refer(deep)
            self._prepared[pool] = (shallow, deep)
        return self._prepared[pool]

    def on_shallow_grid(self, pool: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The prepared maps with the deep one bilinearly upsampled to the shallow one's grid."""
        shallow, deep = self.prepared(pool)
        return shallow, upsample_to(deep, shallow)
