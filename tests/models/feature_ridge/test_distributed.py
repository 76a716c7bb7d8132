"""Two CPU processes (Lightning ddp_spawn, gloo) give what one gives: FeatureRidge's fit, for every head, and the
metrics and embeddings of a SyntheticDefectMetric training.

The training and the test set have odd sizes, so Lightning's DistributedSampler repeats an image
at the end of one shard, and the evaluation batch size makes one shard's last batch a lone
repeat: both must be left out for the counts and the metrics to be exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.data.datasets import MVTecADDataset
from anomalib.engine import Engine
from anomalib.metrics import Evaluator
from conftest import SMALL_BACKBONE, SMALL_LAYERS
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_featureridge import FeatureRidge, SyntheticDefectMetric
from anomalib_featureridge.components.evaluator import ranking_metrics
from anomalib_featureridge.data import SyntheticSpec, make_synthetic_dataset

TRAIN_IMAGES = 7
IMAGE_SIZE = (64, 64)
# Two processes score other batches (other shapes, one thread each) than one process does, and float32
# convolutions may round those differently: a near-tie of these random-weight maps can flip. Measured up to
# 1.2e-6 in pixel AUROC. A repeat counted twice moves these metrics by about 1e-2 (0.031 in pixel AUROC).
METRIC_ROUNDING = 1e-4
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def _assert_same_metrics(got: dict, expected: dict) -> None:
    for metric in METRICS:
        assert abs(float(got[metric]) - float(expected[metric])) <= METRIC_ROUNDING, metric


def _evaluator() -> Evaluator:
    return Evaluator(val_metrics=ranking_metrics(), test_metrics=ranking_metrics())


def _model(head: str = "paper") -> FeatureRidge:
    torch.manual_seed(0)
    return FeatureRidge(
        head=head,
        backbone=SMALL_BACKBONE,
        layers=list(SMALL_LAYERS),
        pre_trained=False,
        visualizer=False,
        evaluator=_evaluator(),
        pre_processor=FeatureRidge.configure_pre_processor(image_size=IMAGE_SIZE),
    )


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    make_synthetic_dataset(
        root, spec=SyntheticSpec(image_size=64, n_train=TRAIN_IMAGES, n_test_good=2, n_test_per_defect=1)
    )
    return root


def _datamodule(root: Path) -> MVTecAD:
    test_images = len(list((root / "synthetic" / "test").rglob("*.png")))
    assert test_images % 2 == 1
    # Each shard holds ceil(n / 2) images; one fewer per batch leaves a lone image (a repeat on rank 1) last.
    eval_batch = (test_images + 1) // 2 - 1
    return MVTecAD(root=root, category="synthetic", train_batch_size=2, eval_batch_size=eval_batch, num_workers=0)


def _engine(workdir: Path, devices: int, **options: object) -> Engine:
    return Engine(
        default_root_dir=workdir,
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        **options,
    )


def _fit(root: Path, workdir: Path, devices: int, head: str = "paper") -> tuple[FeatureRidge, Engine]:
    model = _model(head)
    engine = _engine(workdir, devices)
    engine.fit(model=model, datamodule=_datamodule(root))
    return model, engine


def test_two_processes_fit_the_same_model_as_one(odd_root: Path, tmp_path: Path) -> None:
    single, single_engine = _fit(odd_root, tmp_path / "one", devices=1)
    double, double_engine = _fit(odd_root, tmp_path / "two", devices=2)
    grid = (IMAGE_SIZE[0] // 8) * (IMAGE_SIZE[1] // 8)
    assert float(single.model.head.statistics.count) == TRAIN_IMAGES * grid
    assert float(double.model.head.statistics.count) == TRAIN_IMAGES * grid
    for name in ("sum_x", "sum_y", "xtx", "xty"):
        expected = getattr(single.model.head.statistics, name)
        torch.testing.assert_close(getattr(double.model.head.statistics, name), expected, rtol=1e-12, atol=1e-9)
    for got, expected in zip(
        double.model.head.statistics.solve(1.0), single.model.head.statistics.solve(1.0), strict=True
    ):
        assert float((got - expected).abs().max() / expected.abs().max()) < 1e-9
    # The validation metrics, computed across both processes, equal one process's.
    _assert_same_metrics(double_engine.trainer.callback_metrics, single_engine.trainer.callback_metrics)

    # The checkpoint rank 0 wrote loads and scores like the model fitted on one process.
    checkpoint = double_engine.trainer.checkpoint_callback.best_model_path
    restored = FeatureRidge.load_from_checkpoint(checkpoint, map_location="cpu", evaluator=_evaluator()).eval()
    images = torch.rand(2, 3, *IMAGE_SIZE)
    single.eval()
    torch.testing.assert_close(
        restored.model(images).anomaly_map, single.model(images).anomaly_map, rtol=1e-5, atol=1e-5
    )
    assert float(restored.model.head.statistics.count) == TRAIN_IMAGES * grid

    # An update after the distributed fit equals a full refit on all images.
    extra = torch.rand(3, 3, *IMAGE_SIZE)
    restored.model.update(extra)
    dataset = MVTecADDataset(root=odd_root, category="synthetic", split="train")
    training = torch.stack([dataset[index].image for index in range(len(dataset))])
    refit = _model().model
    refit.accumulate(single.pre_processor.transform(training))
    refit.update(extra)
    assert float(restored.model.head.statistics.count) == float(refit.head.statistics.count)
    for got, expected in zip(restored.model.head.statistics.solve(1.0), refit.head.statistics.solve(1.0), strict=True):
        assert float((got - expected).abs().max() / expected.abs().max()) < 1e-9


@pytest.mark.parametrize("head", ["local", "gaussian", "two_scale"])
def test_two_processes_fit_the_per_position_heads_as_one(odd_root: Path, tmp_path: Path, head: str) -> None:
    single, single_engine = _fit(odd_root, tmp_path / "one", devices=1, head=head)
    double, double_engine = _fit(odd_root, tmp_path / "two", devices=2, head=head)
    # Counted in images: the sampler's repeat is left out of the per-position sums too.
    per_position = [name for name in single.model.head.committed_sums() if name.endswith("positions")]
    assert len(per_position) == (2 if head == "two_scale" else 1)
    for statistics in per_position:
        one = single.model.head.get_submodule(statistics)
        two = double.model.head.get_submodule(statistics)
        assert float(two.count) == float(one.count) == TRAIN_IMAGES
        for name in one.SUMS:
            torch.testing.assert_close(getattr(two, name), getattr(one, name), rtol=1e-12, atol=1e-9)
    images = torch.rand(2, 3, *IMAGE_SIZE)
    single.eval(), double.eval()
    torch.testing.assert_close(double.model(images).anomaly_map, single.model(images).anomaly_map, rtol=1e-5, atol=1e-5)
    _assert_same_metrics(double_engine.trainer.callback_metrics, single_engine.trainer.callback_metrics)


class _TrainedState(Callback):
    """Saves each process's torch model as it stands when training ends: what that process would score with."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        torch.save(pl_module.model.state_dict(), self.folder / f"rank{trainer.global_rank}.pt")


def test_two_processes_train_one_metric_model_that_scores_each_image_once(odd_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SyntheticDefectMetric(
        backbone=SMALL_BACKBONE,
        pre_trained=False,
        visualizer=False,
        post_processor=False,
        evaluator=_evaluator(),
        max_epochs=1,
        pre_processor=SyntheticDefectMetric.configure_pre_processor(IMAGE_SIZE),
    )
    # No validation pass: the checkpoint at the end of the epoch is where every process re-embeds the training set.
    engine = _engine(tmp_path / "two", devices=2, limit_val_batches=0, callbacks=[_TrainedState(tmp_path)])
    engine.fit(model=model, datamodule=_datamodule(odd_root))
    first, second = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1))
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=0, atol=0, msg=f"{name} differs between processes")
    assert model.model.bank.embeddings.shape[0] == TRAIN_IMAGES
    torch.testing.assert_close(model.model.bank.embeddings, first["bank.embeddings"], rtol=0, atol=0)

    # The test metrics, computed across both processes, equal the same model's on one process.
    double = _engine(tmp_path / "test-two", devices=2).test(model=model, datamodule=_datamodule(odd_root))[0]
    single = _engine(tmp_path / "test-one", devices=1).test(model=model, datamodule=_datamodule(odd_root))[0]
    _assert_same_metrics(double, single)
