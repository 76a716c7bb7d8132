"""WinClipPlus maths and inputs, with a tiny random open_clip ViT (6 x 6 patches): no weights, no network."""

import logging
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import open_clip
import pytest
import torch
from anomalib.models.image.winclip import torch_model as anomalib_winclip
from PIL import Image

from anomalib_featureridge import WinClipPlus, WinClipPlusModel
from anomalib_featureridge.components import weights as weights_module
from anomalib_featureridge.models.win_clip_plus import clip_loader
from anomalib_featureridge.models.win_clip_plus.prompting import TEMPLATES, compose_prompts
from anomalib_featureridge.models.win_clip_plus.windows import (
    coverage_matrix,
    harmonic_aggregation,
    window_patch_index,
)


@pytest.fixture
def model(tiny_clip: dict[str, Path]) -> WinClipPlusModel:
    built = WinClipPlusModel(backbone=str(tiny_clip["config"]), pretrained=str(tiny_clip["checkpoint"])).eval()
    built.set_class_name("bottle")
    return built


def test_windows_cover_the_grid_in_row_major_order() -> None:
    index = window_patch_index((4, 4), 2)
    assert index.shape == (9, 4)
    assert index[0].tolist() == [0, 1, 4, 5]
    assert index[-1].tolist() == [10, 11, 14, 15]
    strided = window_patch_index((5, 5), 2, stride=2)  # starts 0, 2 and the last one, 3
    assert strided.shape == (9, 4)
    assert coverage_matrix(strided, 25).sum(dim=0).min() >= 1, "every patch is in some window"


def test_harmonic_aggregation_equals_a_direct_computation() -> None:
    index = window_patch_index((5, 4), 3)
    scores = torch.rand(2, index.shape[0]) + 0.01
    aggregated = harmonic_aggregation(scores, coverage_matrix(index, 20))
    for image in range(2):
        for patch in range(20):
            covering = [window for window in range(index.shape[0]) if patch in index[window].tolist()]
            expected = len(covering) / sum(1.0 / scores[image, window].item() for window in covering)
            assert aggregated[image, patch].item() == pytest.approx(expected, rel=1e-6)


def test_a_zero_window_score_gives_zero_not_nan() -> None:
    index = window_patch_index((3, 3), 2)
    aggregated = harmonic_aggregation(torch.tensor([[0.0, 0.5, 0.5, 0.5]]), coverage_matrix(index, 9))
    assert aggregated[0, 0].item() == pytest.approx(0.0, abs=1e-9)
    assert aggregated[0, 8].item() == pytest.approx(0.5)
    assert torch.isfinite(aggregated).all()


def test_prompt_ensemble_is_states_times_templates() -> None:
    normal, anomalous = compose_prompts("screw")
    assert len(TEMPLATES) == 22
    assert len(set(TEMPLATES)) == 22
    assert len(normal) == 7 * 22
    assert len(anomalous) == 4 * 22
    assert "a photo of the flawless screw for visual inspection." in normal
    assert "a cropped photo of a damaged screw." in anomalous


def test_window_embedding_is_clip_on_the_window_tokens_alone(model: WinClipPlusModel) -> None:
    images = torch.randn(2, 3, 48, 48)
    _, _, window_embeddings = model.encoder(images)
    visual = model.encoder.visual
    tokens = model.encoder.embed_tokens(images)
    window = 7  # 2x2 windows on 6 x 6 patches: window 7 starts at row 1, column 2
    patches = [1 * 6 + 2, 1 * 6 + 3, 2 * 6 + 2, 2 * 6 + 3]
    sequence = tokens[:, [0, *(patch + 1 for patch in patches)]]
    direct = visual.transformer(sequence.transpose(0, 1)).transpose(0, 1)
    expected = visual.ln_post(direct[:, 0]) @ visual.proj
    torch.testing.assert_close(window_embeddings[0][:, window], expected, atol=1e-5, rtol=1e-5)


def test_zero_shot_shapes_and_image_score(model: WinClipPlusModel) -> None:
    images = torch.randn(3, 3, 48, 48)
    output = model(images)
    assert output.pred_score.shape == (3,)
    assert output.anomaly_map.shape == (3, 1, 48, 48)
    assert ((output.anomaly_map > 0) & (output.anomaly_map < 1)).all()
    image_embeddings = model.encoder(images)[0]
    similarity = torch.nn.functional.normalize(image_embeddings, dim=-1) @ model.text_embeddings.T
    expected = torch.sigmoid((similarity[:, 1] - similarity[:, 0]) / model.temperature)  # two-way softmax
    torch.testing.assert_close(output.pred_score, expected)


def test_few_shot_combination_rules(model: WinClipPlusModel) -> None:
    references = torch.randn(2, 3, 48, 48)
    model.set_reference_images(references)
    assert model.k_shot == 2
    few_shot_on_references = model.few_shot_map(*model.encoder(references)[1:])
    assert few_shot_on_references.abs().max() < 1e-5, "a reference image is at distance 0 from itself"
    images = torch.randn(2, 3, 48, 48)
    image_embeddings, patch_tokens, windows = model.encoder(images)
    zero_score, zero_map = model.zero_shot_maps(image_embeddings, windows)
    few_map = model.few_shot_map(patch_tokens, windows)
    output = model(images)
    torch.testing.assert_close(output.pred_score, (zero_score + few_map.amax(dim=1)) / 2)
    patch_map = ((zero_map + few_map) / 2).reshape(2, 1, 6, 6)
    torch.testing.assert_close(
        output.anomaly_map, torch.nn.functional.interpolate(patch_map, size=(48, 48), mode="bilinear")
    )


def test_few_shot_association_map_equals_anomalib_winclip(model: WinClipPlusModel) -> None:
    """Same CLIP image weights in anomalib's WinClipModel: the WinCLIP+ visual association maps agree to 1e-5."""
    clip = open_clip.create_model("tiny-clip")
    clip.visual.load_state_dict(model.encoder.visual.state_dict())
    with mock.patch.object(anomalib_winclip.open_clip, "create_model_and_transforms", return_value=(clip, None, None)):
        reference_model = anomalib_winclip.WinClipModel(scales=(2, 3)).eval()
    references, images = torch.randn(3, 3, 48, 48), torch.randn(2, 3, 48, 48)
    reference_model.setup("bottle", references)
    model.set_reference_images(references)
    with torch.no_grad():
        _, windows, patches = reference_model.encode_image(images)
        expected = reference_model._compute_few_shot_scores(patches, windows)
    ours = model.few_shot_map(*model.encoder(images)[1:]).reshape(expected.shape)
    assert expected.std() > 1e-3, "the maps must vary for the comparison to mean something"
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_speed_option_runs_fewer_windows(tiny_clip: dict[str, Path]) -> None:
    fast = WinClipPlusModel(backbone=str(tiny_clip["config"]), pretrained=None, window_stride=2)
    assert [index.shape[0] for index in fast.encoder.window_tokens()] == [
        9,
        9,
    ]  # paper: 25 and 16 (starts 0, 2, 4 and 0, 2, 3)
    fast.set_class_name("bottle")
    assert fast(torch.randn(1, 3, 48, 48)).anomaly_map.shape == (1, 1, 48, 48)


def test_missing_class_name_falls_back_to_object_and_logs(
    tiny_clip: dict[str, Path], model: WinClipPlusModel, caplog: pytest.LogCaptureFixture
) -> None:
    generic = WinClipPlusModel(backbone=str(tiny_clip["config"]), pretrained=str(tiny_clip["checkpoint"]))
    named = WinClipPlusModel(backbone=str(tiny_clip["config"]), pretrained=str(tiny_clip["checkpoint"]))
    with caplog.at_level(logging.WARNING):
        generic.set_class_name(None)
    named.set_class_name("object")
    assert "generic word 'object'" in caplog.text
    torch.testing.assert_close(generic.text_embeddings, named.text_embeddings)
    assert not torch.allclose(generic.text_embeddings, model.text_embeddings), "the class name must matter"


def _lightning_model(tiny_clip: dict[str, Path], **kwargs: object) -> WinClipPlus:
    return WinClipPlus(backbone=str(tiny_clip["config"]), pretrained=str(tiny_clip["checkpoint"]), **kwargs)


def test_k_shot_larger_than_the_training_set_is_refused(tiny_clip: dict[str, Path]) -> None:
    model = _lightning_model(tiny_clip, k_shot=5)
    items = [SimpleNamespace(image=torch.rand(3, 64, 64)) for _ in range(3)]
    model._trainer = SimpleNamespace(datamodule=SimpleNamespace(train_data=items, category="bottle"))
    with pytest.raises(ValueError, match=r"k_shot=5 .* the training set has only 3"):
        model.on_test_start()


def test_references_first_k_or_seeded_or_from_a_folder(tiny_clip: dict[str, Path], tmp_path: Path) -> None:
    items = [SimpleNamespace(image=torch.full((3, 64, 64), index / 10)) for index in range(6)]
    trainer = SimpleNamespace(datamodule=SimpleNamespace(train_data=items, category="bottle"))
    first = _lightning_model(tiny_clip, k_shot=2)
    first._trainer = trainer
    transform = first.pre_processor.transform
    expected_first = torch.cat([transform(items[index].image.unsqueeze(0)) for index in (0, 1)])
    torch.testing.assert_close(first._reference_images(), expected_first)
    seeded = _lightning_model(tiny_clip, k_shot=2, reference_seed=3)
    seeded._trainer = trainer
    torch.testing.assert_close(seeded._reference_images(), seeded._reference_images())
    chosen = torch.randperm(6, generator=torch.Generator().manual_seed(3))[:2].tolist()
    expected_seeded = torch.cat([transform(items[index].image.unsqueeze(0)) for index in chosen])
    torch.testing.assert_close(seeded._reference_images(), expected_seeded)
    for index in range(2):
        Image.new("RGB", (40, 40), (index * 100, 50, 50)).save(tmp_path / f"normal_{index}.png")
    from_folder = _lightning_model(tiny_clip, k_shot=2, few_shot_source=tmp_path)
    from_folder.on_test_start()
    assert from_folder.model.k_shot == 2
    with pytest.raises(ValueError, match=r"k_shot=3 .* the folder"):
        _lightning_model(tiny_clip, k_shot=3, few_shot_source=tmp_path).on_test_start()


def test_class_name_comes_from_the_datamodule_category(tiny_clip: dict[str, Path]) -> None:
    from_category = _lightning_model(tiny_clip)
    from_category._trainer = SimpleNamespace(datamodule=SimpleNamespace(category="metal_nut"))
    from_category.on_test_start()
    explicit = WinClipPlusModel(backbone=str(tiny_clip["config"]), pretrained=str(tiny_clip["checkpoint"]))
    explicit.set_class_name("metal nut")
    torch.testing.assert_close(from_category.model.text_embeddings, explicit.text_embeddings)
    assert from_category.learning_type.value == "zero_shot"
    assert _lightning_model(tiny_clip, k_shot=1).learning_type.value == "few_shot"


def test_checkpoint_for_another_backbone_is_refused(tiny_clip: dict[str, Path], tmp_path: Path) -> None:
    wider = tmp_path / "wider-clip.json"
    wider.write_text(tiny_clip["config"].read_text().replace('"width": 32, "head_width"', '"width": 64, "head_width"'))
    with pytest.raises(clip_loader.ClipWeightsError, match=r"does not match the open_clip backbone 'wider-clip'"):
        WinClipPlusModel(backbone=str(wider), pretrained=str(tiny_clip["checkpoint"]))
    with pytest.raises(clip_loader.ClipWeightsError, match="not found"):
        WinClipPlusModel(backbone=str(tiny_clip["config"]), pretrained=str(tmp_path / "missing.pt"))


def test_no_weights_and_no_network_fails_fast_with_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_module, "cached_weights", lambda _source: None)
    monkeypatch.setattr(weights_module, "reachable", lambda _host: False)
    build = mock.Mock(side_effect=AssertionError("must not build the model before the weights are known"))
    monkeypatch.setattr(open_clip, "create_model", build)
    with pytest.raises(clip_loader.ClipWeightsError, match=r"cannot be reached.*--model\.pretrained PATH"):
        WinClipPlusModel(backbone="ViT-B-16-plus-240", pretrained="laion400m_e31")
    with pytest.raises(clip_loader.ClipWeightsError, match="no pretrained tag 'no_such_tag'"):
        WinClipPlusModel(backbone="ViT-B-16-plus-240", pretrained="no_such_tag")
    with pytest.raises(ValueError, match="Unknown open_clip backbone"):
        WinClipPlusModel(backbone="ViT-Nope", pretrained=None)


def test_inference_needs_no_text_tower(model: WinClipPlusModel) -> None:
    names = set(model.state_dict())
    saved_buffers = {"text_embeddings", "reference_patches", "reference_windows_2", "reference_windows_3"}
    assert {name for name in names if not name.startswith("encoder.visual.")} == saved_buffers
    assert model._text_side is None
    with pytest.raises(RuntimeError, match="text tower was released"):
        model.set_class_name("screw")


def _reproduce_tool():
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "tools" / "reproduce_winclip_paper.py"
    spec = importlib.util.spec_from_file_location("reproduce_winclip_paper", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_reproduction_fails_clearly_without_dataset_or_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = _reproduce_tool()
    with pytest.raises(SystemExit, match=r"MVTec AD not found under .*pass --root"):
        tool.main(["--root", str(tmp_path), "--categories", "bottle"])
    (tmp_path / "bottle" / "test").mkdir(parents=True)
    monkeypatch.setattr(weights_module, "cached_weights", lambda _source: None)
    monkeypatch.setattr(weights_module, "reachable", lambda _host: False)
    with pytest.raises(SystemExit, match=r"cannot be reached.*--pretrained PATH"):
        tool.main(["--root", str(tmp_path), "--categories", "bottle"])
    with pytest.raises(SystemExit, match="checkpoint file not found"):
        tool.main(["--root", str(tmp_path), "--categories", "bottle", "--pretrained", str(tmp_path / "w.pt")])
