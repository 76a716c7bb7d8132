"""The shared evaluator ranks raw scores as they are, whatever range each batch falls in."""

from __future__ import annotations

import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUROC
from sklearn.metrics import roc_auc_score

from anomalib_featureridge.components.evaluator import ranking_metrics, segmentation_evaluator


def _batches() -> list[ImageBatch]:
    """Raw scores and maps: one batch inside [0, 1], one with values outside it (as CAMs and log errors give)."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for offset in (0.0, -0.6):
        labels = torch.tensor([0, 1, 0, 1, 0, 1])
        masks = torch.zeros(6, 8, 8, dtype=torch.bool)
        masks[labels == 1, 2:5, 2:5] = True
        maps = 0.2 + 0.3 * torch.rand(6, 8, 8, generator=generator) + 0.3 * masks + offset
        scores = maps.flatten(1).amax(dim=1) - 0.25 * torch.rand(6, generator=generator)
        batches.append(
            ImageBatch(
                image=torch.zeros(6, 3, 8, 8), pred_score=scores, gt_label=labels, anomaly_map=maps, gt_mask=masks
            )
        )
    return batches


def _reference(batches: list[ImageBatch], score: str, truth: str) -> float:
    values = torch.cat([getattr(batch, score).flatten() for batch in batches])
    targets = torch.cat([getattr(batch, truth).flatten() for batch in batches])
    return float(roc_auc_score(targets.int().numpy(), values.numpy()))


def test_aurocs_equal_scikit_learns_on_raw_scores_in_and_out_of_the_unit_interval() -> None:
    batches = _batches()
    image_auroc, pixel_auroc, _ = ranking_metrics()
    for batch in batches:
        image_auroc.update(batch)
        pixel_auroc.update(batch)
    expected_image = _reference(batches, "pred_score", "gt_label")
    expected_pixel = _reference(batches, "anomaly_map", "gt_mask")
    assert abs(float(image_auroc.compute()) - expected_image) < 1e-6
    assert abs(float(pixel_auroc.compute()) - expected_pixel) < 1e-6
    # anomalib's default squashes the second batch only, which is what the evaluator must not do.
    default = AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False)
    for batch in batches:
        default.update(batch)
    assert abs(float(default.compute()) - expected_pixel) > 0.01


def test_the_test_evaluator_uses_the_ranking_metrics() -> None:
    metrics = {metric.name: metric for metric in segmentation_evaluator().test_metrics}
    assert set(metrics) == {"image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO"}
    assert metrics["image_AUROC"].normalization is None
    assert metrics["pixel_AUROC"].normalization is None
