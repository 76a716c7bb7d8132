"""The trainer callback that keeps, during the benchmark's test pass, what the HTML report shows of each image."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback
from torch.nn import functional

from anomalib_featureridge.benchmark.per_image import MAP_SIDE, Record


class PerImageRecorder(Callback):
    """Keeps each test image's raw score and reduced map as the test pass goes.

    A trainer callback runs before the model's own callbacks (Lightning appends those), so it sees
    the raw scores, before anomalib's post-processor normalises and clamps them in place. The time
    spent here is counted (``seconds``), so that the report's cost can be stated.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        """Forget the images of the previous test pass."""
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.maps: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.paths: list[str] = []
        self.mask_paths: list[str] = []
        self.seconds = 0.0

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any) -> None:
        """Reduce and keep this batch's scores, maps and masks (on the CPU)."""
        del trainer, pl_module, args
        start = time.perf_counter()
        outputs = outputs if outputs is not None else batch
        scores = outputs.pred_score.detach().float().reshape(-1).cpu()
        count = scores.numel()
        self.scores.append(scores.numpy())
        self.labels.append(outputs.gt_label.detach().reshape(-1).cpu().numpy().astype(np.int8))
        if outputs.anomaly_map is not None:
            maps = outputs.anomaly_map.detach().float().reshape(count, 1, *outputs.anomaly_map.shape[-2:])
            reduced = functional.interpolate(maps, size=(MAP_SIDE, MAP_SIDE), mode="area")
            self.maps.append(reduced[:, 0].to(torch.float16).cpu().numpy())
        if outputs.gt_mask is not None:
            masks = outputs.gt_mask.detach().float().reshape(count, 1, *outputs.gt_mask.shape[-2:])
            coverage = functional.interpolate(masks, size=(MAP_SIDE, MAP_SIDE), mode="area")[:, 0]
            self.masks.append((coverage * 255).round().to(torch.uint8).cpu().numpy())
        self.paths += [str(path) for path in outputs.image_path]
        mask_paths = getattr(outputs, "mask_path", None) or [""] * count
        self.mask_paths += [str(path or "") for path in mask_paths]
        self.seconds += time.perf_counter() - start

    def record(self, meta: dict[str, Any]) -> Record:
        """What was kept, as one record (maps or masks only where every batch had them)."""
        count = len(self.paths)

        def stacked(parts: list[np.ndarray]) -> np.ndarray | None:
            return np.concatenate(parts) if parts and sum(len(part) for part in parts) == count else None

        return Record(
            scores=np.concatenate(self.scores) if self.scores else np.zeros(0, np.float32),
            labels=np.concatenate(self.labels) if self.labels else np.zeros(0, np.int8),
            maps=stacked(self.maps),
            masks=stacked(self.masks),
            paths=list(self.paths),
            mask_paths=list(self.mask_paths),
            meta=meta,
        )
