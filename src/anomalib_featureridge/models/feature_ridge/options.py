"""FeatureRidge's options, each declared once: everything else that knows an option reads it from here.

The torch and Lightning constructors take these keywords and validate them with :func:`check_options`;
their docstrings' ``Args`` (what ``--model.help FeatureRidge`` prints) are :func:`describe`'s lines; the
checkpoint rules read :attr:`Option.recorded` and :attr:`Option.before_it_existed`; the benchmark offers
every :attr:`Option.benchmark` option as ``--feature-ridge-NAME``. An option that the chosen head does not
read (:attr:`Option.heads`) is refused at any value but its default, naming the heads that read it, so no
setting is silently ignored. Kept free of torch, so that ``--help`` starts fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .heads import HEAD_NAMES

# The value of :attr:`Option.before_it_existed` for options that every saved model has recorded.
ALWAYS = object()


def _whole(name: str, value: object, low: int, rule: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        msg = f"{name} must be a whole number >= {low}{rule}, got {value!r}."
        raise ValueError(msg)
    return value


def _real(name: str, value: object, *, positive: bool, rule: str) -> float:
    valid = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not valid or value < 0 or (positive and value == 0):
        msg = f"{name} must be {'> 0' if positive else '>= 0'} and finite ({rule}), got {value!r}."
        raise ValueError(msg)
    return float(value)


def _flag(name: str, value: object) -> bool:
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if not isinstance(value, bool):
        msg = f"{name} must be true or false, got {value!r}."
        raise ValueError(msg)
    return value


def _layers(value: object) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        msg = (
            f"layers must be a list of two layer names, [shallow, deep] (for example ['layer2', 'layer3']), "
            f"got {value!r}."
        )
        raise ValueError(msg)
    layers = list(value)
    if len(layers) != 2:
        msg = f"FeatureRidge needs exactly two layers, [shallow, deep]; got {layers}."
        raise ValueError(msg)
    if layers[0] == layers[1]:
        msg = f"FeatureRidge needs two different layers, [shallow, deep]; got {layers[0]!r} twice."
        raise ValueError(msg)
    return layers


def _channels(value: object) -> list[object] | None:
    # The counts' range depends on the layers: the model checks them (channels.channel_subsets).
    if value is None or isinstance(value, str) or not isinstance(value, Sequence):
        return value
    return list(value)


def _weights(value: object) -> str | Path | None:
    if value is not None and not isinstance(value, str | Path):
        msg = f"backbone_weights must be the path of a timm state dict, or None, got {value!r}."
        raise ValueError(msg)
    return value


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        msg = f"{name} must be a name, got {value!r}."
        raise ValueError(msg)
    return value


def _odd_pool(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        msg = f"pool must be an odd whole number of feature positions >= 1 (1 switches it off), got {value!r}."
        raise ValueError(msg)
    return value


@dataclass(frozen=True)
class Option:
    """One option of FeatureRidge: its name, default, rule, who reads it and how checkpoints treat it."""

    name: str
    default: Any
    # One line for the constructors' docstrings, ``--model.help`` and the benchmark's ``--help``.
    help: str
    # Validates a value (raising ``ValueError`` that names the option) and returns it normalised.
    check: Callable[[Any], Any]
    choices: tuple[Any, ...] | None = None
    # The heads that read it; ``None``: every head (the pipeline reads it).
    heads: tuple[str, ...] | None = None
    # Whether scores (or the saved state's shape) depend on it: recorded in checkpoints and adopted from them.
    recorded: bool = True
    # The value a model saved before the option existed scores with; ALWAYS for options every model recorded.
    before_it_existed: Any = ALWAYS
    # Offered by ``anomalib-featureridge benchmark`` as ``--feature-ridge-NAME`` (with its argparse type).
    benchmark: type | None = None

    def reads(self, head: str) -> bool:
        """Whether ``head`` reads this option."""
        return self.heads is None or head in self.heads

    def validated(self, value: object) -> Any:
        """The value checked against the choices and the rule, normalised."""
        if self.choices is not None and value not in self.choices:
            msg = f"{self.name} must be one of {self.choices}, got {value!r}."
            raise ValueError(msg)
        return self.check(value)


def _choice(value: object) -> object:
    return value


OPTIONS: tuple[Option, ...] = (
    Option("backbone", "wide_resnet50_2", "timm CNN name (ImageNet features)", lambda v: _text("backbone", v)),
    Option(
        "layers", ("layer2", "layer3"), "[shallow, deep] layer names; the shallow map predicts the deep one", _layers
    ),
    Option(
        "pre_trained",
        True,
        "timm's ImageNet weights (from the local cache, else downloaded)",
        lambda v: _flag("pre_trained", v),
        recorded=False,
    ),
    Option(
        "backbone_weights",
        None,
        "local timm state dict; overrides pre_trained and needs no network",
        _weights,
        recorded=False,
    ),
    Option(
        "alpha",
        1.0,
        "Ridge penalty of the shared 3x3 map (> 0)",
        lambda v: _real("alpha", v, positive=True, rule="it keeps the Ridge system positive definite"),
        heads=("paper", "gaussian"),
        benchmark=float,
    ),
    Option(
        "sigma",
        4.0,
        "Gaussian smoothing of the anomaly map in pixels (0: off)",
        lambda v: _real("sigma", v, positive=False, rule="0 switches smoothing off"),
        benchmark=float,
    ),
    Option(
        "rank",
        None,
        "rank of the Ridge map, below the deep layer's channels (None: full); cheaper scoring",
        # Its range depends on the deep layer: the paper head checks it (ridge.check_rank).
        lambda v: v,
        heads=("paper",),
        before_it_existed=None,
        benchmark=int,
    ),
    Option(
        "keep_statistics",
        True,
        "keep the fit's sums in the model, so that new normal images can be added later (update)",
        lambda v: _flag("keep_statistics", v),
    ),
    Option(
        "head",
        "paper",
        "what scores the maps: " + ", ".join(HEAD_NAMES) + " (docs/method.md)",
        _choice,
        choices=HEAD_NAMES,
        before_it_existed="paper",
        benchmark=str,
    ),
    Option(
        "region",
        2,
        "side, in feature positions, of the blocks that share one Ridge map",
        lambda v: _whole("region", v, 1, " (feature positions)"),
        heads=("local", "two_scale"),
        before_it_existed=2,
        benchmark=int,
    ),
    Option(
        "pool",
        1,
        "odd side of the mean over neighbouring positions taken of both maps before the head (1: none)",
        _odd_pool,
        before_it_existed=1,
        benchmark=int,
    ),
    Option(
        "reference",
        "none",
        "none, median (each map minus its own per-channel median) or contrast (that, over the image's contrast)",
        _choice,
        choices=("none", "median", "contrast"),
        before_it_existed="none",
        benchmark=str,
    ),
    Option(
        "fit_precision",
        "float64",
        "dtype of each batch's products in the fit, summed in float64 either way",
        _choice,
        choices=("float64", "float32"),
        heads=("paper", "gaussian"),
        recorded=False,
        benchmark=str,
    ),
    Option(
        "channels",
        None,
        "[shallow, deep]: a seeded random subset of each map's channels to keep (None: all)",
        _channels,
        heads=("local", "two_scale"),
        before_it_existed=None,
        benchmark=int,
    ),
)
BY_NAME = {option.name: option for option in OPTIONS}
DEFAULTS = {option.name: option.default for option in OPTIONS}


def check_options(values: dict[str, Any]) -> dict[str, Any]:
    """Every option validated and normalised (defaults filled in); refuse one the chosen head does not read.

    Raises:
        ValueError: Naming the option: a value it cannot take, or a value other than its default for an
            option that the chosen head does not read (with the heads that read it).
    """
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        msg = f"FeatureRidge has no option {unknown}; its options are {sorted(BY_NAME)}."
        raise ValueError(msg)
    checked = {option.name: option.validated(values.get(option.name, option.default)) for option in OPTIONS}
    head = checked["head"]
    for option in OPTIONS:
        if not option.reads(head) and checked[option.name] != option.validated(option.default):
            msg = (
                f"{option.name}={checked[option.name]!r} is read only by the {' and '.join(option.heads)} "
                f"head{'s' if len(option.heads) > 1 else ''}, not by head={head!r}: leave {option.name} out, or "
                f"choose a head that reads it."
            )
            raise ValueError(msg)
    return checked


def saved_value(option: Option, head: str, saved: dict[str, Any]) -> Any:
    """The value of ``option`` a model saved with ``saved`` (and ``head``) scores with.

    An option its head does not read takes its default; one the save lacks, the value models scored with
    before the option existed (its default for options every saved model recorded).
    """
    if not option.reads(head):
        return option.default
    if option.name in saved:
        return saved[option.name]
    return option.default if option.before_it_existed is ALWAYS else option.before_it_existed


def recorded_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint records for its head: those scores depend on, that the head reads."""
    head = settings["head"]
    return {option.name: settings[option.name] for option in OPTIONS if option.recorded and option.reads(head)}


def describe(*, extra: Sequence[str] = ()) -> str:
    """The ``Args:`` section of a constructor's docstring, one line per option (plus ``extra`` lines)."""
    lines = []
    for option in OPTIONS:
        heads = "" if option.heads is None else f" Read by the {', '.join(option.heads)} head(s) only."
        lines.append(f"    {option.name}: {option.help[0].upper()}{option.help[1:]}.{heads}")
    return "\n".join(["Args:", *lines, *(f"    {line}" for line in extra)])
