"""Deployment: ONNX, OpenVINO and torch exports give the checkpoint's scores, and stay small."""

import csv
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import openvino
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.deploy import OpenVINOInferencer, TorchInferencer
from anomalib.engine import Engine
from conftest import SMALL_BACKBONE, SMALL_LAYERS
from PIL import Image

from anomalib_featureridge import FeatureRidge
from anomalib_featureridge.cli import main
from anomalib_featureridge.deploy import predict as predict_module
from anomalib_featureridge.deploy.precision import compile_openvino, compiled_precision, cpu_supports, openvino_config
from anomalib_featureridge.deploy.predict import (
    load_inferencer,
    map_to_original_size,
    overlay_paths,
    predict_folder,
    predict_image,
)

TOLERANCE = 1e-4
BF16_SCORE_TOLERANCE = 0.1  # a wrong model, not rounding, is what this catches
# What the docs tell users of anomalib's own inferencer to pass: OpenVINO computes in bfloat16 on CPUs with
# AVX-512 BF16 or AMX otherwise, and the exported file cannot change that.
EXACT_OPENVINO = {"INFERENCE_PRECISION_HINT": "f32"}


def _train_and_export(synthetic_root: Path, workdir: Path, head: str, **options: object) -> dict:
    torch.manual_seed(0)
    model = FeatureRidge(
        backbone=SMALL_BACKBONE, layers=list(SMALL_LAYERS), pre_trained=False, head=head, visualizer=False, **options
    )
    datamodule = MVTecAD(
        root=synthetic_root, category="synthetic", train_batch_size=4, eval_batch_size=8, num_workers=0
    )
    engine = Engine(default_root_dir=workdir, logger=False, enable_progress_bar=False, accelerator="cpu")
    engine.fit(model=model, datamodule=datamodule)  # fits, then validates: the post-processor learns its normalisation
    checkpoint = workdir / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    model.eval()
    paths = {
        "onnx": model.to_onnx(workdir),
        "openvino": model.to_openvino(workdir),
        "torch": model.to_torch(workdir),
    }
    images = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))[:6]
    return {"model": model, "checkpoint": checkpoint, "paths": paths, "images": images, "workdir": workdir}


@pytest.fixture(scope="module")
def exported(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A trained small model (the default, paper head), its checkpoint and its three exports."""
    return _train_and_export(synthetic_root, tmp_path_factory.mktemp("export"), "paper")


@pytest.fixture(scope="module")
def exported_gaussian(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same with the opt-in gaussian head, whose per-position tensors must export too."""
    return _train_and_export(synthetic_root, tmp_path_factory.mktemp("export_gaussian"), "gaussian")


@pytest.fixture(scope="module")
def exported_local(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same with the opt-in local head on averaged, contrast-referred features (``pool=3``,
    ``reference="contrast"``): per-position and per-region tensors, gathered in the graph, after an average
    pooling that leaves the padding out, a median taken by ``topk`` (the median reference's own step) and a
    division by the image's contrast, a second ``topk`` across channels."""
    return _train_and_export(
        synthetic_root, tmp_path_factory.mktemp("export_local"), "local", pool=3, reference="contrast"
    )


@pytest.fixture(scope="module")
def exported_two_scale(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same with the opt-in two-scale head: a second, coarse local head on every second position of averaged
    maps, its erosion (a max pooling of the negated scores), a resize and the weighted max of both; on a subset
    of each map's channels (a gather)."""
    return _train_and_export(
        synthetic_root,
        tmp_path_factory.mktemp("export_two_scale"),
        "two_scale",
        reference="contrast",
        channels=[48, 96],
    )


def _reference(model: FeatureRidge, image_paths: list[Path]) -> dict[str, np.ndarray]:
    batch = torch.stack([read_image(path, as_tensor=True) for path in image_paths])
    with torch.no_grad():
        output = model(batch)  # pre-processing, model and post-processing: what the export contains
    return {key: value.numpy() for key, value in output._asdict().items() if value is not None}


def _assert_parity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(candidate["pred_score"].reshape(-1), reference["pred_score"].reshape(-1), atol=TOLERANCE)
    np.testing.assert_allclose(
        candidate["anomaly_map"].reshape(reference["anomaly_map"].shape), reference["anomaly_map"], atol=TOLERANCE
    )
    np.testing.assert_array_equal(candidate["pred_label"].reshape(-1), reference["pred_label"].reshape(-1))


def test_onnx_runtime_matches_torch_for_any_batch_size(exported: dict) -> None:
    session = onnxruntime.InferenceSession(str(exported["paths"]["onnx"]), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    for count in (1, 4):
        paths = exported["images"][:count]
        reference = _reference(exported["model"], paths)
        batch = np.stack([read_image(path, as_tensor=True).numpy() for path in paths])
        candidate = dict(zip(names, session.run(None, {session.get_inputs()[0].name: batch}), strict=True))
        _assert_parity(reference, candidate)
    assert set(reference["pred_label"].reshape(-1).tolist()) == {False, True}, "the check must see both labels"


@pytest.mark.parametrize("fixture", ["exported_local", "exported_two_scale"])
def test_onnx_runtime_matches_torch_with_the_local_heads(fixture: str, request: pytest.FixtureRequest) -> None:
    exported = request.getfixturevalue(fixture)
    session = onnxruntime.InferenceSession(str(exported["paths"]["onnx"]), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    paths = exported["images"][:3]
    batch = np.stack([read_image(path, as_tensor=True).numpy() for path in paths])
    candidate = dict(zip(names, session.run(None, {session.get_inputs()[0].name: batch}), strict=True))
    _assert_parity(_reference(exported["model"], paths), candidate)


@pytest.mark.parametrize("fixture", ["exported", "exported_gaussian", "exported_local", "exported_two_scale"])
def test_openvino_inferencer_matches_torch(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = request.getfixturevalue(fixture)
    monkeypatch.chdir(tmp_path)  # anomalib's OpenVINOInferencer writes ./openvino_cache
    inferencer = OpenVINOInferencer(path=exported["paths"]["openvino"], device="CPU", config=EXACT_OPENVINO)
    for path in exported["images"]:
        prediction = inferencer.predict(path)
        _assert_parity(
            _reference(exported["model"], [path]),
            {
                "pred_score": prediction.pred_score,
                "anomaly_map": prediction.anomaly_map,
                "pred_label": prediction.pred_label,
            },
        )


def _record_openvino_compiles(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record the configuration of every OpenVINO compile from now on: what the package asks the runtime for.

    The request, not the runtime's echo, is the package's rule: OpenVINO reports a hinted precision back
    inconsistently on CPUs that lack it (some report ``bf16`` with no BF16 among their capabilities).
    """
    asked: list[dict] = []
    compile_model = openvino.Core.compile_model

    def recording(
        self: openvino.Core,
        model: object,
        device_name: str | None = None,
        config: dict | None = None,
        **options: object,
    ) -> openvino.CompiledModel:
        asked.append(dict(config or {}))
        return compile_model(self, model, device_name, config, **options)

    monkeypatch.setattr(openvino.Core, "compile_model", recording)
    return asked


def test_every_openvino_compile_here_runs_in_f32(
    exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each compile asks for f32, and the runtime honours it: on a CPU with bfloat16 the default would be bf16.

    f32 is the one precision every CPU has, so its echo can be trusted; the request is checked too, since on a
    CPU without bfloat16 the echo would be f32 even if the package stopped asking for it.
    """
    monkeypatch.chdir(tmp_path)
    assert openvino_config() == EXACT_OPENVINO, "the docs' config for OpenVINOInferencer is the package's rule"
    asked = _record_openvino_compiles(monkeypatch)
    compiled = {
        "compile_openvino (tools)": compile_openvino(exported["paths"]["openvino"]),
        "predict, model.xml": load_inferencer(exported["paths"]["openvino"]).model,
        "predict, model.onnx": load_inferencer(exported["paths"]["onnx"]).model,
    }
    assert asked == [EXACT_OPENVINO] * len(compiled)
    assert {path: compiled_precision(model) for path, model in compiled.items()} == dict.fromkeys(compiled, "f32")


def test_bf16_is_an_opt_in(
    exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Asking for bf16 passes the hint on and still gives the checkpoint's scores within bfloat16's cost.

    What OpenVINO then reports as its precision is not checked: on a CPU without BF16 it may echo the hint.
    """
    monkeypatch.chdir(tmp_path)
    asked = _record_openvino_compiles(monkeypatch)
    with caplog.at_level("WARNING"):
        faster = load_inferencer(exported["paths"]["openvino"], precision="bf16")
        compile_openvino(exported["paths"]["onnx"], precision="bf16")
    assert asked == [{"INFERENCE_PRECISION_HINT": "bf16"}] * 2
    assert ("no bf16 support" in caplog.text) == (not cpu_supports("bf16")), "a CPU without it is named"
    for path in exported["images"][:3]:
        prediction = faster.predict(path)
        reference = _reference(exported["model"], [path])["pred_score"].reshape(-1)
        # bfloat16 keeps 8 mantissa bits; the docs measure up to 0.023 on the normalised scale.
        np.testing.assert_allclose(np.asarray(prediction.pred_score).reshape(-1), reference, atol=BF16_SCORE_TOLERANCE)
    with pytest.raises(ValueError, match="Unknown OpenVINO precision 'fp8'; choose from f32, bf16"):
        openvino_config("fp8")


def test_openvino_export_says_the_precision_is_set_at_compile_time(
    exported: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        exported["model"].to_openvino(tmp_path)
    assert "config={'INFERENCE_PRECISION_HINT': 'f32'}" in caplog.text


def test_torch_inferencer_matches_checkpoint(exported: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # anomalib's opt-in for unpickling a .pt export
    inferencer = TorchInferencer(path=exported["paths"]["torch"], device="cpu")
    restored = FeatureRidge.load_from_checkpoint(exported["checkpoint"]).eval()
    for path in exported["images"][:3]:
        prediction = inferencer.predict(path)
        candidate = {key: getattr(prediction, key).numpy() for key in ("pred_score", "anomaly_map", "pred_label")}
        _assert_parity(_reference(restored, [path]), candidate)


def test_exports_hold_only_what_inference_needs(exported: dict) -> None:
    onnx_path = exported["paths"]["onnx"]
    assert list(onnx_path.parent.iterdir()) == [onnx_path], "no external-data file"
    graph = onnx.load(str(onnx_path))
    initializer_names = " ".join(tensor.name for tensor in graph.graph.initializer)
    assert "statistics" not in initializer_names
    assert "xtx" not in initializer_names
    backbone_and_head_bytes = sum(
        tensor.numel() * tensor.element_size()
        for name, tensor in exported["model"].model.state_dict().items()
        if not name.startswith("statistics")
    )
    assert onnx_path.stat().st_size < 1.1 * backbone_and_head_bytes
    saved = torch.load(exported["paths"]["torch"], weights_only=False)["model"]
    assert saved.model.head.statistics.is_empty
    assert not exported["model"].model.head.statistics.is_empty, "exporting must not strip the live model"


def test_exporting_an_unfitted_model_is_refused(tmp_path: Path) -> None:
    model = FeatureRidge(backbone=SMALL_BACKBONE, layers=list(SMALL_LAYERS), pre_trained=False)
    for export in (model.to_onnx, model.to_torch):
        with pytest.raises(RuntimeError, match="before it is fitted"):
            export(tmp_path)
    assert not list(tmp_path.rglob("*.onnx"))
    assert not list(tmp_path.rglob("*.pt"))


def test_wrong_channel_count_is_refused_by_every_runtime(exported: dict) -> None:
    four_channels = np.random.default_rng(0).random((1, 4, 64, 64), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        exported["model"].model(torch.from_numpy(four_channels))
    session = onnxruntime.InferenceSession(str(exported["paths"]["onnx"]), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        session.run(None, {session.get_inputs()[0].name: four_channels})


def test_anomalib_export_command(exported: dict, tmp_path: Path) -> None:
    command = [
        "anomalib", "export",
        "--model", "FeatureRidge",
        "--model.backbone", SMALL_BACKBONE,
        "--model.pre_trained", "false",
        "--ckpt_path", str(exported["checkpoint"]),
        "--export_type", "onnx",
        "--default_root_dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    session = onnxruntime.InferenceSession(str(tmp_path / "weights" / "onnx" / "model.onnx"))
    names = [output.name for output in session.get_outputs()]
    batch = np.stack([read_image(path, as_tensor=True).numpy() for path in exported["images"][:2]])
    candidate = dict(zip(names, session.run(None, {session.get_inputs()[0].name: batch}), strict=True))
    _assert_parity(_reference(exported["model"], exported["images"][:2]), candidate)


def _predict_command(model: Path, folder: Path, output: Path, *options: str) -> subprocess.CompletedProcess:
    paths = ["--model", str(model), "--input", str(folder), "--output", str(output)]
    return subprocess.run(
        ["anomalib-featureridge", "predict", *paths, *options],
        capture_output=True,
        text=True,
        check=False,
        cwd=output.parent,  # anomalib's OpenVINOInferencer writes ./openvino_cache
    )


def _rows(output: Path) -> dict[str, dict[str, str]]:
    with (output / "predictions.csv").open(newline="") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


def test_predict_folder_with_the_openvino_export(exported: dict, synthetic_root: Path, tmp_path: Path) -> None:
    """Sub-folders are searched; each overlay is at the image's size and carries its score and label."""
    folder = synthetic_root / "synthetic" / "test"
    output = tmp_path / "out"
    result = _predict_command(exported["paths"]["openvino"], folder, output)
    assert result.returncode == 0, result.stderr[-3000:]
    images = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.png"))
    assert len({name.split("/")[0] for name in images}) > 1, "the check must see sub-folders"
    rows = _rows(output)
    assert sorted(rows) == images
    labels = set()
    for name, row in rows.items():
        overlay = Image.open(output / "overlays" / name)  # a PNG image's overlay has its name
        assert overlay.size == Image.open(folder / name).size
        assert (overlay.text["pred_score"], overlay.text["pred_label"]) == (row["pred_score"], row["pred_label"])
        banner = (180, 0, 0) if row["pred_label"] == "1" else (0, 110, 0)
        assert overlay.convert("RGB").getpixel((1, 1)) == banner, "the label is drawn on the overlay"
        labels.add(row["pred_label"])
    assert labels == {"0", "1"}
    assert not list((output / "overlays").rglob("*.png.png")), "no double suffix"
    reference = _reference(exported["model"], [folder / images[0]])
    assert float(rows[images[0]]["pred_score"]) == pytest.approx(float(reference["pred_score"][0]), abs=TOLERANCE)


def test_predict_skips_bad_files_keeps_the_rest_and_fails_at_the_end(exported: dict, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    good = exported["images"][:2]
    shutil.copy(good[0], folder / "part.png")
    Image.open(good[1]).convert("RGB").save(folder / "part.jpg")
    (folder / "broken.png").write_bytes(good[0].read_bytes()[:200])  # truncated
    (folder / "notes.png").write_text("not an image")
    output = tmp_path / "out"
    result = _predict_command(exported["paths"]["openvino"], folder, output)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "2 file(s) skipped" in result.stderr
    assert "broken.png:" in result.stderr
    assert "notes.png:" in result.stderr
    rows = _rows(output)
    assert sorted(rows) == ["broken.png", "notes.png", "part.jpg", "part.png"]
    for name in ("broken.png", "notes.png"):  # the file itself, not just PIL's "image file is truncated"
        assert rows[name]["error"].startswith(f"Cannot read {folder / name}: "), rows[name]["error"]
        assert "copy it again" in rows[name]["error"]
    assert not rows["part.png"]["error"]
    assert rows["part.png"]["pred_score"] != rows["part.jpg"]["pred_score"]
    overlays = sorted(path.name for path in (output / "overlays").iterdir())
    assert overlays == ["part.png", "part_jpg.png"], "part.png and part.jpg must not share an overlay"


def test_predict_never_overwrites_an_earlier_run(exported: dict, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, image in ((first, exported["images"][0]), (second, exported["images"][1])):
        folder.mkdir()
        shutil.copy(image, folder / image.name)
    output = tmp_path / "out"
    assert _predict_command(exported["paths"]["openvino"], first, output).returncode == 0
    refused = _predict_command(exported["paths"]["openvino"], second, output)
    assert refused.returncode == 2
    assert "already holds the results of an earlier run" in refused.stderr
    assert "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(_rows(output)) == [exported["images"][0].name], "the earlier results are untouched"
    replaced = _predict_command(exported["paths"]["openvino"], second, output, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert sorted(_rows(output)) == [exported["images"][1].name]
    assert [path.name for path in (output / "overlays").iterdir()] == [exported["images"][1].name]


def test_overlays_keep_their_images_names_and_never_share_one() -> None:
    names = ["good/04.png", "crack/04.png", "part.jpg", "part.png", "part_jpg.png", "shot.JPG", "scan.tif", "scan.PNG"]
    overlays = {relative.as_posix(): path.as_posix() for relative, path in overlay_paths(map(Path, names)).items()}
    assert overlays == {
        "good/04.png": "good/04.png",
        "crack/04.png": "crack/04.png",
        "part.png": "part.png",
        "part_jpg.png": "part_jpg.png",
        "part.jpg": "part_jpg_2.png",
        "scan.PNG": "scan.png",
        "scan.tif": "scan_tif.png",
        "shot.JPG": "shot.png",
    }


def test_predict_writes_each_row_as_it_is_scored(
    exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupted run (here Ctrl-C at the third image) keeps the rows already scored."""
    monkeypatch.chdir(tmp_path)
    scored = []
    original = predict_module.predict_image

    def interrupted(inferencer: object, path: Path) -> object:
        if len(scored) == 2:
            raise KeyboardInterrupt
        scored.append(path)
        return original(inferencer, path)

    monkeypatch.setattr(predict_module, "predict_image", interrupted)
    folder = exported["images"][0].parents[1]
    with pytest.raises(KeyboardInterrupt):
        predict_folder(exported["paths"]["openvino"], folder, tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert sorted(rows) == sorted(path.relative_to(folder).as_posix() for path in scored)


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_predict_on_a_missing_or_empty_folder_says_so(exported: dict, tmp_path: Path, case: str) -> None:
    folder = tmp_path / "in"
    if case == "empty":
        (folder / "sub").mkdir(parents=True)
    result = _predict_command(exported["paths"]["openvino"], folder, tmp_path / "out")
    assert result.returncode == 2
    assert ("is not a folder" if case == "missing" else "No images") in result.stderr
    assert str(folder) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("export_format", ["openvino", "onnx"])
def test_predict_with_an_export_of_fixed_input_size_refuses_other_sizes_once(
    exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, export_format: str
) -> None:
    """``anomalib export --input_size`` fixes the graph's height and width: other sizes are refused before scoring,
    naming the size and the re-export, and images of the export's size are scored as before."""
    monkeypatch.chdir(tmp_path)
    export = getattr(exported["model"], f"to_{export_format}")(tmp_path / "fixed", input_size=(64, 64))
    folder = tmp_path / "in"
    folder.mkdir()
    for path in exported["images"][:2]:  # 96 x 96
        shutil.copy(path, folder / path.name)
    output = tmp_path / "out"
    code = main(["predict", "--model", str(export), "--input", str(folder), "--output", str(output)])
    message = capsys.readouterr().err
    assert code == 2
    assert message.count("\n") == 1, message
    assert "2 of 2 images have another size" in message
    assert "exported for 64 x 64 images only" in message
    assert "96 x 96" in message
    assert "without --input_size" in message
    assert not (output / "predictions.csv").exists(), "nothing scored"
    with pytest.raises(ValueError, match="exported for 64 x 64 images only"):
        predict_image(load_inferencer(export), exported["images"][0])
    for path in folder.iterdir():
        Image.open(path).resize((64, 64)).save(path)
    assert main(["predict", "--model", str(export), "--input", str(folder), "--output", str(output)]) == 0
    assert all(row["pred_score"] and not row["error"] for row in _rows(output).values())


def _writes_despite_read_only(folder: Path) -> bool:
    try:
        (folder / "probe").write_bytes(b"")
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


@pytest.mark.parametrize("case", ["under_a_file", "a_file", "read_only"])
def test_predict_refuses_an_output_it_cannot_write_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    """Refused before the model is loaded (a stand-in model file is enough), with the folder and the way out."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "part.png")
    model = tmp_path / "model.xml"
    model.write_text("<net/>")  # never read: the output is checked first
    output = tmp_path / "out"
    if case == "under_a_file":
        (tmp_path / "file").write_text("")
        output = tmp_path / "file" / "out"  # no permission bits involved: a refusal even for root
    elif case == "a_file":
        output.write_text("")
    else:
        output.mkdir()
        output.chmod(0o555)
        if _writes_despite_read_only(output):
            output.chmod(0o755)
            pytest.skip("permission bits do not stop this user (root): the other cases check the refusal")
    try:
        code = main(["predict", "--model", str(model), "--input", str(folder), "--output", str(output)])
    finally:
        if case == "read_only":
            output.chmod(0o755)
    message = capsys.readouterr().err
    assert code == 2
    assert message.count("\n") == 1, message
    assert message.startswith("anomalib-featureridge predict: ")
    assert str(output) in message
    assert "--output" in message
    assert "Traceback" not in message


def test_predict_reads_16_bit_images_scaled(exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 16-bit grayscale file scores as its 8-bit version, not as the white frame anomalib's reader makes of it."""
    monkeypatch.chdir(tmp_path)
    gray = np.asarray(Image.open(exported["images"][0]).convert("L"))
    cv2.imwrite(str(tmp_path / "camera16.png"), gray.astype(np.uint16) * 257)
    Image.fromarray(gray).save(tmp_path / "camera8.png")
    inferencer = load_inferencer(exported["paths"]["openvino"])
    sixteen, image = predict_image(inferencer, tmp_path / "camera16.png")
    eight, _ = predict_image(inferencer, tmp_path / "camera8.png")
    np.testing.assert_array_equal(image[..., 0], gray / np.float32(255.0))
    assert sixteen.pred_score == eight.pred_score
    np.testing.assert_array_equal(sixteen.anomaly_map, eight.anomaly_map)
    white = inferencer.predict(read_image(tmp_path / "camera16.png"))  # anomalib's reader: clipped to white
    white_map = map_to_original_size(np.asarray(white.anomaly_map), *gray.shape)
    assert np.abs(white_map - sixteen.anomaly_map).max() > 1e-2


def test_anomaly_map_maps_back_to_the_original_size() -> None:
    model_resolution = np.zeros((1, 256, 256), dtype=np.float32)
    model_resolution[0, 64:128, :] = 1.0
    original = map_to_original_size(model_resolution, 100, 300)
    assert original.shape == (100, 300)
    assert original[37, 150] == pytest.approx(1.0)
    assert original[5, 150] == pytest.approx(0.0)


def test_low_rank_model_exports_to_onnx_with_the_same_scores(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FeatureRidge(
        backbone=SMALL_BACKBONE,
        layers=list(SMALL_LAYERS),
        pre_trained=False,
        rank=16,
        head="paper",
        pre_processor=False,
        post_processor=False,
    )
    model.model.update(torch.rand(4, 3, 64, 64))
    model.eval()
    onnx_path = model.to_onnx(tmp_path, input_size=(64, 64))  # no pre-processor: fix the size
    initializers = {tensor.name for tensor in onnx.load(str(onnx_path)).graph.initializer}
    assert {"model.head.weight", "model.head.projection"} <= initializers
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = model.model(images)
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images.numpy()}), strict=True))
    np.testing.assert_allclose(outputs["anomaly_map"], reference.anomaly_map.numpy(), atol=TOLERANCE)
    np.testing.assert_allclose(outputs["pred_score"].reshape(-1), reference.pred_score.numpy(), atol=TOLERANCE)
