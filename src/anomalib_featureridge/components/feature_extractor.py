"""Frozen timm feature extractors with strict layer checks and offline-friendly weight loading.

anomalib's own extractor drops unknown layer names with a warning and lets timm retry a
download for most of a minute when there is no network. Both hide a wrong setup, so this module
checks the layer names against the backbone, loads local weights strictly for the layers used,
and fails within seconds, with the way out, when pretrained weights cannot be fetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives
from torch import nn

from .weights import BackboneWeightsError, WeightsSource, freeze, read_state_dict, require_weights

PRETRAINED_WAY_OUT = (
    "Pass a local timm state dict with backbone_weights=PATH (CLI: --model.backbone_weights PATH), or "
    "pre_trained=False for random weights. Testing, predicting or exporting a trained checkpoint (--ckpt_path) "
    "needs neither: its weights come from the checkpoint."
)


def available_layers(backbone: str) -> list[str]:
    """Names of the feature levels that ``backbone`` exposes (built on the meta device: no memory, no download)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(backbone, pretrained=False, features_only=True)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            msg = f"Unknown timm backbone {backbone!r}. See timm.list_models() for the names."
            raise ValueError(msg) from error
        raise
    return list(model.feature_info.module_name())


def layer_indices(backbone: str, layers: Sequence[str]) -> list[int]:
    """Map layer names to timm ``out_indices``, refusing names the backbone does not have."""
    names = available_layers(backbone)
    unknown = [layer for layer in layers if layer not in names]
    if unknown:
        msg = f"Backbone {backbone!r} has no layer {unknown}. Its feature layers are: {names}."
        raise ValueError(msg)
    return [names.index(layer) for layer in layers]


def pretrained_source(backbone: str) -> WeightsSource:
    """Where timm fetches ``backbone``'s default pretrained weights: its Hub repo when it names one, else its URL.

    timm's facts, stated once: it prefers the Hub, reads the config's ``hf_hub_filename`` (default
    ``pytorch_model.bin``) after its safetensors alternatives, and saves URL downloads in the torch hub cache.
    """
    config = timm.models.get_pretrained_cfg(backbone)
    if config is not None and config.hf_hub_id:
        repo, _, revision = config.hf_hub_id.partition("@")
        filename = config.hf_hub_filename or HF_WEIGHTS_NAME
        files = (filename,) if filename.endswith(".safetensors") else (*_get_safe_alternatives(filename), filename)
        return WeightsSource(name=backbone, hf_repo=repo, hf_files=files, hf_revision=revision or None)
    if config is not None and config.url:
        return WeightsSource(name=backbone, url=config.url, url_cache=Path(torch.hub.get_dir()) / "checkpoints")
    return WeightsSource(name=backbone)


def load_backbone_weights(features: nn.Module, backbone: str, path: str | Path) -> None:
    """Load a timm state dict into a ``features_only`` model, strictly for the layers it uses.

    Keys of the full architecture that the truncated model does not use (deeper stages, the
    classifier) are ignored; any missing key, foreign key or shape mismatch is an error that
    lists them.
    """
    state = read_state_dict(path)
    expected = features.state_dict()
    with torch.device("meta"):
        architecture_keys = set(timm.create_model(backbone, pretrained=False).state_dict())
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - architecture_keys)
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {missing[:10]}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {unexpected[:10]}")
        if mismatched:
            problems.append(f"shape mismatches ({len(mismatched)}): {mismatched[:10]}")
        msg = f"Weights file {path} does not match backbone {backbone!r}: " + "; ".join(problems)
        raise BackboneWeightsError(msg)
    features.load_state_dict({key: state[key] for key in expected}, strict=True)


def drop_unused_blocks(features: nn.Module, layers: Sequence[str]) -> None:
    """Remove blocks after the deepest requested ``blocks.N`` layer.

    timm's EfficientNet-style feature models keep and run every block even when only earlier ones
    are returned (ResNet-style ones are already truncated), which wastes compute and memory.
    """
    blocks = getattr(features, "blocks", None)
    block_indices = [int(layer.split(".")[1]) for layer in layers if layer.startswith("blocks.")]
    if isinstance(blocks, nn.Sequential) and block_indices and len(blocks) > max(block_indices) + 1:
        features.blocks = blocks[: max(block_indices) + 1]


def create_feature_extractor(
    backbone: str,
    layers: Sequence[str],
    pre_trained: bool = True,
    backbone_weights: str | Path | None = None,
    frozen: bool = True,
) -> nn.Module:
    """Build a ``features_only`` timm model returning the feature maps of ``layers``, frozen unless told otherwise.

    ``backbone_weights`` (a local file) takes precedence over ``pre_trained`` and never touches
    the network. ``pre_trained`` uses the local cache when it has the weights and otherwise
    downloads them as timm does, after a quick reachability check so that an offline machine
    gets an immediate, actionable error instead of a minute of retries. ``frozen=False`` leaves
    the parameters trainable and the mode to the caller, for models that fine-tune the backbone.
    """
    out_indices = layer_indices(backbone, layers)
    if pre_trained and backbone_weights is None:
        features = _create_pretrained(backbone, out_indices)
    else:
        features = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=out_indices)
    drop_unused_blocks(features, layers)
    if backbone_weights is not None:
        load_backbone_weights(features, backbone, backbone_weights)
    return freeze(features) if frozen else features


def _create_pretrained(backbone: str, out_indices: list[int]) -> nn.Module:
    """The pretrained timm model: weights from the local cache when they are there, else downloaded if it can start."""
    cached = require_weights(pretrained_source(backbone), PRETRAINED_WAY_OUT)
    overlay = {"file": str(cached)} if cached is not None else None
    return timm.create_model(
        backbone, pretrained=True, features_only=True, out_indices=out_indices, pretrained_cfg_overlay=overlay
    )


class _PendingPretrainedWeights:
    """Forward pre-hook that fetches a feature extractor's pretrained weights on its first use.

    A model about to receive a checkpoint does not need them: loading a state dict that holds the
    extractor's weights cancels the hook, so ``anomalib test --ckpt_path`` never downloads. A
    module-level class rather than a closure, so that a model holding it still pickles.
    """

    def __init__(self, backbone: str, layers: Sequence[str]) -> None:
        self.backbone = backbone
        self.layers = list(layers)
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def cancel(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def __call__(self, features: nn.Module, inputs: object) -> None:
        del inputs
        self.cancel()
        pretrained = _create_pretrained(self.backbone, layer_indices(self.backbone, self.layers))
        drop_unused_blocks(pretrained, self.layers)
        device = next(features.parameters()).device
        features.load_state_dict(pretrained.state_dict(), strict=True)
        features.to(device)

    def on_state_dict(self, features: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
        del features, args
        if any(key.startswith(prefix) for key in state_dict):
            self.cancel()


def defer_pretrained_weights(features: nn.Module, backbone: str, layers: Sequence[str]) -> None:
    """Give a randomly initialised extractor its pretrained weights on first use, unless a state dict comes first."""
    pending = _PendingPretrainedWeights(backbone, layers)
    pending.handles = [
        features.register_forward_pre_hook(pending),
        features.register_load_state_dict_pre_hook(pending.on_state_dict),
    ]
    features._pending_pretrained_weights = pending


def materialise_pretrained_weights(features: nn.Module) -> None:
    """Fetch deferred pretrained weights now (fail fast before a long run); nothing to do if none are pending."""
    pending = getattr(features, "_pending_pretrained_weights", None)
    if pending is not None and pending.handles:
        pending(features, None)
