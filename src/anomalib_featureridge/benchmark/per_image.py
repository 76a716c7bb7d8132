"""What the HTML report needs of each tested row, kept during the benchmark's own test pass.

The report shows each test image under every model; scoring the test set again for it would double
the test time, and keeping full-resolution maps would grow with the images' size. So while the
benchmark tests a model, :class:`PerImageRecorder` keeps each image's raw score, its anomaly map
reduced to ``MAP_SIDE`` x ``MAP_SIDE`` (float16) and its mask's coverage at that size, and
:func:`save` writes them beside the CSV as ``images/<row id>.npz``. The recorder lives in
:mod:`.recording`; nothing here imports torch, so that the report can be rebuilt without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAP_SIDE = 64
IMAGES_DIR = "images"


def row_id(identity: dict[str, Any]) -> str:
    """A file name for a row: readable (mode, model, category, size) and unique (a hash of its key).

    Built from :func:`~anomalib_featureridge.benchmark.rows.row_key`'s fields, so a resumed
    run and a rebuilt report find the same file.
    """
    key = tuple(
        "" if name == "n_train" and identity["mode"] == "full" else str(identity.get(name) or "")
        for name in ("mode", "model", "category", "n_train", "backbone", "settings")
    )
    readable = "-".join(part for part in key[:4] if part)
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", readable)
    digest = hashlib.sha1("\x1f".join(key).encode()).hexdigest()[:10]
    return f"{readable}-{digest}"


def images_path(output: Path, identity: dict[str, Any]) -> Path:
    """Where the per-image record of a row lives, beside ``results.csv``."""
    return output / IMAGES_DIR / f"{row_id(identity)}.npz"


def machine() -> dict[str, str]:
    """The machine and versions a row was measured with (the report shows them; a rebuild may run elsewhere)."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cores": str(os.cpu_count()), "python": sys.version.split()[0]}
    for package in ("torch", "anomalib", "anomalib-featureridge"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "not installed"
    return info


@dataclass
class Record:
    """One row's test images: raw scores, labels, reduced maps and mask coverage (0 to 255), file paths."""

    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray | None
    masks: np.ndarray | None
    paths: list[str]
    mask_paths: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def save(path: Path, record: Record) -> None:
    """Write a record (compressed; about 6 KB per image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "scores": record.scores.astype(np.float32),
        "labels": record.labels.astype(np.int8),
        "paths": np.array(record.paths, dtype=str),
        "mask_paths": np.array(record.mask_paths, dtype=str),
        "meta": np.array(json.dumps(record.meta)),
    }
    if record.maps is not None:
        arrays["maps"] = record.maps.astype(np.float16)
    if record.masks is not None:
        arrays["masks"] = record.masks.astype(np.uint8)
    temporary = path.with_suffix(".tmp.npz")
    np.savez_compressed(temporary, **arrays)
    temporary.replace(path)  # a killed run leaves the previous record or none, never half a file


def load(path: Path) -> Record:
    """Read a record written by :func:`save`."""
    with np.load(path, allow_pickle=False) as data:
        return Record(
            scores=data["scores"].astype(np.float64),
            labels=data["labels"].astype(np.int64),
            maps=data["maps"].astype(np.float32) if "maps" in data else None,
            masks=data.get("masks"),
            paths=[str(p) for p in data["paths"]],
            mask_paths=[str(p) for p in data["mask_paths"]],
            meta=json.loads(str(data["meta"])),
        )
