"""Three ways of choosing the threshold on real defects, and whether synthetic defects predict them.

Why it is a module of its own: a threshold study needs FeatureRidge fitted once per category on
the good training images minus a held-out share, and every threshold applied to the same scores
through the real post-processor classes (anomalib's ``PostProcessor``, the package's
``NormalQuantilePostProcessor``), so that the labels compared are those a checkpoint or an export
would give; the synthetic hold-out (:func:`~anomalib_featureridge.data.defects.hold_out_with_defects`)
and the calibration (:func:`~anomalib_featureridge.thresholds.calibrate`) are the package's own.
``tools/evaluate_thresholds.py`` is its command line; docs/thresholds.md says what it found.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from anomalib.data import InferenceBatch
from anomalib.data.utils import read_image
from anomalib.post_processing import PostProcessor
from sklearn.metrics import roc_auc_score

from anomalib_featureridge import FeatureRidge, NormalQuantilePostProcessor
from anomalib_featureridge.data.defects import hold_out_with_defects
from anomalib_featureridge.data.images import list_images
from anomalib_featureridge.thresholds import calibrate


def labelled_images(split_dir: Path) -> list[tuple[Path, int, str]]:
    """``(path, label, defect type)`` for every image of an MVTec-layout split folder."""
    return [
        (path, int(folder.name != "good"), folder.name)
        for folder in sorted(split_dir.iterdir())
        if folder.is_dir()
        for path in list_images(folder)
    ]


class Scorer:
    """FeatureRidge fitted on a list of good images; gives raw scores and maps, as the model's forward does."""

    def __init__(self, backbone: str, layers: Sequence[str], weights: Path | None, batch_size: int) -> None:
        self.module = FeatureRidge(
            backbone=backbone,
            layers=list(layers),
            pre_trained=weights is None,
            backbone_weights=weights,
            visualizer=False,
        )
        self.batch_size = batch_size

    def _batches(self, paths: Sequence[Path]) -> Iterator[torch.Tensor]:
        transform = self.module.pre_processor.transform
        for start in range(0, len(paths), self.batch_size):
            chunk = paths[start : start + self.batch_size]
            yield torch.stack([transform(read_image(path, as_tensor=True)) for path in chunk])

    def fit(self, paths: Sequence[Path]) -> None:
        """Fit the Ridge map on ``paths`` with the model's own update (one pass, as one training epoch)."""
        self.module.model.update(self._batches(paths))
        self.module.model.eval()

    @torch.no_grad()
    def score(self, paths: Sequence[Path]) -> Iterator[InferenceBatch]:
        """Raw (un-normalised) predictions, one batch at a time."""
        for batch in self._batches(paths):
            yield self.module.model(batch)


def image_labels(post_processor: PostProcessor, scores: torch.Tensor) -> np.ndarray:
    """The labels the post-processor gives to raw image scores."""
    return post_processor(InferenceBatch(pred_score=scores)).pred_label.numpy().astype(bool)


def rates(flagged: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    """False-alarm rate on good images and recall on defective ones, with counts."""
    good, bad = flagged[labels == 0], flagged[labels == 1]
    return {
        "false_alarm_rate": f"{good.mean():.3f} ({int(good.sum())}/{good.size})",
        "recall": f"{bad.mean():.3f} ({int(bad.sum())}/{bad.size})",
    }


def normal_quantile_post_processors(
    category: str, rates_: Sequence[float], holdout: list[InferenceBatch], count: int
) -> dict[float, NormalQuantilePostProcessor]:
    """One calibrated post-processor per requested rate; its warnings (too few images) are printed."""
    post_processors = {}
    for rate in rates_:
        post_processor = NormalQuantilePostProcessor(false_alarm_rate=rate)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            calibrate(post_processor, holdout, [0] * count)
        for warning in caught:
            print(f"[{category}] warning: {warning.message}", flush=True)
        post_processors[rate] = post_processor
    return post_processors


def score_test(
    scorer: Scorer, test_paths: list[Path], test_labels: np.ndarray, normal_quantile: dict[float, PostProcessor]
) -> tuple[list[InferenceBatch], dict[float, float]]:
    """Image scores of the test set, and each normal-quantile pixel false-alarm rate on its good images."""
    image_scores, good_pixels, flagged_pixels = [], 0, dict.fromkeys(normal_quantile, 0)
    offset = 0
    for prediction in scorer.score(test_paths):
        count = prediction.pred_score.shape[0]
        is_good = torch.from_numpy(test_labels[offset : offset + count] == 0)
        offset += count
        good_pixels += prediction.anomaly_map[is_good].numel()
        for rate, post_processor in normal_quantile.items():
            flagged_pixels[rate] += int(post_processor(prediction).pred_mask[is_good].sum())
        image_scores.append(InferenceBatch(pred_score=prediction.pred_score))
    return image_scores, {rate: flagged / good_pixels for rate, flagged in flagged_pixels.items()}


def evaluate_category(args: argparse.Namespace, category: str, workdir: Path) -> tuple[list[dict], dict]:
    """Fit once, then compare the thresholds; return the threshold rows and the AUROC row."""
    category_dir = args.root / category
    good = list_images(category_dir / "train" / "good")
    fit_images, holdout, _ = hold_out_with_defects(good, workdir / category, args.holdout, args.kinds, args.seed)
    start = time.perf_counter()
    scorer = Scorer(args.backbone, args.layers, args.weights, args.batch_size)
    scorer.fit(fit_images)
    fit_s = time.perf_counter() - start
    print(f"[{category}] fitted on {len(fit_images)} good images in {fit_s:.0f} s; {len(holdout)} held out", flush=True)

    holdout_predictions = list(scorer.score(holdout))
    holdout_scores = torch.cat([prediction.pred_score for prediction in holdout_predictions])
    synthetic = [(path, kind) for path, label, kind in labelled_images(workdir / category / "test") if label]
    synthetic_predictions = list(scorer.score([path for path, _ in synthetic]))
    synthetic_scores = torch.cat([prediction.pred_score for prediction in synthetic_predictions])

    normal_quantile = normal_quantile_post_processors(category, args.rates, holdout_predictions, len(holdout))
    f1_synthetic = PostProcessor()
    labels = [0] * len(holdout) + [1] * len(synthetic)
    calibrate(f1_synthetic, holdout_predictions + synthetic_predictions, labels)

    test = labelled_images(category_dir / "test")
    test_labels = np.array([label for _, label, _ in test])
    test_predictions, pixel_rates = score_test(scorer, [path for path, _, _ in test], test_labels, normal_quantile)
    test_scores = torch.cat([prediction.pred_score for prediction in test_predictions])
    default = PostProcessor()
    calibrate(default, test_predictions, test_labels.tolist())

    methods: list[tuple[str, PostProcessor, dict]] = [("anomalib default (F1 on the test set)", default, {})]
    methods.extend(
        (
            f"normal quantile @ {rate:g} ({len(holdout)} held-out good)",
            post_processor,
            {"pixel_false_alarm_rate": f"{pixel_rates[rate]:.4f}"},
        )
        for rate, post_processor in normal_quantile.items()
    )
    methods.append((f"F1 on synthetic ({len(holdout)} good + {len(synthetic)} synthetic)", f1_synthetic, {}))
    rows = [
        {"category": category, "method": name, **rates(image_labels(post_processor, test_scores), test_labels), **extra}
        for name, post_processor, extra in methods
    ]

    synthetic_kinds = np.array([kind for _, kind in synthetic])
    auroc = {
        "category": category,
        "real_image_AUROC": f"{roc_auc_score(test_labels, test_scores.numpy()):.3f}",
        "synthetic_image_AUROC": f"{_auroc(holdout_scores, synthetic_scores):.3f}",
    }
    for kind in args.kinds:
        auroc[f"synthetic_{kind}_AUROC"] = f"{_auroc(holdout_scores, synthetic_scores[synthetic_kinds == kind]):.3f}"
    auroc["fit_s"] = f"{fit_s:.0f}"
    return rows, auroc


def _auroc(good_scores: torch.Tensor, defect_scores: torch.Tensor) -> float:
    labels = np.r_[np.zeros(len(good_scores)), np.ones(len(defect_scores))]
    return float(roc_auc_score(labels, torch.cat([good_scores, defect_scores]).numpy()))


def write_csv(rows: list[dict], path: Path) -> None:
    """Write rows with the union of their keys as columns."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def run(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Evaluate every category; print and write both tables as each category is done; return their rows."""
    args.output.mkdir(parents=True, exist_ok=True)
    threshold_rows, auroc_rows = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for category in args.categories:
            rows, auroc = evaluate_category(args, category, Path(workdir))
            threshold_rows.extend(rows)
            auroc_rows.append(auroc)
            for row in rows:
                print(row, flush=True)
            print(auroc, flush=True)
            write_csv(threshold_rows, args.output / "thresholds.csv")
            write_csv(auroc_rows, args.output / "auroc.csv")
    return threshold_rows, auroc_rows
