"""Normal-quantile thresholds: the requested false-alarm rate on known scores, bad input, CLI form and export."""

import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from anomalib.cli import AnomalibCLI
from anomalib.data import ImageBatch, InferenceBatch, MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from anomalib.models import Padim
from anomalib.post_processing import PostProcessor
from conftest import SMALL_BACKBONE, SMALL_LAYERS

from anomalib_featureridge import FeatureRidge, NormalQuantilePostProcessor
from anomalib_featureridge.thresholds import calibrate, normal_quantile_threshold, required_normal_count

NORMAL = torch.distributions.Normal(0.0, 1.0)


def _normal_scores(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, generator=torch.Generator().manual_seed(seed))


def _good_batches(count: int, batch_size: int, seed: int, map_size: int = 16) -> list[ImageBatch]:
    """Good validation batches whose image scores and pixels are standard normal."""
    generator = torch.Generator().manual_seed(seed)
    return [
        ImageBatch(
            image=torch.zeros(batch_size, 3, 1, 1),
            pred_score=torch.randn(batch_size, generator=generator),
            anomaly_map=torch.randn(batch_size, 1, map_size, map_size, generator=generator),
            gt_label=torch.zeros(batch_size, dtype=torch.bool),
        )
        for _ in range(count // batch_size)
    ]


def _calibrate(post_processor: NormalQuantilePostProcessor, batches: list[ImageBatch]) -> None:
    for batch in batches:
        post_processor.on_validation_batch_end(None, None, batch)
    post_processor.on_validation_epoch_end(None, None)


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_threshold_gives_the_requested_false_alarm_rate_on_normal_scores(rate: float) -> None:
    threshold = normal_quantile_threshold(_normal_scores(20_000, seed=0), rate)
    assert float(threshold) == pytest.approx(float(NORMAL.icdf(torch.tensor(1 - rate))), abs=0.06)
    fresh = _normal_scores(200_000, seed=1)
    assert float((fresh > threshold).float().mean()) == pytest.approx(rate, rel=0.2)


def test_threshold_is_the_split_conformal_rank() -> None:
    scores = torch.arange(1.0, 200.0)  # 1 .. 199
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(normal_quantile_threshold(scores[:99], 0.01)) == 99.0  # n = 99 is just enough for 1 %
        assert float(normal_quantile_threshold(scores, 0.01)) == 198.0  # n = 199: one good score above
        assert float(normal_quantile_threshold(scores[:19], 0.05)) == 19.0
    assert required_normal_count(0.01) == 99
    assert required_normal_count(0.05) == 19


def test_too_few_good_scores_warn_with_the_number_needed() -> None:
    with pytest.warns(UserWarning, match="at least 99 are needed"):
        threshold = normal_quantile_threshold(_normal_scores(10, seed=0), 0.01)
    assert float(threshold) == float(_normal_scores(10, seed=0).max())


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_false_alarm_rate_outside_zero_one_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        normal_quantile_threshold(torch.ones(10), rate)
    with pytest.raises(ValueError, match="false_alarm_rate must lie"):
        NormalQuantilePostProcessor(false_alarm_rate=rate)
    with pytest.raises(ValueError, match="pixel_false_alarm_rate must lie"):
        NormalQuantilePostProcessor(false_alarm_rate=0.01, pixel_false_alarm_rate=rate)


def test_empty_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="empty set of good scores"):
        normal_quantile_threshold(torch.empty(0), 0.05)


def test_post_processor_flags_the_requested_share_of_new_good_images_and_pixels() -> None:
    post_processor = NormalQuantilePostProcessor(false_alarm_rate=0.05, pixel_false_alarm_rate=0.01)
    _calibrate(post_processor, _good_batches(2000, batch_size=100, seed=0))
    new = _good_batches(4000, batch_size=4000, seed=1)[0]
    output = post_processor(InferenceBatch(pred_score=new.pred_score, anomaly_map=new.anomaly_map))
    assert float(output.pred_label.float().mean()) == pytest.approx(0.05, rel=0.2)
    assert float(output.pred_mask.float().mean()) == pytest.approx(0.01, rel=0.1)
    at_threshold = post_processor(InferenceBatch(pred_score=post_processor.image_threshold.reshape(1)))
    assert float(at_threshold.pred_score) == pytest.approx(0.5), "normalised like anomalib: 0.5 is the threshold"


def test_pixel_scores_are_subsampled_to_bounded_memory() -> None:
    post_processor = NormalQuantilePostProcessor(false_alarm_rate=0.05, max_pixel_samples=5_000)
    batches = _good_batches(400, batch_size=50, seed=2, map_size=32)  # 409,600 good pixels
    for batch in batches:
        post_processor.on_validation_batch_end(None, None, batch)
        assert post_processor._pixel_threshold_metric.values.numel() <= 5_000
    post_processor.on_validation_epoch_end(None, None)
    assert float(post_processor.pixel_threshold) == pytest.approx(float(NORMAL.icdf(torch.tensor(0.95))), abs=0.1)


def test_anomalous_validation_images_are_left_out_with_a_warning() -> None:
    good = _good_batches(200, batch_size=50, seed=3)
    anomalous = ImageBatch(
        image=torch.zeros(20, 3, 1, 1),
        pred_score=torch.full((20,), 50.0),
        anomaly_map=torch.full((20, 1, 16, 16), 50.0),
        gt_label=torch.ones(20, dtype=torch.bool),
    )
    reference = NormalQuantilePostProcessor(false_alarm_rate=0.05)
    _calibrate(reference, good)
    mixed = NormalQuantilePostProcessor(false_alarm_rate=0.05)
    with pytest.warns(UserWarning, match="20 anomalous images; the thresholds use only its 200 good"):
        _calibrate(mixed, [*good, anomalous])
    assert float(mixed.image_threshold) == float(reference.image_threshold)
    assert float(mixed.pixel_threshold) == float(reference.pixel_threshold)


def test_validation_without_good_images_is_refused() -> None:
    anomalous = ImageBatch(
        image=torch.zeros(4, 3, 1, 1),
        pred_score=torch.rand(4),
        anomaly_map=torch.rand(4, 1, 8, 8),
        gt_label=torch.ones(4, dtype=torch.bool),
    )
    with pytest.raises(ValueError, match="no good \\(label 0\\) images \\(4 anomalous"):
        _calibrate(NormalQuantilePostProcessor(), [anomalous])


def _predictions(batches: list[ImageBatch]) -> list[InferenceBatch]:
    return [InferenceBatch(pred_score=batch.pred_score, anomaly_map=batch.anomaly_map) for batch in batches]


def test_calibrate_sets_the_thresholds_the_validation_hooks_set() -> None:
    good = _good_batches(400, batch_size=50, seed=4)
    through_hooks = NormalQuantilePostProcessor(false_alarm_rate=0.05)
    _calibrate(through_hooks, good)
    offline = NormalQuantilePostProcessor(false_alarm_rate=0.05)
    calibrate(offline, iter(_predictions(good)), [0] * 400)  # any iterable of batches, one label per image
    for name in ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
        assert torch.equal(getattr(offline, name), getattr(through_hooks, name)), name


def test_calibrate_with_defects_gives_anomalib_s_f1_threshold_between_the_classes() -> None:
    scores = torch.tensor([0.1, 0.2, 0.3, 0.8, 0.9])
    post_processor = PostProcessor()
    calibrate(
        post_processor, [InferenceBatch(pred_score=scores[:2]), InferenceBatch(pred_score=scores[2:])], [0, 0, 0, 1, 1]
    )
    assert 0.3 <= float(post_processor.image_threshold) <= 0.8 + 1e-6
    labels = post_processor(InferenceBatch(pred_score=torch.tensor([0.05, 0.95]))).pred_label
    assert labels.tolist() == [False, True]


@pytest.mark.parametrize("count", [399, 401])
def test_calibrate_refuses_labels_that_do_not_match_the_images_and_changes_nothing(count: int) -> None:
    post_processor = NormalQuantilePostProcessor(false_alarm_rate=0.05)
    with pytest.raises(ValueError, match=f"{count} labels for 400 scored images"):
        calibrate(post_processor, _predictions(_good_batches(400, batch_size=50, seed=4)), [0] * count)
    assert not post_processor._image_threshold_metric.update_called
    assert torch.isnan(post_processor.image_threshold)


def _small_feature_ridge(rate: float) -> FeatureRidge:
    torch.manual_seed(0)
    return FeatureRidge(
        backbone=SMALL_BACKBONE,
        layers=list(SMALL_LAYERS),
        pre_trained=False,
        visualizer=False,
        post_processor=NormalQuantilePostProcessor(false_alarm_rate=rate),
    )


def _datamodule(root: Path, val_split_ratio: float) -> MVTecAD:
    """Validation images held out from the good training images, as the normal-quantile threshold needs."""
    return MVTecAD(
        root=root,
        category="synthetic",
        train_batch_size=4,
        eval_batch_size=8,
        num_workers=0,
        val_split_mode="from_train",
        val_split_ratio=val_split_ratio,
        seed=0,
    )


def _engine(workdir: Path) -> Engine:
    return Engine(default_root_dir=workdir, logger=False, enable_progress_bar=False, accelerator="cpu")


def test_fitting_with_an_empty_validation_set_is_refused(synthetic_root: Path, tmp_path: Path) -> None:
    empty_validation = _datamodule(synthetic_root, val_split_ratio=0.01)  # rounds to no image of 12
    with pytest.raises(ValueError, match="got no validation images"):
        _engine(tmp_path).fit(model=_small_feature_ridge(0.2), datamodule=empty_validation)


def test_thresholds_survive_checkpoint_and_onnx_export(synthetic_root: Path, tmp_path: Path) -> None:
    model = _small_feature_ridge(0.5)  # a random backbone separates little: a high rate gives both labels
    engine = _engine(tmp_path)
    engine.fit(model=model, datamodule=_datamodule(synthetic_root, val_split_ratio=0.5))
    threshold = float(model.post_processor.image_threshold)
    assert not np.isnan(threshold)
    checkpoint = tmp_path / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    model.eval()

    images = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))
    batch = torch.stack([read_image(path, as_tensor=True) for path in images])
    with torch.no_grad():
        reference = model(batch)
    assert set(reference.pred_label.tolist()) == {False, True}, "the check must see both labels"

    session = onnxruntime.InferenceSession(str(model.to_onnx(tmp_path / "onnx")), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: batch.numpy()}), strict=True))
    np.testing.assert_array_equal(outputs["pred_label"].reshape(-1), reference.pred_label.numpy())
    np.testing.assert_allclose(outputs["pred_score"].reshape(-1), reference.pred_score.numpy(), atol=1e-4)

    restored = FeatureRidge.load_from_checkpoint(checkpoint).eval()
    assert float(restored.post_processor.image_threshold) == threshold
    with torch.no_grad():
        assert torch.equal(restored(batch).pred_label, reference.pred_label)


def test_anomalib_cli_accepts_the_post_processor_by_class_path(synthetic_root: Path) -> None:
    cli = AnomalibCLI(
        [
            "train",
            "--model", "Padim",
            "--model.backbone", "resnet18",
            "--model.pre_trained", "false",
            "--model.post_processor", "anomalib_featureridge.NormalQuantilePostProcessor",
            "--model.post_processor.false_alarm_rate", "0.02",
            "--data", "MVTecAD",
            "--data.root", str(synthetic_root),
            "--data.category", "synthetic",
        ],
        run=False,
    )  # fmt: skip
    assert isinstance(cli.model, Padim)
    assert isinstance(cli.model.post_processor, NormalQuantilePostProcessor)
    assert cli.model.post_processor.false_alarm_rate == 0.02
