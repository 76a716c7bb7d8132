"""A benchmark row's identity: the one place that says which CSV row a measurement is, for resuming.

The CSV's first columns (:data:`KEY`) identify a row; a re-run skips the rows already measured. A
model's options are part of the identity, written as ``name=value`` (:func:`settings_label`).
"""

from __future__ import annotations

from typing import Any

# A row's identity: a row of the CSV with these values is measured already (a re-run resumes after it).
KEY = ("mode", "model", "category", "n_train", "backbone", "settings")
# How a model option is named in ``settings``, where it differs from its keyword (rows of earlier runs
# carry these names, so they still resume).
SETTING_LABELS = {
    "coreset_sampling_ratio": "coreset",
    "fit_precision": "fit",
    "defect_kinds": "kinds",
    "max_epochs": "epochs",
    "learning_rate": "lr",
    "anomaly_map": "map",
    "grad_cam_layer": "map_layer",
}


def settings_label(settings: dict[str, Any]) -> str:
    """A model's options as its rows record them, ``name=value`` (lists joined by ``+``)."""

    def label(value: Any) -> str:
        return "+".join(map(str, value)) if isinstance(value, list | tuple) else str(value)

    return " ".join(f"{SETTING_LABELS.get(key, key)}={label(value)}" for key, value in settings.items())


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    """A row's identity; a full run is identified without its (measured) image count."""
    return tuple("" if key == "n_train" and row["mode"] == "full" else str(row[key]) for key in KEY)
