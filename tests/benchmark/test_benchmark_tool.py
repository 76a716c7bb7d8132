"""``anomalib-featureridge benchmark``: bad input fails before any fit, rows survive an interruption, the ratios."""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from anomalib_featureridge import cli
from anomalib_featureridge.benchmark import construction, harness, inference_scale, measurement, options, sweep
from anomalib_featureridge.benchmark.report import markdown, write_report
from anomalib_featureridge.data import SyntheticSpec, make_synthetic_dataset
from anomalib_featureridge.models.feature_ridge.options import BY_NAME


def benchmark_main(argv: list[str]) -> None:
    """The ``benchmark`` sub-command, in this process."""
    cli.main(["benchmark", *argv])


def parse_args(argv: list[str]):
    """The ``benchmark`` sub-command's options."""
    return cli.build_parser().parse_args(["benchmark", *argv])


SMOKE = ["--backbone", "resnet18", "--layers", "layer2", "layer3", "--random-init", "--batch-size", "4"]
SMOKE += ["--warmup", "0", "--repeats", "1", "--num-workers", "0"]


def run(root: Path, output: Path, *extra: str) -> None:
    benchmark_main(["--root", str(root), "--categories", "synthetic", "--output", str(output), *SMOKE, *extra])


def test_unknown_category_lists_the_available_ones(synthetic_root, tmp_path):
    with pytest.raises(SystemExit, match=r"No category \['bottle'\].*categories there: \['synthetic'\]"):
        benchmark_main(["--root", str(synthetic_root), "--categories", "bottle", "--output", str(tmp_path)])


def test_unregistered_model_is_refused_with_the_registered_names(synthetic_root, tmp_path):
    with pytest.raises(SystemExit, match=r"'NoSuchModel' is not registered.*FeatureRidge.*Patchcore"):
        run(synthetic_root, tmp_path, "--models", "FeatureRidge", "NoSuchModel")


def test_weights_for_another_backbone_fail_before_any_fit(synthetic_root, tmp_path):
    import timm

    weights = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), weights)
    with pytest.raises(Exception, match="resnet18"):
        run(synthetic_root, tmp_path / "out", "--weights", str(weights), "--scaling", "4", "--skip-full")
    assert not (tmp_path / "out" / "results.csv").exists()


def test_interrupted_run_keeps_its_rows_and_resumes(synthetic_root, tmp_path, monkeypatch):
    measured: list[tuple[str, int]] = []
    on_disk_when_killed: list[dict[str, str]] = []
    real_measure = measurement.measure

    def measure_then_die(name, mode, category, n_train, *args):
        if measured:
            # What a hard kill at this point would leave: the file as it is on disk now.
            on_disk_when_killed.extend(csv.DictReader((tmp_path / "results.csv").open()))
            raise KeyboardInterrupt
        measured.append((name, n_train))
        return real_measure(name, mode, category, n_train, *args)

    monkeypatch.setattr(sweep, "measure", measure_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(synthetic_root, tmp_path, "--in-process", "--models", "FeatureRidge", "--skip-full", "--scaling", "4", "6")

    rows = on_disk_when_killed
    assert [(row["model"], row["n_train"]) for row in rows] == [("FeatureRidge", "4")]
    row = rows[0]
    assert row["error"] == ""
    assert float(row["fit_s"]) > 0
    assert float(row["infer_ms_per_image"]) > 0
    assert float(row["backbone_ms_per_image"]) > 0
    assert float(row["peak_rss_fit_mib"]) > 100
    assert 0 < float(row["head_mib"]) < float(row["model_mib"])

    measured.clear()
    monkeypatch.setattr(sweep, "measure", lambda name, mode, category, n, *args: measured.append(n) or [{}])
    run(synthetic_root, tmp_path, "--in-process", "--models", "FeatureRidge", "--skip-full", "--scaling", "4", "6")
    assert measured == [6]
    assert (tmp_path / "results.md").exists()


def test_a_failed_row_is_recorded_and_the_run_goes_on(synthetic_root, tmp_path):
    run(synthetic_root, tmp_path, "--models", "FeatureRidge", "--skip-full", "--scaling", "1000", "4")
    failed, measured = csv.DictReader((tmp_path / "results.csv").open())
    assert "asked for 1000 training images, the category has 12" in failed["error"]
    assert measured["error"] == ""
    assert measured["n_train"] == "4"
    assert float(measured["peak_rss_fit_mib"]) > 100  # the measuring process's own peak


def die_like_the_out_of_memory_killer() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_measuring_process_is_reported_with_its_signal():
    with pytest.raises(harness.RowFailedError, match=r"killed by SIGKILL \(most often the out-of-memory killer\)"):
        harness.run_isolated(die_like_the_out_of_memory_killer)


def test_clip_models_take_their_own_backbone_and_k_shot(synthetic_root, tmp_path, tiny_clip):
    run(
        synthetic_root,
        tmp_path,
        *("--models", "WinClipPlus", "--skip-full", "--few-shot", "2"),
        *("--clip-backbone", str(tiny_clip["config"]), "--clip-pretrained", str(tiny_clip["checkpoint"])),
    )
    (row,) = csv.DictReader((tmp_path / "results.csv").open())
    assert row["error"] == ""
    assert row["n_train"] == "2"
    assert 0 <= float(row["image_AUROC"]) <= 1
    assert float(row["infer_ms_per_image"]) > 0


def test_report_ratios_are_against_patchcore_of_the_same_group(tmp_path):
    def row(model: str, fit: str, infer: str, n: str = "8") -> dict[str, str]:
        values = dict.fromkeys(measurement.FIELDS, "")
        values |= {"mode": "scaling", "model": model, "category": "c", "n_train": n, "fit_s": fit}
        return values | {"infer_ms_per_image": infer, "backbone_ms_per_image": "2", "model_mib": "1"}

    rows = [row("FeatureRidge", "1", "3"), row("Patchcore", "10", "12"), row("Patchcore", "20", "30", n="16")]
    rows[1]["backbone_ms_per_image"] = "4"  # Patchcore's row ran on a machine twice as busy
    table = markdown(rows)
    feature_ridge_line = next(line for line in table.splitlines() if line.startswith("| FeatureRidge"))
    assert "| 1.50x | 0.25x | 0.50x | 0.10x |" in feature_ridge_line
    write_report(rows, tmp_path)
    assert (tmp_path / "scaling.png").stat().st_size > 0


def test_fit_time_stops_at_the_end_of_the_fit_step_and_counts_it_once():
    import time

    class MemoryBankLike:
        def fit(self) -> None:
            time.sleep(0.05)

    model = MemoryBankLike()
    timer = measurement.FitTimer(model)
    timer.on_train_start(None, model)
    time.sleep(0.05)  # the training epoch: feature extraction
    timer.on_validation_start(None, model)  # callbacks run first: the fit has not happened yet
    model.fit()  # what MemoryBankMixin.on_validation_start does
    time.sleep(0.3)  # the validation pass
    timer.on_train_end(None, model)
    assert 0.1 <= timer.seconds < 0.3
    assert "fit" not in vars(model)  # unwrapped again, so the model pickles for export


def test_fit_time_counts_every_epoch_of_a_trained_model():
    import time

    class TrainedLike:  # SyntheticDefectMetric: several epochs, no fit step, one validation at the end
        pass

    model = TrainedLike()
    timer = measurement.FitTimer(model)
    timer.on_train_start(None, model)
    for _ in range(3):
        time.sleep(0.1)  # one epoch
        timer.on_train_epoch_end(None, model)
    timer.on_validation_start(None, model)
    time.sleep(0.3)  # the validation pass
    timer.on_train_end(None, model)
    assert 0.3 <= timer.seconds < 0.6


def test_fit_time_counts_a_fit_step_run_after_the_epoch_end_callbacks():
    import time

    class SolvesAtEpochEnd:  # FeatureRidge without a validation pass: it solves in its own epoch-end hook
        def fit(self) -> None:
            time.sleep(0.2)

    model = SolvesAtEpochEnd()
    timer = measurement.FitTimer(model)
    timer.on_train_start(None, model)
    timer.on_train_epoch_end(None, model)  # callbacks run before the model's hook
    model.fit()
    timer.on_train_end(None, model)
    assert timer.seconds >= 0.2


def folder_args(synthetic_root: Path, output: Path, *, masks: bool = True) -> list[str]:
    """The synthetic category given as an anomalib Folder dataset (defects in three folders)."""
    defects = ["scratch", "stain", "hole"]
    args = ["--folder", str(synthetic_root / "synthetic"), "--normal-dir", "train/good", "--output", str(output)]
    args += ["--abnormal-dir", *(f"test/{defect}" for defect in defects)]
    if masks:
        args += ["--mask-dir", *(f"ground_truth/{defect}" for defect in defects)]
    return args + SMOKE


def test_folder_splits_are_the_same_for_every_model(synthetic_root, tmp_path):
    args = parse_args(folder_args(synthetic_root, tmp_path))

    def split_paths() -> tuple[list[str], list[str]]:
        datamodule = measurement.make_datamodule(args, "synthetic", batch_size=4)
        datamodule.setup()
        return sorted(datamodule.train_data.samples.image_path), sorted(datamodule.test_data.samples.image_path)

    torch.manual_seed(1)
    first = split_paths()
    torch.manual_seed(2)  # another model's construction leaves the global generator elsewhere
    assert split_paths() == first
    train, test = first
    assert not set(train) & set(test)
    assert any("/train/good/" in path for path in test)  # good test images held out of the training folder


def test_folder_without_masks_leaves_pixel_metrics_empty(synthetic_root, tmp_path):
    benchmark_main([*folder_args(synthetic_root, tmp_path, masks=False), "--models", "FeatureRidge"])
    (row,) = csv.DictReader((tmp_path / "results.csv").open())
    assert row["error"] == ""
    assert 0 <= float(row["image_AUROC"]) <= 1
    assert row["pixel_AUROC"] == row["pixel_AUPRO"] == ""


def test_folder_with_masks_has_pixel_metrics(synthetic_root, tmp_path):
    benchmark_main([*folder_args(synthetic_root, tmp_path), "--models", "FeatureRidge"])
    (row,) = csv.DictReader((tmp_path / "results.csv").open())
    assert 0 <= float(row["pixel_AUROC"]) <= 1
    assert 0 <= float(row["pixel_AUPRO"]) <= 1


def test_folder_without_defects_is_refused_unless_only_cost_is_measured(synthetic_root, tmp_path):
    base = ["--folder", str(synthetic_root / "synthetic"), "--normal-dir", "train/good", "--output", str(tmp_path)]
    with pytest.raises(SystemExit, match="Accuracy needs defective images"):
        benchmark_main([*base, *SMOKE])
    with pytest.raises(SystemExit, match=r"No such image folder: .*test/dents"):
        benchmark_main([*base, "--abnormal-dir", "test/dents", *SMOKE])
    benchmark_main([*base, *SMOKE, "--models", "FeatureRidge", "--skip-full", "--scaling", "4"])
    (row,) = csv.DictReader((tmp_path / "results.csv").open())
    assert row["error"] == ""
    assert float(row["fit_s"]) > 0


def test_inference_at_scale_sizes_patchcore_banks_from_the_training_set(capsys):
    import benchmark_inference_scale as scale

    args = scale.parse_args(
        ["--backbone", "resnet18", "--image-size", "64", "--train-images", "2", "8", "--ranks", "32"]
    )
    args.batch, args.warmup, args.repeats = 2, 0, 1
    timings = inference_scale.measure(args)
    # resnet18 layer2 has stride 8: 64 px gives 8 x 8 patches per image, 10 % of them kept per training image
    assert [(t.name, t.bank_rows) for t in timings] == [
        ("backbone", 0),
        ("FeatureRidge", 0),
        ("FeatureRidge rank 32", 0),
        ("Patchcore, 2 training images", 13),
        ("Patchcore, 8 training images", 51),
    ]
    assert all(t.ms_per_image > 0 for t in timings)
    table = inference_scale.markdown(timings, args)
    assert "| Patchcore, 8 training images | 51 |" in table
    assert "| backbone |  |" in table
    assert "| FeatureRidge / this | FeatureRidge rank 32 / this |" in table
    assert "| FeatureRidge rank 32 |  |" in table


def test_inference_at_scale_refuses_a_coreset_ratio_outside_0_1():
    import benchmark_inference_scale as scale

    with pytest.raises(SystemExit):
        scale.parse_args(["--coreset-ratio", "1.5"])


def report_start_method() -> dict[str, str]:
    return {"start_method": multiprocessing.get_start_method()}


def test_the_measuring_process_starts_data_loader_workers_the_parent_way():
    # A spawned child would otherwise spawn its workers, re-importing everything inside the timed fit.
    assert harness.run_isolated(report_start_method) == {"start_method": multiprocessing.get_start_method()}


def record_pid_then_wait(path: str) -> dict[str, str]:
    Path(path).write_text(str(os.getpid()))
    time.sleep(900)  # far longer than the test waits: only the benchmark's death can end it in time
    return {}


def running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


def test_the_measuring_process_stops_when_the_benchmark_is_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = (
        f"import sys; sys.path[:0] = {[str(Path(__file__).parent)]!r}; "
        "from anomalib_featureridge.benchmark import harness; import test_benchmark_tool as t; "
        f"harness.run_isolated(t.record_pid_then_wait, {str(pid_file)!r})"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    child = None
    try:
        deadline = time.monotonic() + 600  # a safeguard, not a timing: importing torch on a loaded machine is slow
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the measuring process did not start"
            assert parent.poll() is None, "the benchmark process failed before it started the measuring one"
            time.sleep(0.2)
        child = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 60
        while running(child):
            assert time.monotonic() < deadline, "the measuring process outlived the benchmark"
            time.sleep(0.2)
    finally:
        parent.kill()
        if child is not None and running(child):
            os.kill(child, signal.SIGKILL)


def test_a_value_not_measured_gets_no_bar():
    import math

    import matplotlib.pyplot as plt

    from anomalib_featureridge.benchmark.report import _bars

    rows = [
        {"model": "FeatureRidge", "series": "FeatureRidge", "category": "a", "pixel_AUROC": "0.9"},
        {"model": "FeatureRidge", "series": "FeatureRidge", "category": "b", "pixel_AUROC": "0.7"},
        {"model": "Patchcore", "series": "Patchcore", "category": "a", "pixel_AUROC": "0.95"},
        {"model": "Patchcore", "series": "Patchcore", "category": "b", "pixel_AUROC": ""},  # did not finish
    ]
    figure, axis = plt.subplots()
    _bars(axis, rows, "pixel_AUROC", "pixel AUROC")
    heights = [patch.get_height() for patch in axis.patches]
    plt.close(figure)
    assert heights[:3] == [0.9, 0.7, 0.95]
    assert math.isnan(heights[3])


def test_a_rank_outside_the_deep_layer_is_refused_before_any_fit(synthetic_root, tmp_path):
    with pytest.raises(SystemExit, match=r"FeatureRidge: rank must be between 1 and 255 .*'layer3'"):
        run(synthetic_root, tmp_path, "--feature-ridge-rank", "256", "--skip-full", "--scaling", "4")
    assert not (tmp_path / "results.csv").exists()


def test_low_rank_rows_are_their_own_rows_with_a_smaller_head(synthetic_root, tmp_path):
    common = ["--in-process", "--models", "FeatureRidge", "--skip-full", "--scaling", "4"]
    run(synthetic_root, tmp_path, *common)
    run(synthetic_root, tmp_path, *common, "--feature-ridge-rank", "16")
    rows = {row["settings"]: row for row in csv.DictReader((tmp_path / "results.csv").open())}
    assert set(rows) == {"", "rank=16"}
    # resnet18 layer2 -> layer3: 1,152 x 256 weights in full (1.1 MiB), 1,152 x 16 + 16 x 256 at rank 16
    # (0.09 MiB), each plus the same few kilobytes of bias and graph.
    assert float(rows["rank=16"]["head_mib"]) < 0.2 * float(rows[""]["head_mib"])


def test_plot_series_name_the_settings_only_where_one_model_has_several():
    from anomalib_featureridge.benchmark.report import _with_series

    rows = [
        {"model": "FeatureRidge", "settings": ""},
        {"model": "FeatureRidge", "settings": "rank=16"},
        {"model": "Patchcore", "settings": "coreset=0.01"},
    ]
    assert [row["series"] for row in _with_series(rows)] == ["FeatureRidge", "FeatureRidge rank=16", "Patchcore"]


def test_each_row_is_measured_from_the_same_seeded_random_state(synthetic_root, tmp_path, monkeypatch):
    draws: list[float] = []

    class DrawnError(Exception):
        pass

    def build_model_that_draws(*args, **kwargs):
        draws.append(float(torch.rand(1)))
        raise DrawnError

    monkeypatch.setattr(measurement, "build_model", build_model_that_draws)
    args = parse_args(["--root", str(synthetic_root), "--categories", "synthetic", *SMOKE])
    setup = sweep.setup_from(args)
    for scramble in (1, 2):
        torch.manual_seed(scramble)
        with pytest.raises(DrawnError):
            measurement.measure("Patchcore", "full", "synthetic", None, args, [setup])
    assert draws[0] == draws[1]


def test_scorers_of_one_training_are_rows_of_one_fit_and_resume_alone(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_synthetic_dataset(root, spec=SyntheticSpec(image_size=64, n_train=24, n_test_good=4, n_test_per_defect=2))
    trainings: list[int] = []
    real_measure = measurement.measure

    def counted(*args):
        trainings.append(len(args[-1]))
        return real_measure(*args)

    monkeypatch.setattr(sweep, "measure", counted)
    options = ["--models", "SyntheticDefectMetric", "--metric-epochs", "1", "--in-process"]
    run(root, tmp_path / "out", *options, "--metric-scorer", "cosine", "lof")
    csv_path = tmp_path / "out" / "results.csv"
    cosine, lof = csv.DictReader(csv_path.open())
    assert trainings == [2], "one training for both scorers"
    assert cosine["settings"] == "scorer=cosine epochs=1"
    assert lof["settings"] == "scorer=lof epochs=1"
    assert cosine["error"] == lof["error"] == ""
    assert cosine["fit_s"] == lof["fit_s"]
    for metric in ("pixel_AUROC", "pixel_AUPRO"):  # the map does not depend on the scorer: the same network
        assert cosine[metric] == lof[metric]
    assert float(lof["infer_ms_per_image"]) > 0

    with csv_path.open() as handle:
        header, first, _ = handle.readlines()
    csv_path.write_text(header + first)  # the lof row is lost: only it is measured again, the cosine row kept
    run(root, tmp_path / "out", *options, "--metric-scorer", "cosine", "lof")
    rows = list(csv.DictReader(csv_path.open()))
    assert [row["settings"] for row in rows] == ["scorer=cosine epochs=1", "scorer=lof epochs=1"]
    assert rows[1]["pixel_AUROC"] == cosine["pixel_AUROC"]
    run(root, tmp_path / "out", *options, "--metric-scorer", "cosine", "lof")
    assert trainings == [2, 2], "nothing left to measure"


def test_synthetic_defect_metric_gets_the_run_backbone_and_its_options():
    options = ["--defect-kinds", "line", "--metric-loss", "l2_softmax", "--metric-scorer", "lof"]
    options += ["--metric-epochs", "3", "--metric-lr", "0.001"]
    options += ["--metric-map", "grad_cam", "--metric-map-layer", "layer3", "--metric-seed", "2"]
    args = parse_args(["--root", "x", "--categories", "c", *SMOKE, *options])
    setup = sweep.setup_from(args)
    model = construction.build_model("SyntheticDefectMetric", setup, floor_channels=0)
    assert model.model.backbone == "resnet18"
    assert model.defect_kinds == ["line"]
    assert model.model.scorer == "lof"
    assert model.max_epochs == 3
    assert model.learning_rate == 0.001
    assert type(model.model.head).__name__ == "L2SoftmaxHead"
    assert (model.model.anomaly_map, model.model.grad_cam_layer) == ("grad_cam", "layer3")
    assert model.seed == 2
    settings = construction.settings_of("SyntheticDefectMetric", setup)
    expected = "kinds=line loss=l2_softmax scorer=lof epochs=3 lr=0.001 map=grad_cam map_layer=layer3 seed=2"
    assert settings == expected
    assert construction.settings_of("FeatureRidge", setup) == "", "the options are SyntheticDefectMetric's only"


def test_feature_ridge_gets_its_head_and_fit_precision_and_other_models_do_not():
    options = ["--feature-ridge-head", "gaussian", "--feature-ridge-fit-precision", "float32"]
    args = parse_args(["--root", "x", "--categories", "c", *SMOKE, *options])
    setup = sweep.setup_from(args)
    model = construction.build_model("FeatureRidge", setup, floor_channels=0)
    assert model.model.settings["head"] == "gaussian"
    assert model.model.settings["fit_precision"] == "float32"
    assert construction.settings_of("FeatureRidge", setup) == "head=gaussian fit=float32"
    assert construction.settings_of("Padim", setup) == ""
    assert construction.settings_of("SyntheticDefectMetric", setup) == ""


def test_feature_ridge_gets_its_kept_channels_and_padim_does_not():
    options = ["--feature-ridge-head", "local", "--feature-ridge-channels", "48", "96"]
    args = parse_args(["--root", "x", "--categories", "c", *SMOKE, *options])
    setup = sweep.setup_from(args)
    model = construction.build_model("FeatureRidge", setup, floor_channels=0)
    assert model.model.settings["channels"] == [48, 96]
    assert construction.settings_of("FeatureRidge", setup) == "head=local channels=48+96"
    assert construction.settings_of("Padim", setup) == ""


@pytest.mark.parametrize(
    ("option", "accepted"),
    [
        (f"--feature-ridge-{name.replace('_', '-')}", BY_NAME[name].choices)
        for name in ("head", "reference", "fit_precision")
    ],
)
def test_benchmark_offers_every_feature_ridge_choice_and_no_other(option, accepted):
    """The options are listed without importing torch, so this keeps the two lists from drifting apart."""
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    for value in accepted:
        assert getattr(parser.parse_args([option, value]), option[2:].replace("-", "_")) == value
    with pytest.raises(SystemExit):
        parser.parse_args([option, "no-such-choice"])
    offered = parser.format_help().split(option, 1)[1].split("{", 1)[1].split("}", 1)[0].split(",")
    assert sorted(offered) == sorted(accepted)


def test_patchcore_on_linux_with_default_malloc_settings_gets_the_allocator_notice():
    notice = sweep.allocator_notice(["FeatureRidge", "Patchcore"], "linux", {})
    assert notice is not None
    assert "MALLOC_MMAP_THRESHOLD_=65536" in notice
    assert sweep.allocator_notice(["Patchcore"], "linux", {"MALLOC_MMAP_THRESHOLD_": "65536"}) is None
    assert sweep.allocator_notice(["Patchcore"], "linux", {"MALLOC_TRIM_THRESHOLD_": "0"}) is None
    assert sweep.allocator_notice(["Patchcore"], "darwin", {}) is None
    assert sweep.allocator_notice(["FeatureRidge", "Padim"], "linux", {}) is None
