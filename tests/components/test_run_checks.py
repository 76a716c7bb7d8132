"""Run checks every model brings: unreadable files named, a threshold that flags every good image, interrupted runs."""

import logging
import shutil
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from conftest import SMALL_BACKBONE, SMALL_LAYERS
from lightning.pytorch import Callback

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.components.run_folders import INCOMPLETE_MARKER, IncompleteRunMarker
from anomalib_featureridge.components.scoring_module import ConstantImagesCheck, ThresholdCheck


def _model() -> FeatureRidge:
    return FeatureRidge(backbone=SMALL_BACKBONE, layers=list(SMALL_LAYERS), pre_trained=False, visualizer=False)


def _fit(root: Path, results: Path) -> None:
    datamodule = MVTecAD(root=root, category="synthetic", train_batch_size=4, eval_batch_size=8, num_workers=0)
    engine = Engine(default_root_dir=results, logger=False, enable_progress_bar=False, accelerator="cpu")
    engine.fit(model=_model(), datamodule=datamodule)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def dataset(synthetic_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "synthetic", root / "synthetic")
    return root


def test_a_truncated_training_image_is_named_with_the_way_out(dataset: Path, tmp_path: Path) -> None:
    broken = dataset / "synthetic" / "train" / "good" / "005.png"
    _truncate(broken)
    with pytest.raises(OSError, match=rf"Cannot read {broken}.*truncated.*copy it again.*or remove it"):
        _fit(dataset, tmp_path / "results")


def test_an_interrupted_fit_is_marked_and_latest_goes_back_to_the_last_complete_run(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    results = tmp_path / "results"
    runs = results / "FeatureRidge" / "MVTecAD" / "synthetic"
    _fit(dataset, results)
    assert (runs / "latest").resolve() == (runs / "v0").resolve()
    _truncate(dataset / "synthetic" / "train" / "good" / "005.png")
    with caplog.at_level(logging.WARNING), pytest.raises(OSError, match="Cannot read"):
        _fit(dataset, results)
    assert (runs / "v1" / INCOMPLETE_MARKER).is_file()
    assert not (runs / "v0" / INCOMPLETE_MARKER).exists()
    assert (runs / "latest").resolve() == (runs / "v0").resolve()
    assert "v1 is incomplete" in caplog.text
    assert "`latest` points to v0 again" in caplog.text
    with pytest.raises(OSError, match="Cannot read"):  # v1 is skipped: the last complete run is still v0
        _fit(dataset, results)
    assert (runs / "v2" / INCOMPLETE_MARKER).is_file()
    assert (runs / "latest").resolve() == (runs / "v0").resolve()


def test_an_interrupted_first_fit_is_marked_and_keeps_latest(dataset: Path, tmp_path: Path) -> None:
    _truncate(dataset / "synthetic" / "train" / "good" / "005.png")
    runs = tmp_path / "results" / "FeatureRidge" / "MVTecAD" / "synthetic"
    with pytest.raises(OSError, match="Cannot read"):
        _fit(dataset, tmp_path / "results")
    assert "stopped before its fit completed (OSError" in (runs / "v0" / INCOMPLETE_MARKER).read_text()
    assert (runs / "latest").resolve() == (runs / "v0").resolve()


class CtrlCInTest(Callback):
    """Ctrl-C as the first test batch starts."""

    def on_test_batch_start(self, *args: object) -> None:
        raise KeyboardInterrupt


@pytest.fixture
def sigint() -> Iterator[None]:
    """Lightning ignores SIGINT from a Ctrl-C on (to shut down in peace): give the test process its handler back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def _engine(results: Path, *callbacks: Callback) -> Engine:
    return Engine(
        default_root_dir=results, logger=False, enable_progress_bar=False, accelerator="cpu", callbacks=list(callbacks)
    )


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="synthetic", train_batch_size=4, eval_batch_size=8, num_workers=0)


@pytest.mark.usefixtures("sigint")
def test_ctrl_c_in_the_test_of_a_train_marks_the_run_and_latest_goes_back(dataset: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    runs = results / "FeatureRidge" / "MVTecAD" / "synthetic"
    _fit(dataset, results)
    with pytest.raises(SystemExit):  # Lightning's answer to Ctrl-C
        _engine(results, CtrlCInTest()).train(model=_model(), datamodule=_datamodule(dataset))
    marker = (runs / "v1" / INCOMPLETE_MARKER).read_text()
    assert "stopped before its test completed (KeyboardInterrupt: Ctrl-C)" in marker
    assert (runs / "latest").resolve() == (runs / "v0").resolve()


@pytest.mark.usefixtures("sigint")
def test_ctrl_c_in_anomalib_test_marks_the_results_partial_until_a_test_completes(
    dataset: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    runs = results / "FeatureRidge" / "MVTecAD" / "synthetic"
    _fit(dataset, results)
    checkpoint = next((runs / "v0").rglob("*.ckpt"))
    with pytest.raises(SystemExit):
        _engine(results, CtrlCInTest()).test(model=_model(), datamodule=_datamodule(dataset), ckpt_path=checkpoint)
    marker = (runs / "v0" / INCOMPLETE_MARKER).read_text()
    assert "test stopped before it completed (KeyboardInterrupt: Ctrl-C)" in marker
    assert "checkpoint is complete" in marker
    assert (runs / "latest").resolve() == (runs / "v0").resolve(), "anomalib's test writes where latest points"
    _engine(results).test(model=_model(), datamodule=_datamodule(dataset), ckpt_path=checkpoint)
    assert not (runs / "v0" / INCOMPLETE_MARKER).exists()


def _validate(check: ThresholdCheck, threshold: float, good_scores: list[float]) -> None:
    module = SimpleNamespace(post_processor=SimpleNamespace(image_threshold=torch.tensor(threshold)))
    check.on_validation_epoch_start(None, module)
    scores = torch.tensor([*good_scores, 5.0, 6.0])
    labels = torch.tensor([0] * len(good_scores) + [1, 1])
    check.on_validation_batch_end(None, module, SimpleNamespace(pred_score=scores, gt_label=labels), None, 0)
    check.on_validation_epoch_end(None, module)


def test_a_threshold_that_flags_nearly_every_good_image_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _validate(ThresholdCheck(), 0.5, [0.9] * 19 + [0.1])
    assert "flags 19 of 20 good validation images" in caplog.text
    assert "NormalQuantilePostProcessor" in caplog.text
    assert "docs/thresholds.md" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _validate(ThresholdCheck(), 0.5, [0.9] * 2 + [0.1] * 18)
    assert "flags" not in caplog.text


def test_every_model_carries_the_run_checks_after_its_post_processor() -> None:
    model = _model()
    callbacks = list(model.configure_callbacks())
    assert any(isinstance(callback, IncompleteRunMarker) for callback in callbacks)
    check = next(index for index, callback in enumerate(callbacks) if isinstance(callback, ThresholdCheck))
    assert callbacks.index(model.post_processor) < check, "the threshold must be learnt before it is checked"


def test_the_dataset_wrapper_passes_attribute_writes_through(synthetic_root: Path) -> None:
    """anomalib sets the datasets' augmentations after setup; a wrapper that kept them would resize twice."""
    from anomalib.data.datasets import MVTecADDataset

    from anomalib_featureridge.data.images import NamingUnreadableFiles

    dataset = MVTecADDataset(root=synthetic_root, category="synthetic", split="test")
    wrapped = NamingUnreadableFiles(dataset)
    marker = object()
    wrapped.augmentations = marker
    assert dataset.augmentations is marker
    assert wrapped.augmentations is marker


def test_constant_training_images_are_reported_once_with_their_count() -> None:
    check = ConstantImagesCheck()
    check.on_train_epoch_start(None, None)
    varied = torch.rand(3, 3, 16, 16)
    blank = torch.full((2, 3, 16, 16), -1.8) + 1e-4 * torch.rand(2, 3, 16, 16)
    check.on_train_batch_start(None, None, SimpleNamespace(image=torch.cat([varied, blank])), 0)
    check.on_train_batch_start(None, None, SimpleNamespace(image=varied), 1)
    with pytest.warns(UserWarning, match="2 of the 8 training images are constant or nearly so"):
        check.on_train_epoch_end(None, None)
    check.on_train_epoch_start(None, None)
    check.on_train_batch_start(None, None, SimpleNamespace(image=varied), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check.on_train_epoch_end(None, None)
