"""SyntheticDefectMetric: heads, scorers, synthetic batches, training, checkpoints and exports."""

from __future__ import annotations

import math
import subprocess
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import openvino
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from sklearn.neighbors import LocalOutlierFactor
from torch.nn import functional as F  # noqa: N812

from anomalib_featureridge import SyntheticDefectMetric
from anomalib_featureridge.data.defects import ObjectRegionFinder, add_defects_to_batch
from anomalib_featureridge.models.synthetic_defect_metric.heads import (
    AdaCosHead,
    ArcFaceHead,
    L2SoftmaxHead,
    SoftmaxHead,
    make_head,
)
from anomalib_featureridge.models.synthetic_defect_metric.scoring import EmbeddingBank
from anomalib_featureridge.models.synthetic_defect_metric.torch_model import SyntheticDefectMetricModel

BACKBONE = "resnet18"
IMAGE_SIZE = (64, 64)
TOLERANCE = 1e-4


def tiny_model(**kwargs: object) -> SyntheticDefectMetric:
    torch.manual_seed(0)
    options = {
        "backbone": BACKBONE,
        "pre_trained": False,
        "visualizer": False,
        "n_neighbors": 3,
        "pre_processor": SyntheticDefectMetric.configure_pre_processor(IMAGE_SIZE),
    }
    options.update(kwargs)
    return SyntheticDefectMetric(**options)


# --- heads -------------------------------------------------------------------------------------


def _head_with_directions(head_class: type, cosines: list[float]) -> tuple[torch.nn.Module, torch.Tensor]:
    """A 2-D head whose class weights make the given cosines with the embedding (1, 0)."""
    head = head_class(2, len(cosines))
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[c, math.sqrt(1 - c * c)] for c in cosines]) * 3.0)  # norm must not matter
    return head, torch.tensor([[2.0, 0.0]])


def test_arcface_adds_the_angular_margin_to_the_true_class_only() -> None:
    head, embedding = _head_with_directions(ArcFaceHead, [0.6, 0.2, -0.5])
    logits = head.logits(embedding, torch.tensor([0]))
    expected = [64 * math.cos(math.acos(0.6) + 0.5), 64 * 0.2, 64 * -0.5]
    np.testing.assert_allclose(logits[0].detach().numpy(), expected, rtol=1e-5)
    # Past pi - m the margin cannot be added as an angle: the logit continues as cos - m sin(m).
    head, embedding = _head_with_directions(ArcFaceHead, [-0.95, 0.3])
    logits = head.logits(embedding, torch.tensor([0]))
    np.testing.assert_allclose(float(logits[0, 0].detach()), 64 * (-0.95 - 0.5 * math.sin(0.5)), rtol=1e-5)


def test_adacos_scale_follows_the_papers_update() -> None:
    head, _ = _head_with_directions(AdaCosHead, [0.6, 0.2, -0.5])
    embeddings = torch.tensor([[2.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 2])
    initial = math.sqrt(2) * math.log(2)
    assert float(head.scale) == pytest.approx(initial)
    cosine = F.linear(F.normalize(embeddings), F.normalize(head.weight)).detach()
    others = torch.exp(initial * cosine) * (1 - F.one_hot(labels, 3))
    theta = torch.acos(cosine[torch.arange(3), labels])
    expected = math.log(float(others.sum(1).mean())) / math.cos(min(math.pi / 4, float(theta.median())))
    head.train()
    logits = head.logits(embeddings, labels)
    assert float(head.scale) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(logits.detach().numpy(), (expected * cosine).numpy(), rtol=1e-5)
    head.eval()
    head.logits(embeddings, labels)
    assert float(head.scale) == pytest.approx(expected, rel=1e-5), "the scale only moves in training"


def test_adacos_with_one_defect_kind_is_refused_before_training() -> None:
    with pytest.raises(ValueError, match=r"loss='adacos' needs at least two defect kinds \(2 classes given\)"):
        AdaCosHead(4, 2)
    with pytest.raises(ValueError, match="Use defect_kinds with two kinds"):
        SyntheticDefectMetric(backbone=BACKBONE, pre_trained=False, loss="adacos", defect_kinds=["line"])
    assert float(AdaCosHead(4, 3).scale) == pytest.approx(math.sqrt(2.0) * math.log(2.0))


def test_l2_softmax_normalises_the_embedding_to_alpha() -> None:
    head = L2SoftmaxHead(3, 2)
    embedding = torch.tensor([[3.0, 4.0, 0.0]])
    expected = F.linear(16 * embedding / 5, head.weight, head.bias)
    torch.testing.assert_close(head.logits(embedding * 7, torch.tensor([0])), expected * 1.0)
    torch.testing.assert_close(head.logits(embedding, torch.tensor([0])), expected)


@pytest.mark.parametrize("loss", ["softmax", "l2_softmax", "arcface", "adacos"])
def test_class_maps_average_to_the_logit_without_margin(loss: str) -> None:
    torch.manual_seed(0)
    head = make_head(loss, 8, 3)
    features = torch.rand(2, 8, 5, 4)
    pooled = features.mean(dim=(2, 3))
    maps = head.class_maps(features).mean(dim=(2, 3))
    if isinstance(head, SoftmaxHead | L2SoftmaxHead):
        expected = head.logits(pooled, torch.tensor([0, 0]))
    else:
        expected = head.cosines(pooled)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-5)


def test_unknown_loss_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"Unknown loss 'triplet'; choose from \('softmax', 'l2_softmax'"):
        SyntheticDefectMetric(backbone=BACKBONE, pre_trained=False, loss="triplet")


# --- scorers -----------------------------------------------------------------------------------


def test_cosine_score_is_one_minus_the_nearest_cosine() -> None:
    generator = torch.Generator().manual_seed(0)
    bank_vectors, queries = torch.randn(30, 6, generator=generator), torch.randn(7, 6, generator=generator)
    bank = EmbeddingBank(6)
    bank.fit(bank_vectors)
    expected = [
        1 - max(float(F.cosine_similarity(query, vector, dim=0)) for vector in bank_vectors) for query in queries
    ]
    np.testing.assert_allclose(bank.cosine_score(queries).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("n_neighbors", [1, 5, 20])
def test_lof_matches_scikit_learn(n_neighbors: int) -> None:
    generator = torch.Generator().manual_seed(1)
    bank_vectors = torch.randn(40, 6, generator=generator)
    queries = torch.cat([torch.randn(10, 6, generator=generator), bank_vectors[:3]])
    bank = EmbeddingBank(6, n_neighbors=n_neighbors)
    bank.fit(bank_vectors)
    reference = LocalOutlierFactor(n_neighbors=n_neighbors, novelty=True).fit(F.normalize(bank_vectors).numpy())
    expected = -reference.score_samples(F.normalize(queries).numpy())
    np.testing.assert_allclose(bank.lof_score(queries).numpy(), expected, rtol=1e-4)


def test_max_embeddings_keeps_a_seeded_subset() -> None:
    vectors = F.normalize(torch.randn(50, 4))
    first, second, other = EmbeddingBank(4), EmbeddingBank(4), EmbeddingBank(4)
    first.fit(vectors, max_embeddings=10, seed=3)
    second.fit(vectors, max_embeddings=10, seed=3)
    other.fit(vectors, max_embeddings=10, seed=4)
    assert first.embeddings.shape == (10, 4)
    torch.testing.assert_close(first.embeddings, second.embeddings)
    assert not torch.equal(first.embeddings, other.embeddings)
    assert all(any(torch.allclose(row, vector) for vector in vectors) for row in first.embeddings)


def test_lof_with_too_few_embeddings_is_refused() -> None:
    bank = EmbeddingBank(4, n_neighbors=5)
    bank.fit(torch.randn(5, 4))
    bank.cosine_score(torch.randn(2, 4))  # cosine needs no neighbours
    with pytest.raises(ValueError, match=r"n_neighbors=5 needs at least 6 good training embeddings, but there are 5"):
        bank.lof_score(torch.randn(2, 4))


def test_bank_loads_into_an_empty_one() -> None:
    bank = EmbeddingBank(4, n_neighbors=2)
    bank.fit(torch.randn(9, 4))
    restored = EmbeddingBank(4, n_neighbors=2)
    restored.load_state_dict(bank.state_dict())
    queries = torch.randn(3, 4)
    torch.testing.assert_close(restored.lof_score(queries), bank.lof_score(queries))


# --- synthetic batches -------------------------------------------------------------------------


def _objects(count: int, size: int = 64) -> torch.Tensor:
    """Dark images with a bright textured square in the middle (the object) at a varying place."""
    generator = torch.Generator().manual_seed(0)
    images = torch.full((count, 3, size, size), 0.1)
    for index in range(count):
        offset = 16 + index % 3
        images[index, :, offset : offset + 30, offset : offset + 30] = 0.6 + 0.3 * torch.rand(
            3, 30, 30, generator=generator
        )
    return images


def test_synthetic_batch_carries_the_right_labels_and_stays_in_the_object() -> None:
    model = tiny_model()
    images = _objects(4)
    arrays = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    model.region_finder = ObjectRegionFinder.from_images(list(arrays) + [np.full_like(arrays[0], 26)] * 4)
    samples, labels, masks = model.synthetic_batch(images)
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    quantised = (images * 255).round() / 255
    torch.testing.assert_close(samples[:4], quantised, rtol=0, atol=1e-6)
    assert not masks[:4].any()
    for index in range(4, 12):
        changed = (samples[index] - quantised[index % 4]).abs().amax(dim=0) > 1e-6
        assert changed.any(), "every defective sample differs from its good image"
        assert torch.equal(changed, masks[index, 0]), "the mask is exactly the changed pixels"
        region = torch.from_numpy(model.region_finder(arrays[index % 4]))
        assert not (changed & ~region).any(), "defects stay inside the object"


def test_defect_batches_refuse_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="too small for synthetic defects"):
        add_defects_to_batch(torch.rand(1, 3, 24, 64), ["line"], rng)
    with pytest.raises(ValueError, match="normalised before the defects"):
        add_defects_to_batch(torch.randn(1, 3, 64, 64), ["line"], rng)
    with pytest.raises(ValueError, match=r"Unknown defect kind \['scratch'\]; choose from"):
        add_defects_to_batch(torch.rand(1, 3, 64, 64), ["scratch"], rng)


def test_defect_batches_accept_a_resize_overshoot_and_clip_it() -> None:
    # An antialiased resize of a uint8 image can land a rounding error above 1 (magnetic_tile did).
    images = torch.rand(2, 3, 64, 64)
    images[0, 0, 0, 0], images[1, 0, 0, 0] = 1.0 + 1e-6, -0.02
    defective, masks = add_defects_to_batch(images, [None, "line"], np.random.default_rng(0))
    assert float(defective.min()) >= 0.0
    assert float(defective.max()) <= 1.0
    assert float(defective[0, 0, 0, 0]) == 1.0
    assert not masks[0].any()
    assert masks[1].any()


def test_no_object_region_falls_back_to_the_whole_image_with_a_warning() -> None:
    image = np.full((64, 64, 3), 120, dtype=np.uint8)
    finder = ObjectRegionFinder.from_images([image, image])
    with pytest.warns(UserWarning, match="No object region stands out"):
        region = finder(image)
    assert region.all()


def test_bad_model_settings_are_refused_with_the_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"defect_kinds must be distinct names from \('line', 'distortion', 'perlin'"):
        SyntheticDefectMetric(backbone=BACKBONE, pre_trained=False, defect_kinds=["line", "crack"])
    with pytest.raises(ValueError, match=r"Unknown scorer 'knn'; choose from \('cosine', 'lof'\)"):
        SyntheticDefectMetric(backbone=BACKBONE, pre_trained=False, scorer="knn")
    with pytest.raises(ValueError, match=r"has no module \['layer9'\] to fine-tune. Its modules are: \['conv1'"):
        SyntheticDefectMetric(backbone=BACKBONE, pre_trained=False, trainable_blocks=["layer9"])


def test_only_the_chosen_blocks_are_fine_tuned() -> None:
    model = SyntheticDefectMetricModel(backbone=BACKBONE, pre_trained=False, trainable_blocks=["layer4"])
    model.train()
    trainable = {name.split(".")[0] for name, p in model.feature_extractor.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}
    assert not model.feature_extractor.bn1.training, "frozen batch norms keep their statistics"
    assert model.feature_extractor.layer4[0].bn1.training
    assert all(parameter.requires_grad for parameter in model.head.parameters())


def test_training_decreases_the_loss_on_a_tiny_set() -> None:
    model = tiny_model(loss="arcface", learning_rate=1e-3)
    images = _objects(4)
    samples, labels, _ = model.synthetic_batch(images)
    optimiser = model.configure_optimizers()
    model.model.train()
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = F.cross_entropy(model.model.training_logits(samples, labels), labels)
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    assert isinstance(optimiser, torch.optim.Adam)
    assert losses[-1] < 0.5 * losses[0], losses


# --- Grad-CAM ----------------------------------------------------------------------------------


def _grad_cam_model(loss: str, grad_cam_layer: str | None) -> SyntheticDefectMetricModel:
    torch.manual_seed(0)
    model = SyntheticDefectMetricModel(
        backbone=BACKBONE, pre_trained=False, loss=loss, anomaly_map="grad_cam", grad_cam_layer=grad_cam_layer
    )
    with torch.no_grad():
        if hasattr(model.head, "bias"):
            model.head.bias.normal_()
    return model.double().eval()


def test_grad_cam_at_the_embedding_layer_of_a_linear_head_is_its_relu_cam_without_bias() -> None:
    """With logits ``W mean(A) + b`` the gradient is ``(W_k - W_good) / hw`` everywhere: Grad-CAM is CAM rescaled."""
    model = _grad_cam_model("softmax", None)
    images = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    features, grad_cam = model.grad_cam_maps(images)
    cams = model.head.class_maps(features)
    bias = model.head.bias
    positions = features.shape[2] * features.shape[3]
    expected = ((cams[:, 1:] - cams[:, :1] - (bias[1:] - bias[:1])[None, :, None, None]) / positions).clamp_min(0)
    expected = F.interpolate(expected.amax(dim=1, keepdim=True), size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(grad_cam, expected)


def test_grad_cam_at_a_shallower_layer_matches_finite_differences() -> None:
    """Each channel's weight is the evidence's derivative when that channel moves by ``t`` at every position / hw."""
    model = _grad_cam_model("arcface", "layer3")
    images = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    _, grad_cam = model.grad_cam_maps(images)
    weighed = model.feature_maps(images)[0].detach()
    channels, positions = weighed.shape[1], weighed.shape[2] * weighed.shape[3]
    shift = {"channel": 0, "step": 0.0}

    def shifted(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        del module, inputs
        output = output.clone()
        output[:, shift["channel"]] += shift["step"]
        return output

    def evidence(channel: int, step: float) -> torch.Tensor:
        shift.update(channel=channel, step=step)
        logits = model.head.class_maps(model.features(images)).mean(dim=(2, 3))
        return logits[0, 1:] - logits[0, :1]

    handle = model.feature_extractor.layer3.register_forward_hook(shifted)
    step = 1e-5
    with torch.no_grad():
        derivatives = torch.stack([(evidence(c, step) - evidence(c, -step)) / (2 * step) for c in range(channels)])
    handle.remove()
    weights = derivatives.T[:, :, None, None] / positions  # (defect classes, channels, 1, 1)
    expected = (weights[None] * weighed[:, None]).sum(dim=2).clamp_min(0).amax(dim=1, keepdim=True)
    expected = F.interpolate(expected, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(grad_cam, expected, rtol=1e-6, atol=1e-9)


def test_grad_cam_runs_inside_inference_mode_and_leaves_the_parameters_alone() -> None:
    model = _grad_cam_model("adacos", "layer2").float()
    model.bank.fit(torch.randn(5, model.head.weight.shape[1]))
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        output = model(images)
    assert output.anomaly_map.shape == (2, 1, 64, 64)
    assert bool((output.anomaly_map >= 0).all())
    assert bool(output.anomaly_map.isfinite().all())
    assert bool((output.anomaly_map > 0).any())
    assert all(parameter.grad is None for parameter in model.parameters())
    cam = SyntheticDefectMetricModel(backbone=BACKBONE, pre_trained=False, loss="adacos")
    cam.load_state_dict(model.state_dict())  # the same weights: the map option adds no state
    with torch.inference_mode():
        torch.testing.assert_close(cam.eval()(images).pred_score, output.pred_score, msg="the map does not move scores")


def test_grad_cam_settings_are_checked_and_its_export_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Unknown anomaly_map 'gradcam'; choose from \('cam', 'grad_cam'\)"):
        SyntheticDefectMetricModel(backbone=BACKBONE, pre_trained=False, anomaly_map="gradcam")
    with pytest.raises(ValueError, match=r"grad_cam_layer 'layer4' must be the embedding layer 'layer3' or one before"):
        SyntheticDefectMetricModel(backbone=BACKBONE, pre_trained=False, layer="layer3", grad_cam_layer="layer4")
    model = tiny_model(anomaly_map="grad_cam")
    model.model.bank.fit(torch.randn(5, model.model.head.weight.shape[1]))
    with pytest.raises(RuntimeError, match=r"cannot be exported\. Export with anomaly_map='cam'"):
        model.to_onnx(tmp_path)


# --- training, checkpoints, exports ------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small model trained for 2 epochs through the engine, its checkpoint and its exports."""
    workdir = tmp_path_factory.mktemp("synthetic_defect_metric")
    model = tiny_model(max_epochs=2)
    datamodule = MVTecAD(
        root=synthetic_root, category="synthetic", train_batch_size=6, eval_batch_size=8, num_workers=0
    )
    engine = Engine(default_root_dir=workdir, logger=False, enable_progress_bar=False, accelerator="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine.fit(model=model, datamodule=datamodule)
    checkpoint = workdir / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    model.eval()
    images = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))[:6]
    return {"model": model, "engine": engine, "checkpoint": checkpoint, "images": images, "workdir": workdir}


def _batch(paths: list[Path]) -> torch.Tensor:
    return torch.stack([read_image(path, as_tensor=True) for path in paths])


def _pipeline(model: SyntheticDefectMetric, batch: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        output = model(batch)
    return {key: value.numpy() for key, value in output._asdict().items() if value is not None}


def test_training_stores_one_good_embedding_per_image(trained: dict, synthetic_root: Path) -> None:
    bank = trained["model"].model.bank
    assert bank.embeddings.shape[0] == len(list((synthetic_root / "synthetic" / "train" / "good").glob("*.png")))
    torch.testing.assert_close(bank.embeddings.norm(dim=1), torch.ones(bank.embeddings.shape[0]))
    assert trained["engine"].trainer.current_epoch == 2


def test_checkpoint_round_trip_gives_the_same_scores(trained: dict) -> None:
    restored = SyntheticDefectMetric.load_from_checkpoint(trained["checkpoint"]).eval()
    batch = _batch(trained["images"])
    reference, candidate = _pipeline(trained["model"], batch), _pipeline(restored, batch)
    for key in ("pred_score", "anomaly_map"):
        np.testing.assert_allclose(candidate[key], reference[key], atol=1e-6)


def test_a_checkpoint_loads_with_grad_cam_maps_and_the_same_scores(trained: dict) -> None:
    restored = SyntheticDefectMetric.load_from_checkpoint(
        trained["checkpoint"], anomaly_map="grad_cam", grad_cam_layer="layer3"
    ).eval()
    batch = _batch(trained["images"])
    with torch.inference_mode():
        reference, candidate = trained["model"](batch), restored(batch)
    torch.testing.assert_close(candidate.pred_score, reference.pred_score)
    assert candidate.anomaly_map.shape == reference.anomaly_map.shape
    assert not torch.allclose(candidate.anomaly_map, reference.anomaly_map), "a different map"


@pytest.mark.parametrize("scorer", ["cosine", "lof"])
def test_onnx_and_openvino_exports_match_torch(trained: dict, scorer: str, tmp_path: Path) -> None:
    model = trained["model"]
    model.model.scorer = scorer
    try:
        onnx_path = model.to_onnx(tmp_path)
        batch = _batch(trained["images"])
        reference = _pipeline(model, batch)
    finally:
        model.model.scorer = "cosine"
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    compiled = openvino.Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for runtime in ("onnxruntime", "openvino"):
        if runtime == "onnxruntime":
            outputs = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
        else:
            result = compiled(batch.numpy())
            outputs = [result[compiled.output(index)] for index in range(len(names))]
        candidate = dict(zip(names, outputs, strict=True))
        for key in ("pred_score", "anomaly_map"):
            np.testing.assert_allclose(
                candidate[key].reshape(reference[key].shape), reference[key], atol=TOLERANCE, err_msg=runtime
            )
    initializers = " ".join(tensor.name for tensor in __import__("onnx").load(str(onnx_path)).graph.initializer)
    assert "scale" not in initializers, "the training-only head state is left out"


def test_lof_needing_more_images_than_the_training_set_fails_before_training(
    synthetic_root: Path, tmp_path: Path
) -> None:
    model = tiny_model(scorer="lof", n_neighbors=50)
    datamodule = MVTecAD(root=synthetic_root, category="synthetic", train_batch_size=6, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, accelerator="cpu")
    with pytest.raises(ValueError, match="n_neighbors=50 needs at least 51 good training embeddings, but there are 12"):
        engine.fit(model=model, datamodule=datamodule)


def test_anomalib_train_command_line(synthetic_root: Path, tmp_path: Path) -> None:
    command = [
        "anomalib", "train",
        "--model", "SyntheticDefectMetric",
        "--model.backbone", BACKBONE,
        "--model.pre_trained", "false",
        "--model.max_epochs", "1",
        "--model.defect_kinds", "[line]",
        "--model.loss", "l2_softmax",
        "--model.scorer", "lof",
        "--model.n_neighbors", "3",
        "--data", "MVTecAD",
        "--data.root", str(synthetic_root),
        "--data.category", "synthetic",
        "--data.num_workers", "0",
        "--data.train_batch_size", "6",
        "--data.eval_batch_size", "8",
        "--default_root_dir", str(tmp_path),
        "--trainer.accelerator", "cpu",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "image_AUROC" in output, output[-4000:]
    assert "pixel_AUROC" in output, output[-4000:]
    checkpoint = tmp_path / "SyntheticDefectMetric" / "MVTecAD" / "synthetic" / "latest" / "weights" / "lightning"
    model = SyntheticDefectMetric.load_from_checkpoint(checkpoint / "model.ckpt")
    assert model.defect_kinds == ["line"]
    assert model.model.scorer == "lof"
    assert model.model.bank.embeddings.shape[0] == 12


def test_a_defect_that_cannot_be_drawn_is_left_out_and_counted() -> None:
    flat = torch.full((2, 3, 64, 64), 0.5)  # a rotation changes nothing on a flat image
    with pytest.raises(ValueError, match="distortion defect changed no pixel"):
        add_defects_to_batch(flat, ["distortion", None], np.random.default_rng(0))
    model = tiny_model()
    model.on_train_epoch_start()
    samples, labels, masks = model.synthetic_batch(flat)
    assert labels.tolist() == [0, 0, 1, 1], "lines still show on a flat image; no distortion sample is made"
    assert samples.shape[0] == masks.shape[0] == 4
    assert model.defects_left_out == {"line": 0, "distortion": 2}
    assert model.defects_asked == {"line": 2, "distortion": 2}
