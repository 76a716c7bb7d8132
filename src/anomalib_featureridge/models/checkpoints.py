"""Which model a checkpoint belongs to, so that one model's checkpoint is never read as another's.

anomalib's CLI builds the model named by ``--model`` and then loads ``--ckpt_path`` into it;
nothing in the checkpoint says which class wrote it. Without this check a WinClipPlus checkpoint
given to FeatureRidge is described with FeatureRidge's settings, which sends the user looking in
the wrong place.
"""

from __future__ import annotations

import inspect
from typing import Any

from anomalib.models.components import AnomalibModule

MODEL_CLASS_KEY = "anomalib_featureridge_model_class"


def record_model_class(checkpoint: dict[str, Any], model: AnomalibModule) -> None:
    """Write the model's class name into the checkpoint."""
    checkpoint[MODEL_CLASS_KEY] = type(model).__name__


def _init_parameters(model_class: type) -> set[str]:
    return set(inspect.signature(model_class.__init__).parameters) - {"self"}


def _writer(checkpoint: dict[str, Any]) -> str | None:
    """The class that wrote the checkpoint: recorded, else the one model whose settings match its hyper-parameters."""
    recorded = checkpoint.get(MODEL_CLASS_KEY)
    if recorded:
        return str(recorded)
    settings = set(checkpoint.get("hyper_parameters", {}))
    matches = [cls.__name__ for cls in AnomalibModule.__subclasses__() if settings <= _init_parameters(cls)]
    return matches[0] if len(matches) == 1 else None


def refuse_other_models_checkpoint(checkpoint: dict[str, Any], model: AnomalibModule, path: object = None) -> None:
    """Raise, naming the model that wrote it, when the checkpoint belongs to another model class."""
    expected = type(model).__name__
    writer = _writer(checkpoint)
    settings = set(checkpoint.get("hyper_parameters", {}))
    foreign = sorted(settings - _init_parameters(type(model)))
    if writer == expected or (writer is None and not foreign):
        return
    source = f"The checkpoint {path}" if path else "This checkpoint"
    made_by = f"was saved by {writer}" if writer else f"has settings {expected} does not have ({', '.join(foreign)})"
    advice = f"--model {writer} (or {writer}.load_from_checkpoint)" if writer else "the model that trained it"
    msg = f"{source} {made_by}, not by {expected}: load it with {advice}."
    raise ValueError(msg)
