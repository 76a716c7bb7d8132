"""Every benchmarked model built from its registered name, with the settings the run shares.

The one place that knows how a model takes the shared backbone, weights, evaluator and the run's
model-specific options, so that every row (and every tool that builds models for a benchmark)
compares like with like. Models are found by anomalib's own name lookup, which sees this
package's models through their ``anomalib.models`` registration; only the keywords a model's
constructor accepts are passed to it.
"""

from __future__ import annotations

import inspect
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from anomalib.models import UnknownModelError, list_models
from anomalib.models import _get_model_class_by_name as registered_class
from anomalib.models.components import AnomalibModule

from anomalib_featureridge.benchmark.rows import settings_label
from anomalib_featureridge.components.evaluator import segmentation_evaluator
from anomalib_featureridge.components.feature_extractor import create_feature_extractor, load_backbone_weights


@dataclass(frozen=True)
class Setup:
    """What every model in one benchmark run shares."""

    backbone: str
    layers: tuple[str, ...]
    weights: Path | None
    random_init: bool
    clip_backbone: str | None
    clip_pretrained: str | None
    batch_size: int
    warmup: int
    repeats: int
    seed: int
    # Model-specific options as (model class name, keyword, value), each passed to that model only;
    # None keeps the model's default.
    model_options: tuple[tuple[str, str, Any], ...] = ()
    # Further values of options that change only how a trained model scores (SyntheticDefectMetric's
    # scorer), as (model class name, keyword, value): each gives its own row from the same training.
    evaluation_variants: tuple[tuple[str, str, Any], ...] = ()


def model_class(name: str) -> type[AnomalibModule]:
    """The registered anomalib model class called ``name`` (any case), or exit listing the registered ones."""
    # anomalib logs a miss with an empty traceback; the message below says it better, once.
    lookup_logger = logging.getLogger("anomalib.models")
    level = lookup_logger.level
    lookup_logger.setLevel(logging.CRITICAL)
    try:
        return registered_class(name)
    except UnknownModelError:
        sys.exit(f"Model {name!r} is not registered with anomalib. Registered: {sorted(list_models('pascal'))}")
    finally:
        lookup_logger.setLevel(level)


def model_settings(cls: type[AnomalibModule], setup: Setup) -> dict[str, Any]:
    """The run's model-specific options that ``cls`` accepts: passed to it, and recorded in its rows."""
    return {key: value for model, key, value in setup.model_options if model == cls.__name__ and value is not None}


def settings_of(name: str, setup: Setup) -> str:
    """The model-specific settings recorded in each row (part of the row's identity for resuming)."""
    settings = model_settings(model_class(name), setup)
    return settings_label(settings)


def variants_of(name: str, setup: Setup) -> list[Setup]:
    """The setups of one training's rows: ``setup`` itself, then one per evaluation variant ``name`` accepts."""
    cls_name = model_class(name).__name__
    variants = [setup]
    for model, key, value in setup.evaluation_variants:
        if model == cls_name:
            options = tuple(
                (owner, option, value if (owner, option) == (model, key) else current)
                for owner, option, current in setup.model_options
            )
            variants.append(replace(setup, model_options=options))
    return [replace(variant, evaluation_variants=()) for variant in variants]


def build_model(name: str, setup: Setup, floor_channels: int, k_shot: int | None = None) -> AnomalibModule:
    """Instantiate ``name`` with the shared backbone, weights and evaluator, passing only what it accepts.

    CNN-feature models (those with ``layers``, or one ``layer`` like SyntheticDefectMetric) share
    the timm backbone; CLIP models take the ``--clip-*`` options, and ``k_shot`` reference images
    in few-shot runs. ``floor_channels`` (the backbone's channels over both layers) is what Padim
    keeps where anomalib knows no feature count for the backbone.
    """
    cls = model_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    options: dict[str, Any] = {"visualizer": False, "evaluator": segmentation_evaluator()}
    if "layers" in accepted or "layer" in accepted:
        options["backbone"] = setup.backbone
        if "layers" in accepted:
            options["layers"] = list(setup.layers)
        options["pre_trained"] = setup.weights is None and not setup.random_init
    elif "backbone" in accepted and setup.clip_backbone is not None:
        options["backbone"] = setup.clip_backbone
    if "pretrained" in accepted and setup.clip_pretrained is not None:
        options["pretrained"] = None if setup.clip_pretrained == "none" else setup.clip_pretrained
    if "k_shot" in accepted and k_shot is not None:
        options["k_shot"] = k_shot
    if "backbone_weights" in accepted:
        options["backbone_weights"] = setup.weights
        options["pre_trained"] = setup.weights is not None or not setup.random_init
    options |= model_settings(cls, setup)
    if "n_features" in accepted:
        # anomalib's Padim only knows a default for resnet18 and wide_resnet50_2; elsewhere keep every channel.
        from anomalib.models.image.padim.torch_model import _N_FEATURES_DEFAULTS

        options["n_features"] = _N_FEATURES_DEFAULTS.get(setup.backbone, floor_channels)
    model = cls(**options)
    if setup.weights is not None and "layers" in accepted and "backbone_weights" not in accepted:
        # anomalib's models take no weights file: load it strictly into their timm feature extractor.
        load_backbone_weights(model.model.feature_extractor.feature_extractor, setup.backbone, setup.weights)
    return model


def floor_backbone(setup: Setup) -> Any:
    """The shared backbone truncated after the deepest layer used, with the run's weights (checked strictly).

    Its time is the floor that no method built on these features can go below.
    """
    floor = create_feature_extractor(setup.backbone, setup.layers, pre_trained=False)
    if setup.weights is not None:
        load_backbone_weights(floor, setup.backbone, setup.weights)
    return floor
