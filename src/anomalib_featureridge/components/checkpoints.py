"""Which model a checkpoint belongs to, so that one model's checkpoint is never read as another's.

anomalib's CLI builds the model named by ``--model`` and then loads ``--ckpt_path`` into it;
nothing in the checkpoint says which class wrote it. Without this check a WinClipPlus checkpoint
given to FeatureRidge is described with FeatureRidge's settings, which sends the user looking in
the wrong place.

A checkpoint cut short (an interrupted copy, a full disk) fails in torch with "checkpoint file is
corrupted" or a bare ``OSError``, naming no file: both ways a checkpoint is loaded here (a model's
``load_from_checkpoint``, and Lightning's ``--ckpt_path``, through its strategy's ``CheckpointIO``)
name the file and the way out instead.
"""

from __future__ import annotations

import inspect
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lightning.fabric.plugins import CheckpointIO

if TYPE_CHECKING:
    from anomalib.models.components import AnomalibModule

logger = logging.getLogger(__name__)

MODEL_CLASS_KEY = "anomalib_featureridge_model_class"
_Loaded = TypeVar("_Loaded")


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
    # Imported here: importing anomalib.models loads this package's models, which import this module.
    from anomalib.models.components import AnomalibModule

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


def _describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in settings.items())


def settings_from_checkpoint(
    current: dict[str, Any], saved: dict[str, Any], defaults: dict[str, Any], path: object = None, made: str = "trained"
) -> dict[str, Any]:
    """The checkpoint's scoring settings the model must adopt; raise when one was given with another value.

    anomalib's ``test``/``predict --ckpt_path`` build the model from the command line first, defaults included,
    while ``export`` rebuilds it from the checkpoint. A setting left at its default therefore takes the
    checkpoint's value (so ``--ckpt_path`` alone is enough, and the tested and the exported model are the same);
    a setting given with another value than the checkpoint's is an error, since the saved tensors score
    correctly only with the settings they were made with. Returns the settings whose value changes.
    """
    differing = [key for key in saved if current[key] != saved[key]]
    conflicting = [key for key in differing if current[key] != defaults[key]]
    if conflicting:
        source = f"The checkpoint {path}" if path else "This checkpoint"
        flags = ", ".join(f"--model.{key}" for key in conflicting)
        msg = (
            f"{source} was {made} with {_describe({key: saved[key] for key in conflicting})}, but the model "
            f"is configured with {_describe({key: current[key] for key in conflicting})}. A saved model scores "
            f"only with its own settings: leave out {flags} (the checkpoint supplies every scoring setting), or "
            f"pass the checkpoint's values."
        )
        raise ValueError(msg)
    adopted = {key: saved[key] for key in differing}
    if adopted:
        logger.info("Settings from the checkpoint: %s.", _describe(adopted))
    return adopted


class DamagedCheckpointError(RuntimeError):
    """A checkpoint file that is incomplete or damaged: the message names it and the way out."""


def is_damaged_checkpoint(path: object) -> bool:
    """Whether a local checkpoint file is not a whole zip archive (torch saves checkpoints as zip archives).

    Asked only after a load failed, so that other failures (a missing file, an unpickling rule) keep their message.
    """
    if not isinstance(path, str | Path) or not Path(path).is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is not None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return True


def loaded_naming_damage(load: Callable[..., _Loaded], path: object, *args: Any, **kwargs: Any) -> _Loaded:
    """``load(path, ...)``; a failure on a damaged file is raised again naming it and the way out."""
    try:
        return load(path, *args, **kwargs)
    except Exception as error:
        if not is_damaged_checkpoint(path):
            raise
        cause = str(error).split(". ")[0] or type(error).__name__
        msg = (
            f"The checkpoint {path} is incomplete or damaged ({cause}): it was probably cut short while it was "
            f"written or copied. Copy it again from where it was made, or train again to make a new one."
        )
        raise DamagedCheckpointError(msg) from error


class NamingDamagedCheckpoints(CheckpointIO):
    """A strategy's ``CheckpointIO`` whose loads name a damaged checkpoint file (``--ckpt_path``); all else passes."""

    def __init__(self, wrapped: CheckpointIO) -> None:
        self.wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        if name == "wrapped":
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Saved by the wrapped ``CheckpointIO``."""
        self.wrapped.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Loaded by the wrapped ``CheckpointIO``; a damaged file is named."""
        return loaded_naming_damage(
            self.wrapped.load_checkpoint, path, map_location=map_location, weights_only=weights_only
        )

    def remove_checkpoint(self, path: Any) -> None:
        """Removed by the wrapped ``CheckpointIO``."""
        self.wrapped.remove_checkpoint(path)

    def teardown(self) -> None:
        """Torn down by the wrapped ``CheckpointIO``."""
        self.wrapped.teardown()


def name_damaged_checkpoints(strategy: Any) -> None:
    """Make the strategy's checkpoint loads (Lightning's ``ckpt_path``) name a damaged file; once per strategy."""
    if strategy is not None and not isinstance(strategy.checkpoint_io, NamingDamagedCheckpoints):
        strategy.checkpoint_io = NamingDamagedCheckpoints(strategy.checkpoint_io)
