"""The local heads' ``channels``: a seeded subset of each map's channels, the head fitted on them, and their limits."""

from pathlib import Path

import pytest
import torch
from conftest import SMALL_BACKBONE, SMALL_LAYERS, small_model
from test_lightning_model import _datamodule, _engine, _model
from test_torch_model import _normal_images

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.models.feature_ridge.channels import channel_subsets
from anomalib_featureridge.models.feature_ridge.local import LocalStatistics, local_scores, solve_local_head
from anomalib_featureridge.models.feature_ridge.maps import upsample_to

KEPT = [48, 96]  # of resnet18's 128 layer2 and 256 layer3 channels


def test_the_subset_is_seeded_sorted_distinct_and_of_the_asked_size() -> None:
    first, again = channel_subsets(KEPT, (128, 256), SMALL_LAYERS), channel_subsets(KEPT, (128, 256), SMALL_LAYERS)
    for indices, same, count, available in zip(first, again, KEPT, (128, 256), strict=True):
        assert torch.equal(indices, same)
        assert indices.numel() == count
        assert torch.equal(indices, indices.unique())  # ascending, no repeats
        assert int(indices.min()) >= 0
        assert int(indices.max()) < available
    assert not torch.equal(first[0], torch.arange(48)), "a random subset, not the first channels"
    every = channel_subsets([128, 256], (128, 256), SMALL_LAYERS)
    assert torch.equal(every[0], torch.arange(128))


def test_the_local_head_on_a_subset_equals_one_fitted_on_those_channels() -> None:
    train, test = _normal_images(6), torch.rand(2, 3, 64, 64)
    model = small_model(head="local", channels=KEPT)
    model.update(train)

    def kept_maps(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shallow, deep = model.feature_extractor(images)
        shallow, deep = shallow[:, model.shallow_channels], deep[:, model.deep_channels]
        return shallow, upsample_to(deep, shallow)

    with torch.no_grad():
        statistics = LocalStatistics(2)
        statistics.update(*kept_maps(train))
        head = {name: value.float() for name, value in solve_local_head(statistics).items()}
        expected = local_scores(*kept_maps(test), head, 2)
        torch.testing.assert_close(model.patch_scores(test), expected, rtol=1e-4, atol=1e-4)
    assert model.head.mean_x.shape[0] == KEPT[0]
    assert model.head.mean_y.shape[0] == KEPT[1]


def test_the_two_scale_head_on_a_subset_is_smaller_and_updates_exactly() -> None:
    first, second, test = _normal_images(4, seed=1), _normal_images(3, seed=2), torch.rand(2, 3, 64, 64)
    incremental, full = small_model(head="two_scale", channels=KEPT), small_model(head="two_scale", channels=KEPT)
    incremental.update(first)
    incremental.update(second)
    full.update(torch.cat([first, second]))
    torch.testing.assert_close(incremental.patch_scores(test), full.patch_scores(test), rtol=1e-4, atol=1e-4)
    every = small_model(head="two_scale")
    every.update(first)
    sizes = [
        sum(t.numel() for name, t in m.state_dict().items() if name.endswith("x_whitening")) for m in (full, every)
    ]
    assert sizes[0] * 6 < sizes[1], "48 of 128 shallow channels: about a seventh of the whitening factors"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"head": "paper", "channels": KEPT},
            r"channels=\[48, 96\] is read only by the local and two_scale heads, not by head='paper'",
        ),
        ({"head": "local", "channels": [48]}, r"\[shallow, deep\].*128 in 'layer2', 256 in 'layer3'.*got \[48\]"),
        ({"head": "local", "channels": [0, 96]}, r"each from 1 to the map's"),
        ({"head": "local", "channels": [48, 257]}, r"256 in 'layer3'"),
        ({"head": "local", "channels": [48.0, 96]}, r"got \[48\.0, 96\]"),
    ],
)
def test_channels_are_refused_where_they_do_not_apply(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeatureRidge(backbone=SMALL_BACKBONE, layers=list(SMALL_LAYERS), pre_trained=False, **options)


def test_a_checkpoint_keeps_its_subset_and_refuses_another(synthetic_root: Path, tmp_path: Path) -> None:
    model, engine = _model(head="local", channels=KEPT), _engine(tmp_path)
    engine.fit(model=model, datamodule=_datamodule(synthetic_root))
    path = tmp_path / "model.ckpt"
    engine.trainer.save_checkpoint(path)
    restored = FeatureRidge.load_from_checkpoint(path).eval()  # channels left at the default: the checkpoint's win
    assert restored.model.settings["channels"] == KEPT
    assert torch.equal(restored.model.shallow_channels, model.model.shallow_channels)
    images = torch.rand(1, 3, 256, 256)
    torch.testing.assert_close(restored.model(images).anomaly_map, model.eval().model(images).anomaly_map)
    checkpoint = torch.load(path, weights_only=False)
    with pytest.raises(ValueError, match=r"trained with .*channels=\[48, 96\].*configured with .*--model\.channels"):
        _model(head="local", channels=[32, 64]).on_load_checkpoint(checkpoint)
