"""The figures of the HTML report computed from per-image scores and maps, with numpy only.

The page recomputes the threshold, the counts and the gallery's order in JavaScript when the
false-alarm rate changes; :func:`threshold_at`, :func:`counts_at` and :func:`gallery_order` are
the same rules in Python (same operations in the same order, on the same doubles), which the
first render uses and the tests compare the page against.

The threshold is a plain quantile of the good test images' scores: the one that flags at most
``rate`` of those very images. :func:`anomalib_featureridge.thresholds.normal_quantile_threshold`
answers another question (the rate on good images not among those scored, which needs held-out
images and flags fewer of the scored ones), so it is not used for counts taken on the same images.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

RATE_TOLERANCE = 1e-9
PRO_FPR_LIMIT = 0.3


def threshold_at(scores: np.ndarray, labels: np.ndarray, rate: float) -> float:
    """The score above which at most ``rate`` of the good images lie (flagged: score > threshold).

    With ``n`` good scores sorted from the highest, ``floor(n * rate)`` of them may be flagged, so
    the threshold is the next one; ``-inf`` (everything flagged) without good images.
    """
    good = sorted((float(s) for s, label in zip(scores, labels, strict=True) if label == 0), reverse=True)
    if not good:
        return -math.inf
    allowed = math.floor(len(good) * rate + RATE_TOLERANCE)
    return good[min(allowed, len(good) - 1)]


def counts_at(scores: np.ndarray, labels: np.ndarray, rate: float) -> tuple[float, int, int]:
    """(threshold, missed defective images, flagged good images) at a false-alarm rate."""
    threshold = threshold_at(scores, labels, rate)
    misses = sum(1 for s, label in zip(scores, labels, strict=True) if label == 1 and float(s) <= threshold)
    alarms = sum(1 for s, label in zip(scores, labels, strict=True) if label == 0 and float(s) > threshold)
    return threshold, misses, alarms


def gallery_order(
    scores: list[np.ndarray], labels: np.ndarray, thresholds: list[float], selected: int | None = None
) -> list[int]:
    """Image indices, worst first, for the models (all, or the ``selected`` one).

    First the defective images missed by the most models, the furthest below a threshold first;
    then the good images, those flagged by the most models and the highest above a threshold (in
    units of each model's score range) first; then the defective images caught, the closest calls
    first.
    """
    models = range(len(scores)) if selected is None else [selected]
    spans = [max(float(scores[m].max()) - float(scores[m].min()), 1e-12) if len(scores[m]) else 1.0 for m in models]
    keys = []
    for index, label in enumerate(labels):
        errors, worst = 0, -math.inf
        for m, span in zip(models, spans, strict=True):
            score, threshold = float(scores[m][index]), thresholds[m]
            if label == 1:
                errors += score <= threshold
                margin = (threshold - score) / span
            else:
                errors += score > threshold
                margin = (score - threshold) / span
            worst = max(worst, margin)
        group = 1 if label == 0 else (0 if errors else 2)
        keys.append((group, -errors, -worst, index))
    return [key[-1] for key in sorted(keys)]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
    if not positives or not negatives:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) at every distinct score, from the highest."""
    order = np.argsort(-scores, kind="stable")
    ordered, truth = scores[order], labels[order]
    last_of_each = np.r_[np.nonzero(np.diff(ordered))[0], len(ordered) - 1]
    true_positives = np.cumsum(truth == 1)[last_of_each]
    false_positives = np.cumsum(truth == 0)[last_of_each]
    tpr = np.r_[0.0, true_positives / max(int(true_positives[-1]), 1)]
    fpr = np.r_[0.0, false_positives / max(int(false_positives[-1]), 1)]
    return fpr, tpr


def pro_curve(
    maps: np.ndarray, masks: np.ndarray, max_fpr: float = PRO_FPR_LIMIT, points: int = 61
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Per-region overlap against pixel false-positive rate up to ``max_fpr``, and its normalised area.

    On the reduced maps and masks the report keeps (a mask pixel is defective when at least half
    covered), so it approximates the full-resolution AUPRO of the CSV. None without defect regions.
    """
    defect = masks >= 128
    if not defect.any() or defect.all():
        return None
    normal = np.sort(maps[~defect].astype(np.float64))
    regions = []
    for score_map, region_mask in zip(maps, defect, strict=True):
        labelled, count = ndimage.label(region_mask)
        regions += [np.sort(score_map[labelled == region].astype(np.float64)) for region in range(1, count + 1)]
    thresholds = np.quantile(normal, 1.0 - np.linspace(0.0, max_fpr, points))
    fpr = 1.0 - np.searchsorted(normal, thresholds, side="right") / normal.size
    pro = np.array([np.mean([1.0 - np.searchsorted(r, t, side="right") / r.size for r in regions]) for t in thresholds])
    area = float(np.trapezoid(pro, fpr) / max_fpr) if fpr[-1] > fpr[0] else 0.0
    return fpr, pro, area
