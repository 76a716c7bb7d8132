"""The evaluator every model here is tested with, so that their figures compare.

Its AUROCs rank the scores as they are. anomalib's ``AUROC`` is torchmetrics' ``BinaryROC``,
which applies a sigmoid to every update whose values leave ``[0, 1]``, and only to those: raw
scores (validation metrics, or a model run without the post-processor's normalisation) that stay
inside ``[0, 1]`` in some batches and not in others are then ranked on two scales, and the AUROC
is silently wrong (reported as anomalib #2003, #2337 and #3407, torchmetrics #2195). An AUROC
depends on the order of the scores alone, so no squashing is needed.
"""

from __future__ import annotations

from anomalib.metrics import AUPRO, AUROC, AnomalibMetric, Evaluator, F1Score


def ranking_metrics() -> list[AnomalibMetric]:
    """New image AUROC, pixel AUROC and pixel AUPRO (FPR limit 0.3) metrics: the figures anomaly papers report."""
    return [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_", normalization=None),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, normalization=None),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
    ]


def segmentation_evaluator() -> Evaluator:
    """The ranking metrics and the image F1 score (of the post-processor's labels) on the test set."""
    image_auroc, pixel_auroc, pixel_aupro = ranking_metrics()
    f1_score = F1Score(fields=["pred_label", "gt_label"], prefix="image_")
    return Evaluator(test_metrics=[image_auroc, f1_score, pixel_auroc, pixel_aupro])
