"""The head contract, run for every registered head: sums that stream, merge and update exactly, saved and exported."""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.models.feature_ridge import FeatureRidgeModel
from anomalib_featureridge.models.feature_ridge.heads import HEAD_NAMES, head_class
from anomalib_featureridge.models.feature_ridge.heads.base import Head
from anomalib_featureridge.models.feature_ridge.options import OPTIONS

# timm's test network: a few thousand weights, so that every head's contract runs in seconds.
TINY = {"backbone": "test_efficientnet", "layers": ["blocks.2", "blocks.3"], "pre_trained": False, "sigma": 0.0}
SIZE = 48


def _images(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, SIZE // 8, SIZE // 8, generator=generator)
    return F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def _model(head: str, **options: object) -> FeatureRidgeModel:
    torch.manual_seed(0)
    return FeatureRidgeModel(**TINY, head=head, **options).eval()


TEST = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))


def test_every_registered_head_is_a_head_under_its_own_name() -> None:
    for name in HEAD_NAMES:
        assert issubclass(head_class(name), Head)
        assert head_class(name).name == name
    with pytest.raises(ValueError, match="head must be one of"):
        head_class("no-such-head")


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_streaming_in_any_batches_and_order_equals_one_shot(head: str) -> None:
    images = _images(7, seed=1)
    whole, streamed = _model(head), _model(head)
    whole.update(images)
    streamed.update([images[5:], images[2:5], images[:1], images[1:2]])
    assert whole.describe_fit() == streamed.describe_fit()
    torch.testing.assert_close(streamed.patch_scores(TEST), whole.patch_scores(TEST), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_an_update_equals_a_refit_on_all_images(head: str) -> None:
    first, second = _images(4, seed=1), _images(3, seed=2)
    incremental, full = _model(head), _model(head)
    incremental.update(first)
    before = incremental.patch_scores(TEST)
    incremental.update(second)
    full.update(torch.cat([first, second]))
    assert not torch.allclose(before, full.patch_scores(TEST))
    torch.testing.assert_close(incremental.patch_scores(TEST), full.patch_scores(TEST), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_state_dicts_and_pickles_score_as_the_model(head: str, tmp_path: Path) -> None:
    model = _model(head)
    model.update(_images(5, seed=1))
    expected = model(TEST).anomaly_map
    restored = _model(head)
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored(TEST).anomaly_map, expected, rtol=0, atol=0)
    model.accumulate(_images(1, seed=3))  # a fit in progress is neither saved nor pickled
    assert not any("pending" in key for key in model.state_dict())
    torch.save(model, tmp_path / "model.pt")
    unpickled = torch.load(tmp_path / "model.pt", weights_only=False)
    assert not unpickled.has_pending
    torch.testing.assert_close(unpickled(TEST).anomaly_map, expected, rtol=0, atol=0)


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_its_size_is_what_scoring_needs_and_exports_leave_the_sums_out(head: str) -> None:
    model = _model(head)
    model.update(_images(3, seed=1))
    sums = model.head.committed_sums()
    assert sums, "every head fits from sums"
    assert all(not part.is_empty for part in sums.values())
    size = model.head.fitted_bytes()
    state = sum(t.numel() * t.element_size() for t in model.head.state_dict().values())
    assert 0 < size < state
    with model.head.without_statistics():
        assert all(part.is_empty for part in model.head.committed_sums().values())
        assert model.head.fitted_bytes() == size
    assert all(not part.is_empty for part in model.head.committed_sums().values())


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_an_option_the_head_does_not_read_is_refused_naming_the_heads_that_do(head: str) -> None:
    unread = {"alpha": 2.0, "rank": 4, "fit_precision": "float32", "region": 3, "channels": [8, 8]}
    for option in OPTIONS:
        if option.heads is None or head in option.heads:
            continue
        with pytest.raises(ValueError, match=rf"{option.name}=.* is read only by the {option.heads[0]}"):
            _model(head, **{option.name: unread[option.name]})


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_a_state_in_the_layout_before_heads_were_modules_loads(head: str) -> None:
    """Each head's LEGACY_NAMES, read backwards, give the old layout; it loads and scores the same."""
    model = _model(head)
    model.update(_images(3, seed=1))
    renames = {new: old for old, new in type(model.head).LEGACY_NAMES.items() if new is not None}
    old_state = {}
    for key, value in model.state_dict().items():
        name = key.removeprefix("head.")
        for new, old in renames.items():
            if name == new or name.startswith(f"{new}."):
                name = old + name[len(new) :]
                break
        old_state[name] = value
    dropped = [old for old, new in type(model.head).LEGACY_NAMES.items() if new is None and "." not in old]
    old_state.update({name: torch.zeros(1) for name in dropped if name != "statistics"})
    restored = _model(head)
    restored.load_state_dict(old_state)
    torch.testing.assert_close(restored(TEST).anomaly_map, model(TEST).anomaly_map, rtol=0, atol=0)


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_the_onnx_export_scores_as_torch(head: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FeatureRidge(**TINY, head=head, pre_processor=False, visualizer=False)
    model.model.update(_images(4, seed=1))
    model.eval()
    path = model.to_onnx(tmp_path, input_size=(SIZE, SIZE))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {"input": TEST.numpy()}), strict=True)
    )
    expected = model.model(TEST)
    assert abs(outputs["anomaly_map"] - expected.anomaly_map.numpy()).max() <= 1e-4
    assert abs(outputs["pred_score"] - expected.pred_score.numpy()).max() <= 1e-4


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_an_image_with_non_finite_pixels_scores_inf_in_torch_onnx_and_openvino(bad: float, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FeatureRidge(**TINY, head="paper", pre_processor=False, visualizer=False)
    model.model.update(_images(3, seed=1))
    model.eval()
    images = TEST.clone()
    images[1, 0, 4, 7] = bad
    with pytest.warns(UserWarning, match="1 of 2 images have NaN or infinite pixels"):
        output = model.model(images)
    assert torch.isfinite(output.pred_score[0])
    assert output.pred_score[1] == float("inf")
    path = model.to_onnx(tmp_path, input_size=(SIZE, SIZE))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    scores = dict(zip(names, session.run(None, {"input": images.numpy()}), strict=True))["pred_score"]
    assert scores[1] == float("inf")
    assert abs(scores[0] - float(output.pred_score[0])) <= 1e-4
    import openvino

    xml = model.to_openvino(tmp_path / "openvino", input_size=(SIZE, SIZE))
    compiled = openvino.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    results = compiled(images.numpy())
    scores = next(value for key, value in results.items() if "pred_score" in key.names)
    assert scores[1] == float("inf")
    assert abs(scores[0] - float(output.pred_score[0])) <= 1e-4
