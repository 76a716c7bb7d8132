"""FeatureRidge through anomalib's Engine: metrics, checkpoints and bad training sets."""

import shutil
from pathlib import Path

import pytest
import timm
import torch
from anomalib.data import MVTecAD, PredictDataset
from anomalib.data.datasets import MVTecADDataset
from anomalib.engine import Engine
from conftest import SMALL_BACKBONE, SMALL_LAYERS

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.models.feature_ridge.lightning_model import TRAINED_WITH_KEY


def _model(**kwargs: object) -> FeatureRidge:
    torch.manual_seed(0)
    options = {"backbone": SMALL_BACKBONE, "layers": list(SMALL_LAYERS), "pre_trained": False, "visualizer": False}
    options.update(kwargs)
    return FeatureRidge(**options)


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="synthetic", train_batch_size=4, eval_batch_size=8, num_workers=0)


def _engine(tmp_path: Path) -> Engine:
    return Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, accelerator="cpu")


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureRidge, Engine, list[dict]]:
    tmp_path = tmp_path_factory.mktemp("engine")
    model, engine = _model(), _engine(tmp_path)
    engine.fit(model=model, datamodule=_datamodule(synthetic_root))
    results = engine.test(model=model, datamodule=_datamodule(synthetic_root), verbose=False)
    return model, engine, results


def test_reports_image_auroc_pixel_auroc_and_aupro(trained) -> None:
    _, _, results = trained
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(results[0])
    assert results[0]["pixel_AUROC"] > 0.6


def test_checkpoint_round_trip_gives_identical_scores(trained, synthetic_root: Path, tmp_path: Path) -> None:
    model, engine, _ = trained
    path = tmp_path / "model.ckpt"
    engine.trainer.save_checkpoint(path)
    restored = FeatureRidge.load_from_checkpoint(path, map_location="cpu").eval()
    images = torch.rand(2, 3, 96, 96)
    model.eval()
    original, loaded = model.model(images), restored.model(images)
    torch.testing.assert_close(loaded.anomaly_map, original.anomaly_map, rtol=0, atol=0)
    torch.testing.assert_close(loaded.pred_score, original.pred_score, rtol=0, atol=0)
    assert restored.model.head.statistics.count == model.model.head.statistics.count


def test_fitted_is_one_flag_and_old_checkpoints_with_the_mixin_flag_load(trained, tmp_path: Path) -> None:
    model, engine, _ = trained
    assert "_is_fitted" not in model.state_dict(), "whether the model is fitted lives in model.fitted only"
    path = tmp_path / "model.ckpt"
    engine.trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["state_dict"]["_is_fitted"] = torch.tensor([True])  # as written while FeatureRidge used MemoryBankMixin
    torch.save(checkpoint, path)
    restored = FeatureRidge.load_from_checkpoint(path, map_location="cpu").eval()
    assert bool(restored.model.fitted)
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(restored.model(images).anomaly_map, model.eval().model(images).anomaly_map)


def test_a_second_epoch_does_not_count_the_images_twice(synthetic_root: Path, tmp_path: Path) -> None:
    from lightning.pytorch import Trainer

    once, twice = _model(), _model()
    dataset = MVTecADDataset(root=synthetic_root, category="synthetic")
    for model, epochs in ((once, 1), (twice, 2)):
        trainer = Trainer(
            max_epochs=epochs,
            logger=False,
            enable_progress_bar=False,
            accelerator="cpu",
            default_root_dir=tmp_path,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(model, train_dataloaders=_loader(dataset))
    assert float(twice.model.head.statistics.count) == float(once.model.head.statistics.count)
    torch.testing.assert_close(twice.model.head.weight, once.model.head.weight, rtol=0, atol=0)


def test_checkpoint_loads_without_the_original_weights_file(synthetic_root: Path, tmp_path: Path) -> None:
    weights = tmp_path / "r18.pth"
    torch.save(timm.create_model(SMALL_BACKBONE, pretrained=False).state_dict(), weights)
    model, engine = _model(backbone_weights=str(weights)), _engine(tmp_path)
    engine.fit(model=model, datamodule=_datamodule(synthetic_root))
    engine.trainer.save_checkpoint(tmp_path / "model.ckpt")
    weights.unlink()
    restored = FeatureRidge.load_from_checkpoint(tmp_path / "model.ckpt").eval()
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(restored.model(images).anomaly_map, model.eval().model(images).anomaly_map)


def test_checkpoint_of_another_backbone_is_refused(trained, tmp_path: Path) -> None:
    _, engine, _ = trained
    engine.trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=False)
    other = FeatureRidge(backbone="resnet34", layers=list(SMALL_LAYERS), pre_trained=False)
    with pytest.raises(ValueError, match=r"trained with backbone='resnet18'.*configured with backbone='resnet34'"):
        other.on_load_checkpoint(checkpoint)


def test_load_from_checkpoint_with_another_backbone_is_refused(trained, tmp_path: Path) -> None:
    # Lightning writes keyword overrides into the checkpoint's hyper-parameters before the check runs.
    _, engine, _ = trained
    engine.trainer.save_checkpoint(tmp_path / "model.ckpt")
    with pytest.raises(ValueError, match=r"trained with backbone='resnet18'.*configured with backbone='resnet34'"):
        FeatureRidge.load_from_checkpoint(tmp_path / "model.ckpt", backbone="resnet34")


def test_checkpoint_of_another_rank_is_refused_naming_the_setting(trained, tmp_path: Path) -> None:
    _, engine, _ = trained
    engine.trainer.save_checkpoint(tmp_path / "model.ckpt")
    with pytest.raises(ValueError, match=r"trained with .*rank=None.*configured with .*rank=16.*--model\.rank"):
        FeatureRidge.load_from_checkpoint(tmp_path / "model.ckpt", rank=16, head="paper")


def test_checkpoint_from_before_the_rank_option_loads_as_full_rank(trained, tmp_path: Path) -> None:
    _, engine, _ = trained
    engine.trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=False)
    del checkpoint[TRAINED_WITH_KEY]["rank"]
    checkpoint["hyper_parameters"].pop("rank")
    _model().on_load_checkpoint(checkpoint)
    with pytest.raises(ValueError, match=r"rank=None.*rank=16"):
        _model(rank=16, head="paper").on_load_checkpoint(checkpoint)


def test_low_rank_checkpoint_round_trip(synthetic_root: Path, tmp_path: Path) -> None:
    model, engine = _model(rank=16, head="paper"), _engine(tmp_path)
    engine.fit(model=model, datamodule=_datamodule(synthetic_root))
    engine.trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = FeatureRidge.load_from_checkpoint(tmp_path / "model.ckpt").eval()
    assert restored.model.settings["rank"] == 16
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(restored.model(images).anomaly_map, model.eval().model(images).anomaly_map)


def test_dropping_statistics_shrinks_the_checkpoint(synthetic_root: Path, tmp_path: Path) -> None:
    sizes = {}
    for keep in (True, False):
        model, engine = _model(keep_statistics=keep), _engine(tmp_path / str(keep))
        engine.fit(model=model, datamodule=_datamodule(synthetic_root))
        engine.trainer.save_checkpoint(tmp_path / f"{keep}.ckpt")
        sizes[keep] = (tmp_path / f"{keep}.ckpt").stat().st_size
    # The float64 X^T X alone is (9 * 128)^2 * 8 bytes, about 10.6 MB for resnet18 layer2.
    assert sizes[True] - sizes[False] > 10_000_000


def test_predict_on_a_folder_of_new_images(trained, synthetic_root: Path) -> None:
    model, engine, _ = trained
    folder = synthetic_root / "synthetic" / "test" / "scratch"
    predictions = engine.predict(model=model, dataset=PredictDataset(path=folder))
    assert sum(len(batch.pred_score) for batch in predictions) == len(list(folder.glob("*.png")))


def test_fitting_again_adds_images_and_re_solves(synthetic_root: Path, tmp_path: Path) -> None:
    model = _model(head="paper")
    _engine(tmp_path).fit(model=model, datamodule=_datamodule(synthetic_root))
    first_count, first_weight = float(model.model.head.statistics.count), model.model.head.weight.clone()
    _engine(tmp_path).fit(model=model, datamodule=_datamodule(synthetic_root))
    assert float(model.model.head.statistics.count) == 2 * first_count
    weight, _ = model.model.head.statistics.solve(model.model.settings["alpha"])
    expected = weight.T.reshape(model.model.head.weight.shape).float()
    torch.testing.assert_close(model.model.head.weight, expected)
    assert not torch.equal(model.model.head.weight, first_weight)


def test_fitting_a_two_scale_model_again_adds_images_to_both_heads(synthetic_root: Path, tmp_path: Path) -> None:
    model = _model(head="two_scale")
    _engine(tmp_path).fit(model=model, datamodule=_datamodule(synthetic_root))
    counts = {name: float(sums.count) for name, sums in model.model.head.committed_sums().items()}
    assert set(counts) == {"fine.positions", "coarse.positions"}
    _engine(tmp_path).fit(model=model, datamodule=_datamodule(synthetic_root))
    for name, count in counts.items():
        assert float(model.model.head.get_submodule(name).count) == 2 * count


def test_fitting_again_without_statistics_is_refused(synthetic_root: Path, tmp_path: Path) -> None:
    model = _model(keep_statistics=False)
    _engine(tmp_path).fit(model=model, datamodule=_datamodule(synthetic_root))
    with pytest.raises(RuntimeError, match="keep_statistics=False"):
        _engine(tmp_path).fit(model=model, datamodule=_datamodule(synthetic_root))


def test_empty_training_set_is_a_clear_error(synthetic_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "synthetic", root / "synthetic")
    for image in (root / "synthetic" / "train" / "good").glob("*.png"):
        image.unlink()
    with pytest.raises(ValueError, match="training set of MVTecAD is empty"):
        _engine(tmp_path).fit(model=_model(), datamodule=_datamodule(root))


def test_fit_without_images_names_the_training_set() -> None:
    with pytest.raises(ValueError, match="training set is empty"):
        _model().fit()


class _FailingOnLastImage(MVTecADDataset):
    """The training images, the last of which cannot be read (a corrupt file in the last batch)."""

    def __getitem__(self, index: int):
        if index == len(self) - 1:
            msg = "image file is truncated"
            raise OSError(msg)
        return super().__getitem__(index)


def _loader(dataset: MVTecADDataset) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=dataset.collate_fn)


def test_a_failed_fit_leaves_nothing_behind(synthetic_root: Path, tmp_path: Path) -> None:
    clean = _model()
    _engine(tmp_path).fit(
        model=clean, train_dataloaders=_loader(MVTecADDataset(root=synthetic_root, category="synthetic"))
    )
    model = _model()
    failing = _FailingOnLastImage(root=synthetic_root, category="synthetic")
    with pytest.raises(OSError, match="truncated"):
        _engine(tmp_path).fit(model=model, train_dataloaders=_loader(failing))
    assert model.model.head.statistics.is_empty
    assert not bool(model.model.fitted)
    _engine(tmp_path).fit(
        model=model, train_dataloaders=_loader(MVTecADDataset(root=synthetic_root, category="synthetic"))
    )
    assert float(model.model.head.statistics.count) == float(clean.model.head.statistics.count)
    torch.testing.assert_close(model.model.head.weight, clean.model.head.weight, rtol=0, atol=0)


def test_a_failed_update_keeps_the_fitted_model(synthetic_root: Path, tmp_path: Path) -> None:
    model = _model()
    _engine(tmp_path).fit(model=model, datamodule=_datamodule(synthetic_root))
    count, weight = float(model.model.head.statistics.count), model.model.head.weight.clone()
    with pytest.raises(OSError, match="truncated"):
        _engine(tmp_path).fit(
            model=model, train_dataloaders=_loader(_FailingOnLastImage(root=synthetic_root, category="synthetic"))
        )
    assert float(model.model.head.statistics.count) == count
    torch.testing.assert_close(model.model.head.weight, weight, rtol=0, atol=0)
    _engine(tmp_path).fit(model=model, datamodule=_datamodule(synthetic_root))
    assert float(model.model.head.statistics.count) == 2 * count


def test_bad_settings_are_refused_when_the_model_is_built() -> None:
    with pytest.raises(ValueError, match="alpha must be > 0 and finite"):
        _model(alpha=float("nan"))


def test_checkpoint_from_before_the_head_option_loads_as_the_default_paper_head(
    synthetic_root: Path, tmp_path: Path
) -> None:
    model, engine = _model(), _engine(tmp_path)
    engine.fit(model=model, datamodule=_datamodule(synthetic_root))
    path = tmp_path / "model.ckpt"
    engine.trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    for option in ("head", "reference"):
        del checkpoint[TRAINED_WITH_KEY][option]
        checkpoint["hyper_parameters"].pop(option)
    torch.save(checkpoint, path)
    with pytest.raises(
        ValueError, match=r"trained with .*head='paper'.*configured with .*head='gaussian'.*--model\.head"
    ):
        FeatureRidge.load_from_checkpoint(path, head="gaussian")
    restored = FeatureRidge.load_from_checkpoint(path).eval()
    assert restored.model.settings["head"] == "paper"
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(restored.model(images).anomaly_map, model.eval().model(images).anomaly_map)
    assert restored.model.settings["pool"] == 1, "a checkpoint from before the pool option averaged no features"
    assert restored.model.settings["reference"] == "none", (
        "a checkpoint from before the reference option referred no features"
    )
    # The paper head does not read region: a region given with it is refused, not ignored.
    with pytest.raises(ValueError, match=r"region=3 is read only by the local and two_scale heads"):
        FeatureRidge.load_from_checkpoint(path, region=3)


@pytest.mark.parametrize("head", ["gaussian", "local", "two_scale"])
def test_per_position_checkpoint_gives_its_head_to_a_default_model_and_refuses_another_value(
    head: str, synthetic_root: Path, tmp_path: Path
) -> None:
    model, engine = _model(head=head), _engine(tmp_path)
    engine.fit(model=model, datamodule=_datamodule(synthetic_root))
    path = tmp_path / "model.ckpt"
    engine.trainer.save_checkpoint(path)
    restored = FeatureRidge.load_from_checkpoint(path).eval()  # head left at its default: the checkpoint's wins
    assert restored.model.settings["head"] == head
    images = torch.rand(1, 3, 256, 256)  # the pre-processor's size: these heads keep per-position statistics
    torch.testing.assert_close(restored.model(images).anomaly_map, model.eval().model(images).anomaly_map)
    checkpoint = torch.load(path, weights_only=False)
    if head == "gaussian":
        with pytest.raises(
            ValueError, match=r"trained with .*alpha=1\.0.*configured with .*alpha=2\.0.*--model\.alpha"
        ):
            _model(head=head, alpha=2.0).on_load_checkpoint(checkpoint)
        with pytest.raises(ValueError, match=r"region=3 is read only by the local and two_scale heads"):
            _model(head=head, region=3)
    else:
        with pytest.raises(ValueError, match=r"alpha=2\.0 is read only by the paper and gaussian heads"):
            _model(head=head, alpha=2.0)
        with pytest.raises(ValueError, match=r"trained with .*region=2.*configured with .*region=3.*--model\.region"):
            _model(head=head, region=3).on_load_checkpoint(checkpoint)
    with pytest.raises(ValueError, match=r"trained with .*pool=1.*configured with .*pool=3.*--model\.pool"):
        _model(head=head, pool=3).on_load_checkpoint(checkpoint)


def test_pooled_checkpoint_scores_with_its_pool_when_loaded_with_the_defaults(
    synthetic_root: Path, tmp_path: Path
) -> None:
    model, engine = _model(head="local", pool=3), _engine(tmp_path)
    engine.fit(model=model, datamodule=_datamodule(synthetic_root))
    path = tmp_path / "model.ckpt"
    engine.trainer.save_checkpoint(path)
    restored = FeatureRidge.load_from_checkpoint(path).eval()
    assert restored.model.settings["pool"] == 3
    images = torch.rand(1, 3, 256, 256)
    torch.testing.assert_close(restored.model(images).anomaly_map, model.eval().model(images).anomaly_map)
