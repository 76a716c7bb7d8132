"""Models saved before FeatureRidge's heads were modules: their states and pickles, brought to today's layout.

Until the heads moved to ``heads/``, every head's tensors and sums were the model's own buffers and
modules (``weight``, ``local_mean_x``, ``positions``, ...), and its options the model's own attributes.
Each head names where those now live (``Head.LEGACY_NAMES``); this module moves them, so Lightning
checkpoints and torch exports of earlier versions load and score as they did
(``tests/models/feature_ridge/fixtures`` holds one of each per head).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .heads import head_class
from .heads.base import Head
from .options import OPTIONS, check_options, saved_value

# The pipeline's own entries, which kept their names.
PIPELINE = ("feature_extractor", "fitted", "shallow_channels", "deep_channels")
# Attributes of pickled models that were never part of the model: an unfinished fit and caches.
TRANSIENT = ("pending", "_positions_pending", "_local_unpacked")
_UNKNOWN = object()


def _new_name(name: str, head: type[Head]) -> str | object | None:
    """Where the head keeps what the old model called ``name``: a name, ``None`` (dropped) or ``_UNKNOWN``."""
    for old, new in head.LEGACY_NAMES.items():
        if name == old or name.startswith(f"{old}."):
            return None if new is None else new + name[len(old) :]
    return _UNKNOWN


def move_head_state(state_dict: dict[str, torch.Tensor], prefix: str, head: type[Head]) -> None:
    """Rename, in place, an old state's head entries under ``prefix`` to ``<prefix>head.<name>``.

    A state already in today's layout is left as it is; an entry no head knows is left for the strict
    load to report.
    """
    names = [key[len(prefix) :] for key in state_dict if key.startswith(prefix)]
    if any(name.startswith("head.") for name in names):
        return
    for name in names:
        if name.split(".")[0] in PIPELINE:
            continue
        moved = _new_name(name, head)
        if moved is _UNKNOWN:
            continue
        value = state_dict.pop(prefix + name)
        if moved is not None:
            state_dict[f"{prefix}head.{moved}"] = value


def _sigma(blur: torch.nn.Module | None) -> float:
    """The smoothing of an old pickle's blur, read off its kernel (the old blur did not keep its sigma)."""
    if blur is None:
        return 0.0
    centre, next_tap = blur.kernel[blur.radius].double(), blur.kernel[blur.radius + 1].double()
    return math.sqrt(-1.0 / (2.0 * math.log(float(next_tap / centre))))


def upgraded_pickle(state: dict[str, Any]) -> dict[str, Any]:
    """The ``__dict__`` of a model pickled before heads were modules, in today's layout.

    Options the pickle lacks take the value models scored with before each existed; options its head
    does not read take their defaults.
    """
    buffers, modules = state["_buffers"], state["_modules"]
    blur = modules.get("blur", state.get("blur"))
    head_name = state.get("head", "paper")
    values = {
        option.name: saved_value(option, head_name, state)
        for option in OPTIONS
        if option.name not in ("pre_trained", "backbone_weights", "sigma")
    }
    values["sigma"] = _sigma(blur)
    settings = {k: v for k, v in check_options(values).items() if k not in ("pre_trained", "backbone_weights")}
    extractor = modules["feature_extractor"]
    channels = tuple(extractor.feature_info.channels())
    if buffers.get("shallow_channels") is not None:
        channels = (len(buffers["shallow_channels"]), len(buffers["deep_channels"]))
    head = head_class(head_name)(channels, settings)
    old_state = {name: tensor for name, tensor in buffers.items() if name not in PIPELINE and tensor is not None}
    for name, module in modules.items():
        if name not in ("feature_extractor", "blur") and module is not None:
            old_state.update({f"{name}.{key}": value for key, value in module.state_dict().items()})
    move_head_state(old_state, "", type(head))
    head.load_state_dict({key.removeprefix("head."): value for key, value in old_state.items()})
    kept_attributes = {
        key: value
        for key, value in state.items()
        if (key.startswith("_") or key == "training") and key not in TRANSIENT
    }
    upgraded = {
        **kept_attributes,
        "_buffers": {name: buffers.get(name) for name in PIPELINE[1:]},
        "_modules": {"feature_extractor": extractor, "head": head},
        "settings": settings,
    }
    if blur is None:
        upgraded["blur"] = None
    else:
        upgraded["_modules"]["blur"] = blur
    return upgraded
