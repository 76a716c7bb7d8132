"""The evaluator every model here is tested with, so that their figures compare."""

from __future__ import annotations

from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score


def segmentation_evaluator() -> Evaluator:
    """Image AUROC, pixel AUROC and pixel AUPRO (FPR limit 0.3): the figures anomaly papers report."""
    test_metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
    ]
    return Evaluator(test_metrics=test_metrics)
