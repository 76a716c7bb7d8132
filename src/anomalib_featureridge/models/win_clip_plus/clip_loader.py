"""Build an open_clip model from a tag or a local checkpoint, failing fast when no weights can be had.

open_clip retries a download for a long time on a machine without network and, given a file,
loads it without saying which architecture it expected. This module checks the cache and the
weights server first and names the backbone and the file when they do not fit.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from anomalib_featureridge.components.weights import (
    BackboneWeightsError,
    WeightsSource,
    freeze,
    read_state_dict,
    require_weights,
)

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
PRETRAINED_WAY_OUT = "Pass a local open_clip checkpoint file instead: pretrained=PATH (CLI: --model.pretrained PATH)."


class ClipWeightsError(BackboneWeightsError):
    """CLIP weights are missing, unreachable or do not fit the requested backbone."""


def _open_clip():  # noqa: ANN202
    try:
        import open_clip
    except ImportError as error:
        msg = "WinClipPlus needs open_clip: pip install 'anomalib-featureridge[clip]'"
        raise ImportError(msg) from error
    return open_clip


def resolve_backbone(backbone: str) -> str:
    """Model name for ``backbone``: an open_clip name, or a JSON model config file (registered under its stem)."""
    open_clip = _open_clip()
    if backbone.endswith(".json"):
        path = Path(backbone)
        if not path.is_file():
            msg = f"open_clip model config file not found: {path}"
            raise FileNotFoundError(msg)
        open_clip.add_model_config(path)
        return path.stem
    if open_clip.get_model_config(backbone) is None:
        msg = f"Unknown open_clip backbone {backbone!r}. See open_clip.list_models() for the names."
        raise ValueError(msg)
    return backbone


def is_checkpoint_path(pretrained: str) -> bool:
    """Whether ``pretrained`` names a local file rather than an open_clip tag."""
    return Path(pretrained).suffix in CHECKPOINT_SUFFIXES or os.sep in pretrained or Path(pretrained).exists()


def pretrained_source(model_name: str, tag: str, config: dict) -> WeightsSource:
    """Where open_clip fetches the tag's weights: its URL first (saved in ``~/.cache/clip``), else the Hub.

    open_clip's facts, stated once: a Hub entry is ``org/repo/file``, or ``org/repo/`` for its default
    file ``open_clip_pytorch_model.bin``.
    """
    name = f"{model_name}/{tag}"
    if config.get("url"):
        return WeightsSource(name=name, url=config["url"], url_cache=Path("~/.cache/clip").expanduser())
    if config.get("hf_hub"):
        repo, filename = os.path.split(config["hf_hub"])
        return WeightsSource(name=name, hf_repo=repo, hf_files=(filename or "open_clip_pytorch_model.bin",))
    return WeightsSource(name=name)


def ensure_weights_available(backbone: str, pretrained: str | None) -> None:
    """Raise at once, with the way out, when ``pretrained`` (a file or an open_clip tag) cannot be had."""
    if not pretrained:
        return
    if is_checkpoint_path(pretrained):
        if not Path(pretrained).is_file():
            msg = f"CLIP checkpoint file not found: {pretrained}"
            raise ClipWeightsError(msg)
        return
    _check_tag_is_obtainable(resolve_backbone(backbone), pretrained)


def _check_tag_is_obtainable(model_name: str, tag: str) -> None:
    open_clip = _open_clip()
    config = open_clip.get_pretrained_cfg(model_name, tag)
    if not config:
        msg = (
            f"open_clip has no pretrained tag {tag!r} for {model_name!r} "
            f"(known: {open_clip.list_pretrained_tags_by_model(model_name)}), and no such file exists."
        )
        raise ClipWeightsError(msg)
    require_weights(pretrained_source(model_name, tag, config), PRETRAINED_WAY_OUT, ClipWeightsError)


def load_checkpoint_strictly(model: nn.Module, model_name: str, path: Path) -> None:
    """Load a local open_clip checkpoint as tensors only (never pickled code); another architecture's file is an error.

    The file is read with ``weights_only=True`` explicitly rather than through open_clip, which relies on
    torch's default.
    """
    if not path.is_file():
        msg = f"CLIP checkpoint file not found: {path}"
        raise ClipWeightsError(msg)
    open_clip = _open_clip()
    try:
        state = read_state_dict(path)
    except BackboneWeightsError as error:
        raise ClipWeightsError(str(error).replace("Weights file", "CLIP checkpoint", 1)) from error
    # Checkpoints saved from a DataParallel model prefix every key; OpenAI-format text weights sit at the top level.
    state = {key.removeprefix("module."): value for key, value in state.items()}
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = open_clip.factory.convert_to_custom_text_state_dict(state)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as error:
        msg = (
            f"Checkpoint {path} does not match the open_clip backbone {model_name!r}; pass the backbone it was "
            f"trained with (--model.backbone). Details: {str(error)[:600]}"
        )
        raise ClipWeightsError(msg) from error


def create_clip(backbone: str, pretrained: str | None, defer: bool = False) -> tuple[nn.Module, object, str]:
    """Return ``(clip_model, tokenizer, model_name)``, frozen; ``pretrained=None`` gives random weights.

    A local file is loaded without touching the network; an open_clip tag is downloaded as
    open_clip does, after checking the cache and the server so that offline machines fail fast.
    ``defer`` builds the architecture with random weights and the tag's normalisation, for a model
    that fetches the weights on first use (a checkpoint loaded first brings its own).
    """
    open_clip = _open_clip()
    model_name = resolve_backbone(backbone)
    local_file = Path(pretrained) if pretrained and is_checkpoint_path(pretrained) else None
    if pretrained and local_file is None and not defer:
        _check_tag_is_obtainable(model_name, pretrained)
        model = open_clip.create_model(model_name, pretrained=pretrained)
    else:
        model = open_clip.create_model(model_name, pretrained=None)
        config = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained and local_file is None else {}
        if config.get("mean") and config.get("std"):
            model.visual.image_mean, model.visual.image_std = config["mean"], config["std"]
        if local_file is not None and not defer:
            load_checkpoint_strictly(model, model_name, local_file)
        elif not pretrained:
            logger.warning("WinClipPlus uses randomly initialised CLIP weights (pretrained=None).")
    return freeze(model), open_clip.get_tokenizer(model_name), model_name


def clip_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std that the CLIP model was trained with (OpenAI's values when it does not say)."""
    open_clip = _open_clip()
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return tuple(float(value) for value in mean), tuple(float(value) for value in std)
