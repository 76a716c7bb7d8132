"""FeatureRidge in pure torch: a shallow feature map predicts a deeper one through a Ridge map.

At every position of the shallow map ``x`` (default ``layer2``) the channels of its 3x3
neighbourhood are concatenated (``9 C_x`` inputs); the deep map ``y`` (default ``layer3``) is
bilinearly upsampled to ``x``'s grid. A linear map ``y ~ W x + b`` is fitted in closed form on
normal images. Normal texture is predictable, defects are not, so the pixel score is
``log(||y_hat - y||^2 + eps)``, bilinearly resized to the image.

Predicting from the 3x3 neighbourhood with ``W`` is a 3x3 convolution whose kernel is ``W``
reshaped, so inference is one convolution after the backbone: no loops, no data-dependent
control flow, and nothing to export but a fixed-size weight. With ``rank`` set, ``W`` is the best
Ridge map of that rank, factored into a 3x3 convolution to ``rank`` channels and a 1x1 convolution
back to the deep layer's: with wide_resnet50_2 (4,608 -> 1,024) and rank 256 the head costs 3.3x
fewer multiplications.

The default ``head="paper"`` is the paper's log squared error. The opt-in ``head="gaussian"``
centres the regression per position, scores the residual by its Mahalanobis norm and adds how
typical the shallow features are (a Gaussian with a mean per position and a shared covariance);
it only scores images of the training size. Both are convolutions after the backbone (docs/method.md).
The opt-in ``head="local"`` keeps a Gaussian per position instead (local.py), and ``head="two_scale"``
adds a second, coarse local head on averaged maps and takes the larger score of the two (two_scale.py).

``pool`` (off by default) averages both maps over neighbouring positions before any head, so every
head, its fit and its exports read the same averaged maps: better on large, faint defects.
``reference="median"`` (off by default) then subtracts each map's own per-channel median, likewise
before any head: what is left is how each position differs from the rest of its own image.
``reference="contrast"`` also divides by the image's own contrast, so that a whole image that
varies more or less strongly (another strip of cloth) moves no score either.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from anomalib.data import InferenceBatch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_featureridge.components.export import is_exporting
from anomalib_featureridge.components.feature_extractor import create_feature_extractor
from anomalib_featureridge.components.filters import gaussian_blur_or_none

from .channels import channel_subsets
from .local import LocalStatistics, local_scores, pack_lower, solve_local_head, unpack_lower
from .neighbourhood import NeighbourhoodMoments
from .positions import PositionStatistics, solve_gaussian_head
from .ridge import RidgeMoments, RidgeStatistics, check_alpha, check_rank, refuse_non_finite
from .sums import MapSums
from .two_scale import COARSE_POOL, coarse_grid, coarse_on_fine_grid, fixed_scales, two_scale_max


class Reduction(Protocol):
    """Combines one process's pending statistics with the other processes' ones (a distributed fit)."""

    def moments(self, moments: RidgeMoments | None, distinct: set[float]) -> tuple[RidgeMoments | None, set[float]]:
        """Every process's neighbourhood sums and row fingerprints."""

    def sums(self, sums: MapSums | None, empty: MapSums) -> MapSums:
        """Every process's per-position sums; ``empty`` is a new set with the head's settings."""


NEIGHBOURHOOD = 3
LOG_EPS = 1e-12
HEADS = ("gaussian", "local", "paper", "two_scale")
# The heads made of local heads (local.py): ``two_scale`` is a fine one plus a coarse one (two_scale.py).
LOCAL_HEADS = ("local", "two_scale")
# Added to the contrast before dividing by it, so that a flat map is not blown up: features are O(1).
CONTRAST_FLOOR = 0.01
# Scoring options added after models were first saved, with the value a model saved before each existed scores with.
OPTIONS_BEFORE_THEY_EXISTED = {
    "rank": None,
    "head": "paper",
    "region": 2,
    "pool": 1,
    "reference": "none",
    "channels": None,
}
# The dtype of each batch's products in a fit; the sums are float64 either way.
FIT_PRECISIONS = {"float64": torch.float64, "float32": torch.float32}
# The local head's fitted tensors (buffers ``local_<name>``), as solve_local_head returns them but for the
# two whitening factors, stored packed (lower triangles).
LOCAL_TENSORS = ("mean_x", "mean_y", "x_whitening", "regression", "residual_whitening")
# The per-position statistics a head can have (committed by a fit, left out of exports and of the start-of-fit
# broadcast), each with the prefix of the local head's buffers solved from it (``<prefix>_<tensor>``):
# ``positions`` is the gaussian or local head's, ``coarse_positions`` the two-scale head's coarse head's.
LOCAL_HEAD_PREFIXES = {"positions": "local", "coarse_positions": "coarse"}
POSITION_STATISTICS = tuple(LOCAL_HEAD_PREFIXES)
# Buffers of the gaussian and local heads sized by the feature grid, known only once data is seen.
_GRID_BUFFERS = (
    "position_bias",
    "position_mean_x",
    *(f"{prefix}_{name}" for prefix in LOCAL_HEAD_PREFIXES.values() for name in LOCAL_TENSORS),
)


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


def refer_to_median(features: torch.Tensor) -> torch.Tensor:
    """Each channel of each map minus its median over the map's positions (the lower middle value, as ``torch.median``).

    A shift of a whole image's features (another batch of material, another lighting) then moves no
    score, while a defect, a minority of the positions, does not move the median. The median is
    taken by ``topk`` because ONNX has no median operator.
    """
    return features - lower_median(features.flatten(2)).unsqueeze(-1)


def lower_median(values: torch.Tensor) -> torch.Tensor:
    """The lower middle value along the last dimension, kept: ``torch.median``, or ``topk`` in an export.

    ONNX has no median operator, and ``topk`` picks the same element; eagerly, ``torch.median`` takes half
    the time (a selection, not a partial sort), in the fit and in scoring alike.
    """
    if is_exporting():
        return torch.topk(values, (values.shape[-1] + 1) // 2, dim=-1, largest=False).values[..., -1:]
    return torch.median(values, dim=-1, keepdim=True).values


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


# What each image's feature maps are taken relative to before any head reads them, and how.
REFERRERS = {"median": refer_to_median, "contrast": refer_to_contrast}
REFERENCES = ("none", *REFERRERS)


def upsample_to(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``features`` to ``reference``'s spatial grid."""
    return F.interpolate(features, size=reference.shape[-2:], mode="bilinear", align_corners=False)


def _check_settings(
    head: str, rank: int | None, region: int, pool: int, reference: str, fit_precision: str, channels: object
) -> None:
    """Refuse settings the model does not have (head, rank, region, pool, reference, ...), naming the valid ones."""
    if head not in HEADS:
        msg = f"head must be one of {HEADS}, got {head!r}."
        raise ValueError(msg)
    if reference not in REFERENCES:
        msg = f"reference must be one of {REFERENCES}, got {reference!r}."
        raise ValueError(msg)
    if fit_precision not in FIT_PRECISIONS:
        msg = f"fit_precision must be one of {tuple(FIT_PRECISIONS)}, got {fit_precision!r}."
        raise ValueError(msg)
    if head != "paper" and rank is not None:
        msg = f"rank is only available with head='paper' (the {head} head whitens the full residual)."
        raise ValueError(msg)
    if isinstance(region, bool) or not isinstance(region, int) or region < 1:
        msg = f"region must be a whole number of feature positions >= 1, got {region!r}."
        raise ValueError(msg)
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1 or pool % 2 == 0:
        msg = f"pool must be an odd whole number of feature positions >= 1 (1 switches it off), got {pool!r}."
        raise ValueError(msg)
    if channels is not None and head not in LOCAL_HEADS:
        msg = (
            f"channels is only available with the local heads {LOCAL_HEADS}, whose size grows with the square of "
            f"the channels; the {head} head reads every channel."
        )
        raise ValueError(msg)


class FeatureRidgeModel(nn.Module):
    """FeatureRidge torch module; eval-mode ``forward`` returns ``InferenceBatch(pred_score, anomaly_map)``.

    Args:
        backbone: timm CNN name.
        layers: ``[shallow, deep]`` layer names; the shallow one predicts the deep one.
        pre_trained: Use timm's ImageNet weights (from the local cache, else downloaded).
        backbone_weights: Local timm state dict; overrides ``pre_trained`` and needs no network.
        alpha: Ridge L2 penalty (> 0).
        sigma: Gaussian smoothing of the image-sized map in pixels; 0 switches it off.
        rank: Rank of the Ridge map (``None``: full). Below the deep layer's channel count it
            makes scoring cheaper, at the price of predicting only the deep features' leading
            directions; must be smaller than that count.
        keep_statistics: Keep the sufficient statistics after fitting (needed by :meth:`update`).
        head: ``"paper"`` (default): the paper's ``log ||r||^2``. ``"gaussian"`` (opt-in): per-position
            centring, Mahalanobis residual plus shallow-feature typicality, score ``sqrt(d_res^2 + d_x^2)``;
            it keeps a mean per position, so inputs must keep one size (the pre-processor's resize).
            ``"local"`` (opt-in): a Gaussian of the shallow features per position and a Ridge map from
            them to the deep ones per ``region x region`` block, score the Mahalanobis distance
            (``local.py``); one input size, like ``"gaussian"``. ``"two_scale"`` (opt-in): that head, and a
            second one on every second position of maps averaged over 3 x 3 positions, its scores eroded; the
            score is the larger of the fine one and the coarse one times a fixed weight (``two_scale.py``). One
            input size, like ``"local"``, and updates as exact.
        region: Side of the blocks of feature positions that share one map in the local heads.
        pool: Side (odd) of the mean over neighbouring positions taken of each feature map on its own grid
            before any head reads it (Patchcore's locally aware features); ``1`` (default) takes none. It
            widens what one position sees: better on large, faint defects, worse on small ones.
        reference: ``"none"`` (default), or ``"median"``: after ``pool``, each map minus its own per-channel
            median over the image's positions, so that a shift of a whole image's features scores nothing;
            or ``"contrast"``: that, divided by the image's contrast (``refer_to_contrast``).
        fit_precision: ``"float64"`` (default): the fit's products in float64, exact to float64 rounding.
            ``"float32"``: each batch's products in float32, summed in float64: a faster fit (most on
            GPUs with slow float64) whose map differs from the float64 one by float32 rounding.
        channels: With the local heads, ``[shallow, deep]``: how many of each map's channels to keep, a
            seeded random subset (:func:`channel_subsets`); ``None`` (default) keeps all. The heads' size
            falls with the square of the counts.
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
    ) -> None:
        super().__init__()
        layers = list(layers)
        if len(layers) != 2:
            msg = f"FeatureRidge needs exactly two layers, [shallow, deep]; got {layers}."
            raise ValueError(msg)
        if layers[0] == layers[1]:
            msg = f"FeatureRidge needs two different layers, [shallow, deep]; got {layers[0]!r} twice."
            raise ValueError(msg)
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma < 0:
            msg = f"sigma must be >= 0 and finite (0 switches smoothing off), got {sigma!r}."
            raise ValueError(msg)
        _check_settings(head, rank, region, pool, reference, fit_precision, channels)
        self.head = head
        self.region = region
        self.pool = pool
        self.reference = reference
        self.backbone = backbone
        self.layers = layers
        self.alpha = check_alpha(alpha)
        self.rank = rank
        self.keep_statistics = keep_statistics
        self.fit_precision = fit_precision
        self.feature_extractor = create_feature_extractor(backbone, layers, pre_trained, backbone_weights)
        in_channels, out_channels = self.feature_extractor.feature_info.channels()
        reductions = self.feature_extractor.feature_info.reduction()
        if reductions[0] > reductions[1]:
            msg = f"The first layer must be the shallower one (finer grid); got strides {reductions} for {layers}."
            raise ValueError(msg)
        if rank is not None:
            check_rank(rank, out_channels, targets=f"channels of {layers[1]!r}", hint=", or None for the full map")
        in_channels, out_channels = self._register_kept_channels(channels, (in_channels, out_channels))

        self.statistics = RidgeStatistics()
        # Rows of the fit in progress: committed to ``statistics`` only by a successful :meth:`fit`.
        self.pending = self._new_pending()
        # The per-position heads' pending sums, likewise, by the attribute they are committed to
        # (see :meth:`_pending_positions`).
        self.__dict__["_positions_pending"] = {}
        head_channels = out_channels if rank is None else rank
        # The 3x3 map and bias of the heads solved from the neighbourhood sums; the local heads have none.
        solves_map = self.uses_neighbourhood_sums
        map_shape = (head_channels, in_channels, NEIGHBOURHOOD, NEIGHBOURHOOD)
        self.register_buffer("weight", torch.zeros(map_shape) if solves_map else None)
        # The low-rank map's 1x1 back-projection to the deep channels (orthonormal columns); None when full.
        self.register_buffer("projection", None if rank is None else torch.zeros(out_channels, rank, 1, 1))
        self.register_buffer("bias", torch.zeros(out_channels) if solves_map else None)
        self.register_buffer("fitted", torch.tensor(False))
        self.weight: torch.Tensor | None
        self.projection: torch.Tensor | None
        self.bias: torch.Tensor | None
        self.fitted: torch.Tensor
        self._register_per_position_heads(in_channels, out_channels)
        self.blur = gaussian_blur_or_none(sigma)

    def _register_kept_channels(self, channels: Sequence[int] | None, available: tuple[int, int]) -> tuple[int, int]:
        """The indices of the channels kept of each map (buffers, so a checkpoint keeps its subset); their counts."""
        kept = None if channels is None else channel_subsets(channels, available, self.layers)
        self.channels = None if kept is None else [len(indices) for indices in kept]
        self.register_buffer("shallow_channels", None if kept is None else kept[0])
        self.register_buffer("deep_channels", None if kept is None else kept[1])
        self.shallow_channels: torch.Tensor | None
        self.deep_channels: torch.Tensor | None
        return available if self.channels is None else tuple(self.channels)

    @property
    def uses_neighbourhood_sums(self) -> bool:
        """Whether the head is solved from the 3x3-neighbourhood Ridge sums (all but the local heads)."""
        return self.head not in LOCAL_HEADS

    def _new_pending(self) -> NeighbourhoodMoments | None:
        """Empty neighbourhood sums for a fit; ``None`` for a head that does not read them."""
        return NeighbourhoodMoments(FIT_PRECISIONS[self.fit_precision]) if self.uses_neighbourhood_sums else None

    def _new_position_statistics(self) -> PositionStatistics | LocalStatistics | None:
        """Empty per-position statistics of the head; ``None`` for the paper head, which has none."""
        if self.head in LOCAL_HEADS:
            return LocalStatistics(self.region)
        return PositionStatistics() if self.head == "gaussian" else None

    def _register_per_position_heads(self, in_channels: int, out_channels: int) -> None:
        """The per-position heads' statistics and fitted tensors; ``None`` for the heads without them."""
        gaussian, two_scale = self.head == "gaussian", self.head == "two_scale"
        self.positions = self._new_position_statistics()
        # The two-scale head's coarse local head: its sums, its tensors, and the divisors of both scales' scores.
        self.coarse_positions = self._new_position_statistics() if two_scale else None
        for name in LOCAL_TENSORS:
            self.register_buffer(f"local_{name}", torch.empty(0) if self.head in LOCAL_HEADS else None)
            self.register_buffer(f"coarse_{name}", torch.empty(0) if two_scale else None)
        self.register_buffer("scales", torch.ones(2) if two_scale else None)
        self.scales: torch.Tensor | None
        self.register_buffer("position_bias", torch.empty(0) if gaussian else None)
        self.register_buffer("position_mean_x", torch.empty(0) if gaussian else None)
        self.register_buffer("residual_whitening", torch.zeros(out_channels, out_channels, 1, 1) if gaussian else None)
        self.register_buffer("x_whitening", torch.zeros(in_channels, in_channels, 1, 1) if gaussian else None)
        self.position_bias: torch.Tensor | None
        self.position_mean_x: torch.Tensor | None
        self.residual_whitening: torch.Tensor | None
        self.x_whitening: torch.Tensor | None

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        # The gaussian head's per-position maps are sized by the training grid: take the checkpoint's shapes.
        for name in _GRID_BUFFERS:
            saved = state_dict.get(prefix + name)
            if saved is not None and getattr(self, name) is not None:
                setattr(self, name, torch.empty_like(saved, device=self.fitted.device))
        if self.weight is None:
            # Local-head models saved before their unused 3x3 map was dropped carry it, all zeros: it scored nothing.
            for name in ("weight", "bias"):
                state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True) -> FeatureRidgeModel:
        """Switch mode but keep the frozen backbone in eval mode (BatchNorm must not adapt)."""
        super().train(mode)
        self.feature_extractor.eval()
        return self

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the shallow map and the deep map upsampled to the shallow grid."""
        shallow, deep = self.backbone_maps(images)
        return shallow, upsample_to(deep, shallow)

    def backbone_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the shallow and the deep map, each on its own grid (averaged over ``pool``, then referred)."""
        return self._prepared(self._raw_maps(images), self.pool)

    def _raw_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's shallow and deep map, as it gives them (only the kept ``channels``, when set)."""
        if images.ndim != 4 or images.shape[1] not in {1, 3}:
            msg = f"Expected images of shape (B, 3, H, W) (or (B, 1, H, W) grayscale), got {tuple(images.shape)}."
            raise ValueError(msg)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        with torch.no_grad():
            shallow, deep = self.feature_extractor(images)
        if self.channels is not None:
            shallow, deep = shallow.index_select(1, self.shallow_channels), deep.index_select(1, self.deep_channels)
        return shallow, deep

    def _prepared(self, maps: tuple[torch.Tensor, torch.Tensor], pool: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both maps averaged over ``pool`` positions, then referred to their image (``reference``)."""
        shallow, deep = maps
        if pool > 1:
            shallow, deep = average_neighbours(shallow, pool), average_neighbours(deep, pool)
        if self.reference in REFERRERS:
            refer = REFERRERS[self.reference]
            shallow, deep = refer(shallow), refer(deep)
        return shallow, deep

    def _coarse_maps(self, maps: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-scale head's coarse maps: averaged over ``COARSE_POOL`` and referred, on the coarse grid."""
        shallow, deep = self._prepared(maps, COARSE_POOL)
        shallow = coarse_grid(shallow)
        return shallow, upsample_to(deep, shallow)

    @torch.no_grad()
    def accumulate(self, images: torch.Tensor) -> None:
        """Add a batch of normal images to the pending statistics; :meth:`fit` commits them and re-solves.

        A fitted model that cannot take new images refuses the batch (:meth:`require_statistics`), whichever
        way it arrives (``update``, a training step, a hand-made fit).
        """
        if bool(self.fitted):
            self.require_statistics()
        raw = self._raw_maps(images)
        shallow, deep = self._prepared(raw, self.pool)
        refuse_non_finite(shallow, deep)
        if self.pending is not None:
            self.pending.add(shallow, deep)
        if self.positions is not None:
            self._pending_positions("positions").update(shallow, upsample_to(deep, shallow))
        if self.coarse_positions is not None:
            self._pending_positions("coarse_positions").update(*self._coarse_maps(raw))

    def _pending_positions(self, name: str) -> PositionStatistics | LocalStatistics:
        """The per-position sums of the fit in progress that ``fit`` adds to ``self.<name>`` (not in the state dict)."""
        pending = self._positions_pending
        if name not in pending:
            # Kept in __dict__: a registered module would put an unfinished fit into checkpoints.
            pending[name] = self._new_position_statistics().to(self.fitted.device)
        return pending[name]

    @property
    def has_pending(self) -> bool:
        """True when images were accumulated since the last fit (the fit in progress has rows to commit)."""
        pending = [self.pending, *self._positions_pending.values()]
        return any(sums is not None and not sums.is_empty for sums in pending)

    def discard_pending(self) -> bool:
        """Forget the rows accumulated since the last fit (an unfinished fit); True if there were any."""
        discarded = self.has_pending
        self.pending = self._new_pending()
        self.__dict__["_positions_pending"] = {}
        return discarded

    def fit_statistics(self) -> RidgeStatistics | LocalStatistics:
        """The statistics the head is solved from: the neighbourhood sums, or the local head's own sums."""
        return self.statistics if self.uses_neighbourhood_sums else self.positions

    def describe_fit(self) -> str:
        """How much the fit's statistics hold, for logs: feature vectors, or images for the local head."""
        unit = "feature vectors" if self.uses_neighbourhood_sums else "images"
        return f"{int(self.fit_statistics().count)} {unit}"

    @torch.no_grad()
    def fit(self, reduce: Reduction | None = None) -> None:
        """Add the pending rows to the statistics and solve the map, all or nothing.

        ``reduce`` combines the pending rows with other processes' (a distributed fit). The
        statistics, the map and ``fitted`` change only when the solve succeeds; the pending rows are
        used up either way, so a failed fit is never counted twice.
        """
        pending, self.pending = self.pending, self._new_pending()
        pending_positions, self.__dict__["_positions_pending"] = self._positions_pending, {}
        moments = None if pending is None or pending.is_empty else pending.moments()
        distinct = set() if pending is None else pending.distinct
        if reduce is not None and self.uses_neighbourhood_sums:
            moments, distinct = reduce.moments(moments, distinct)
        combined = {}
        for name in POSITION_STATISTICS:
            if getattr(self, name) is not None:
                own = pending_positions.get(name)
                if reduce is not None:
                    own = reduce.sums(own, self._new_position_statistics())
                combined[name] = getattr(self, name).combined_with(own)
        statistics = self.statistics if moments is None else self.statistics.combined_with(moments)
        if self.statistics.is_empty and moments is not None:
            self._warn_if_degenerate(float(moments.count), len(distinct))
        if combined:
            if self.head in LOCAL_HEADS:
                self._fit_local_heads(combined)
            else:
                self._fit_gaussian(statistics, combined["positions"])
            self.statistics = statistics
            for name, sums in combined.items():
                setattr(self, name, sums)
            self._finish_fit()
            return
        if self.projection is None:
            weight, bias = statistics.solve(self.alpha)
        else:
            weight, basis, bias = statistics.solve_reduced_rank(self.alpha, self.projection.shape[1])
            self.projection.copy_(basis[:, :, None, None])
        self.statistics = statistics
        head_channels, in_channels = self.weight.shape[:2]
        # W is (9 C_in, C_head) with rows ordered c * 9 + k: transposed and reshaped, it is the conv kernel.
        self.weight.copy_(weight.T.reshape(head_channels, in_channels, NEIGHBOURHOOD, NEIGHBOURHOOD))
        self.bias.copy_(bias)
        self._finish_fit()

    def _fit_local_heads(self, combined: dict[str, LocalStatistics]) -> None:
        """Solve the local head (and the two-scale head's coarse one); nothing changes if a solve fails.

        A two-scale fit also sets the fixed divisors: a model fitted before they were fixed, and updated now,
        scores as a new fit on all its images would.
        """
        dtype = self.local_mean_x.dtype
        heads = {
            LOCAL_HEAD_PREFIXES[name]: {key: value.to(dtype) for key, value in solve_local_head(sums).items()}
            for name, sums in combined.items()
        }
        for prefix, tensors in heads.items():
            for key, value in tensors.items():
                packed = pack_lower(value) if key in ("x_whitening", "residual_whitening") else value
                setattr(self, f"{prefix}_{key}", packed)
        if self.scales is not None:
            self.scales = fixed_scales().to(device=self.fitted.device, dtype=dtype)

    def _finish_fit(self) -> None:
        """Mark the model fitted and drop the statistics unless they are kept for updates."""
        self.fitted.fill_(True)
        if not self.keep_statistics:
            self.statistics.clear()
            for name in POSITION_STATISTICS:
                if getattr(self, name) is not None:
                    getattr(self, name).clear()

    def _warn_if_degenerate(self, rows: float, distinct: int) -> None:
        """Warn when the training rows cannot determine the map: fewer distinct ones than inputs."""
        inputs = self.weight.shape[1] * NEIGHBOURHOOD**2
        if distinct >= inputs:
            return
        repeats = " Most of them repeat (identical or blank images?)." if distinct <= rows / 2 else ""
        msg = (
            f"FeatureRidge was fitted on {int(rows)} feature vectors of which only {distinct} are distinct, "
            f"fewer than the {inputs} inputs per vector: the Ridge map is under-determined and alpha, not the "
            f"images, fixes much of it, so scores can be unreliable.{repeats} Train on more, and more varied, "
            "normal images."
        )
        warnings.warn(msg, UserWarning, stacklevel=4)

    def _fit_gaussian(self, statistics: RidgeStatistics, positions: PositionStatistics) -> None:
        """Solve the gaussian head from the combined sums; nothing changes if the solve fails."""
        solved = solve_gaussian_head(
            statistics.xtx, statistics.xty, float(statistics.count), positions, self.alpha, NEIGHBOURHOOD
        )
        out_channels, in_channels = self.weight.shape[:2]
        dtype = self.weight.dtype
        self.weight.copy_(solved["weight"].T.reshape(out_channels, in_channels, NEIGHBOURHOOD, NEIGHBOURHOOD))
        self.position_bias = solved["bias"].to(dtype)
        self.position_mean_x = solved["mean_x"].to(dtype)
        self.residual_whitening.copy_(solved["residual_whitening"][:, :, None, None])
        self.x_whitening.copy_(solved["x_whitening"][:, :, None, None])

    def require_statistics(self) -> None:
        """Refuse to add images to a fitted model whose statistics were dropped: the first fit would be lost."""
        if self.fit_statistics().is_empty and bool(self.fitted):
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
        single images ``(3, H, W)``, which may differ in size.
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
        if self.head == "local":
            return self._local_scores(self._raw_maps(images))
        if self.head == "two_scale":
            return self._two_scale_scores(self._raw_maps(images))
        shallow, deep = self.extract(images)
        if self.position_bias is not None:
            return self._gaussian_scores(shallow, deep)
        if self.projection is None:
            predicted = F.conv2d(shallow, self.weight, self.bias, padding=NEIGHBOURHOOD // 2)
        else:
            reduced = F.conv2d(shallow, self.weight, padding=NEIGHBOURHOOD // 2)
            predicted = F.conv2d(reduced, self.projection, self.bias)
        return torch.log((predicted - deep).pow(2).sum(dim=1, keepdim=True) + LOG_EPS)

    def _local_scores(self, maps: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The local head's scores of the backbone's ``maps``; the two-scale head's fine scores too."""
        shallow, deep = self._prepared(maps, self.pool)
        self._check_grid(shallow, self.local_mean_x)
        return local_scores(shallow, upsample_to(deep, shallow), self._local_head("local"), self.region)

    def _two_scale_scores(self, maps: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The larger of the fine head's score and the coarse head's, eroded and on the fine grid, over their scales."""
        fine = self._local_scores(maps)
        coarse = local_scores(*self._coarse_maps(maps), self._local_head("coarse"), self.region)
        return two_scale_max(fine, coarse_on_fine_grid(coarse, fine), self.scales)

    def __getstate__(self) -> dict:
        """Pickle (``torch.save``, the torch export) without the unpacked factors or a fit in progress.

        The unpacked factors would double the local heads' size; a fit in progress is not the model's.
        """
        unpickled = ("_local_unpacked", "_positions_pending")
        return {name: value for name, value in self.__dict__.items() if name not in unpickled}

    def __setstate__(self, state: dict) -> None:
        """Unpickle (a torch export); one pickled before an option existed scores without it."""
        fresh = {"_positions_pending": {}}
        super().__setstate__({**OPTIONS_BEFORE_THEY_EXISTED, **state, **fresh})

    def _local_head(self, prefix: str) -> dict[str, torch.Tensor]:
        """A local head's tensors (buffers ``<prefix>_<name>``), its whitening factors unpacked.

        The unpacked factors are kept until the packed ones change.
        """
        packed = (getattr(self, f"{prefix}_x_whitening"), getattr(self, f"{prefix}_residual_whitening"))
        key = tuple((id(tensor), tensor._version, tensor.device, tensor.dtype) for tensor in packed)
        unpacked = self.__dict__.setdefault("_local_unpacked", {})
        if prefix not in unpacked or unpacked[prefix][0] != key:
            sizes = (getattr(self, f"{prefix}_mean_x").shape[0], getattr(self, f"{prefix}_mean_y").shape[0])
            factors = [unpack_lower(tensor, size) for tensor, size in zip(packed, sizes, strict=True)]
            unpacked[prefix] = (key, dict(zip(("x_whitening", "residual_whitening"), factors, strict=True)))
        return {**{name: getattr(self, f"{prefix}_{name}") for name in LOCAL_TENSORS}, **unpacked[prefix][1]}

    def _check_grid(self, shallow: torch.Tensor, fitted_map: torch.Tensor) -> None:
        """Per-position heads score only maps of the grid they were fitted on."""
        if not is_exporting() and shallow.shape[-2:] != fitted_map.shape[-2:]:
            msg = (
                f"The {self.head} head was fitted on a {tuple(fitted_map.shape[-2:])} feature grid but got "
                f"{tuple(shallow.shape[-2:])}: score images of the training size (the pre-processor's resize)."
            )
            raise ValueError(msg)

    def _gaussian_scores(self, shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        """``sqrt(||A_r (y - W x - b_p)||^2 + ||A_x (x - m_p)||^2)``: residual and shallow features, both whitened."""
        self._check_grid(shallow, self.position_bias)
        predicted = F.conv2d(shallow, self.weight, padding=NEIGHBOURHOOD // 2) + self.position_bias
        residual = F.conv2d(deep - predicted, self.residual_whitening)
        typicality = F.conv2d(shallow - self.position_mean_x, self.x_whitening)
        squared = residual.pow(2).sum(dim=1, keepdim=True) + typicality.pow(2).sum(dim=1, keepdim=True)
        return torch.sqrt(squared)

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Score a batch: pixel map resized to the input, image score = its maximum."""
        if not is_exporting() and not bool(self.fitted):
            msg = "FeatureRidge has not been fitted: train it on normal images first (anomalib train / engine.fit)."
            raise RuntimeError(msg)
        patch_scores = self.patch_scores(images)
        if self.blur is None:
            anomaly_map = F.interpolate(patch_scores, size=images.shape[-2:], mode="bilinear", align_corners=False)
        else:
            anomaly_map = self.blur(patch_scores, images.shape[-2:])
        pred_score = torch.amax(anomaly_map, dim=(-3, -2, -1))
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
