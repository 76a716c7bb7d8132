"""The measurements behind tools/: each module's main function on tiny data, checked by what it returns."""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import pytest
import torch

from anomalib_featureridge.benchmark import (
    export_latency,
    fit_scale,
    inference_scale,
    threshold_study,
    winclip_paper,
    winclip_speed,
)


@pytest.fixture(scope="module")
def random_resnet18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random resnet18 state dict: the tools take weights from a file, never from the network."""
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return path


def table_cells(table: str) -> list[list[str]]:
    """The cells of a Markdown table's data rows (header and rule left out)."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines() if line[:2] == "| "]
    return rows[1:]


def table_rows(table: str) -> dict[str, list[str]]:
    """A Markdown table's data rows by their first cell."""
    return {row[0]: row[1:] for row in table_cells(table)}


def test_inference_scale_report_puts_each_module_over_the_backbone_and_the_ridge_heads():
    args = argparse.Namespace(
        backbone="resnet18",
        layers=["layer2", "layer3"],
        image_size=64,
        train_images=[4],
        coreset_ratio=0.5,
        ranks=[16],
        batch=2,
        warmup=0,
        repeats=1,
    )
    rows = table_rows(inference_scale.report(args))
    assert list(rows) == ["backbone", "FeatureRidge", "FeatureRidge rank 16", "Patchcore, 4 training images"]
    # 64 px over resnet18 layer2's stride 8: 64 patches per image, half of 4 images' kept
    assert rows["Patchcore, 4 training images"][0] == "128"
    assert rows["backbone"][2] == "1.00x"  # the backbone over itself
    for name in ("FeatureRidge", "FeatureRidge rank 16"):
        own_ratio = rows[name][3 + ["FeatureRidge", "FeatureRidge rank 16"].index(name)]
        assert own_ratio == "1.00x"
        assert float(rows[name][1]) > 0


def test_winclip_speed_times_both_models_on_the_same_few_shot_map(tiny_clip):
    args = argparse.Namespace(
        backbone="tiny-clip", pretrained=str(tiny_clip["checkpoint"]), k_shot=1, repeats=1, variants=["paper", "scale2"]
    )
    comparison = winclip_speed.compare(args)
    assert comparison.few_shot_difference is not None
    assert comparison.few_shot_difference < 1e-4  # the same weights and references give the same map
    assert set(comparison.median_ms) == {winclip_speed.BASELINE, "WinClipPlus paper", "WinClipPlus scale2"}
    assert all(value > 0 for value in comparison.median_ms.values())
    args.threads = 1
    table = winclip_speed.markdown(comparison, args)
    assert table.startswith("few-shot association map, max |WinClipPlus - WinClip|: ")
    rows = table_rows(table)
    assert rows["anomalib WinClip"] == ["(2, 3)", "1", f"{comparison.median_ms[winclip_speed.BASELINE]:.0f}", "1.00"]
    ratio = comparison.median_ms["WinClipPlus scale2"] / comparison.median_ms[winclip_speed.BASELINE]
    assert rows["WinClipPlus scale2"][:2] == ["(2,)", "1"]
    assert rows["WinClipPlus scale2"][3] == f"{ratio:.2f}"
    zero_shot = argparse.Namespace(**{**vars(args), "k_shot": 0, "variants": ["paper"]})
    assert winclip_speed.compare(zero_shot).few_shot_difference is None


@pytest.fixture(scope="module")
def few_images_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller generated category than ``synthetic_root``: each export is checked on every test image."""
    from anomalib_featureridge.data import SyntheticSpec, make_synthetic_dataset

    root = tmp_path_factory.mktemp("few_images")
    make_synthetic_dataset(root, spec=SyntheticSpec(image_size=64, n_train=4, n_test_good=2, n_test_per_defect=1))
    return root


def test_export_latency_times_every_runtime_of_every_model_and_checks_parity(few_images_root, random_resnet18):
    args = argparse.Namespace(
        root=few_images_root,
        category="synthetic",
        models=["FeatureRidge"],  # one model: every export traces the whole graph twice (ONNX, OpenVINO)
        backbone="resnet18",
        layers=["layer2", "layer3"],
        weights=random_resnet18,
        warmup=0,
        repeats=1,
        openvino_precisions=["f32"],
        patchcore_coreset_ratio=0.01,
    )
    results = export_latency.measure(args)
    assert list(results) == ["FeatureRidge"]
    figures = results["FeatureRidge"]
    assert list(figures) == ["torch eager", "onnxruntime", "openvino"]
    assert figures["torch eager"]["parity"] == "0.0e+00 / 0.0e+00 / 0"
    assert figures["torch eager"]["size_mb"] is None
    for runtime in ("onnxruntime", "openvino"):
        score, amap, _ = figures[runtime]["parity"].split(" / ")
        assert float(score) < 1e-3
        assert float(amap) < 1e-3
        assert figures[runtime]["size_mb"] > 0
    assert all(runtime["latency_ms"] > 0 for runtime in figures.values())
    assert {runtime["batch"] for runtime in figures.values()} == {1}  # the FeatureRidge graph takes any batch
    rows = {(cells[0], cells[1]): cells[2:] for cells in table_cells(export_latency.markdown(results, args))}
    onnx_ms = figures["onnxruntime"]["latency_ms"]
    # batch, ms/image, vs the first model's torch eager, vs the same model's torch eager
    assert rows["FeatureRidge", "torch eager"][2:4] == ["1.00x", "1.00x"]
    assert rows["FeatureRidge", "onnxruntime"][:2] == ["1", f"{onnx_ms:.1f}"]
    assert rows["FeatureRidge", "onnxruntime"][3] == f"{onnx_ms / figures['torch eager']['latency_ms']:.2f}x"


def test_threshold_study_rows_count_the_real_test_images_and_are_written(synthetic_root, random_resnet18, tmp_path):
    args = argparse.Namespace(
        root=synthetic_root,
        categories=["synthetic"],
        backbone="resnet18",
        layers=["layer2", "layer3"],
        weights=random_resnet18,
        holdout=0.25,
        rates=[0.05],
        kinds=["line", "distortion", "perlin"],
        seed=0,
        batch_size=8,
        output=tmp_path / "out",
    )
    threshold_rows, auroc_rows = threshold_study.run(args)
    test = threshold_study.labelled_images(synthetic_root / "synthetic" / "test")
    good, defective = sum(label == 0 for _, label, _ in test), sum(label == 1 for _, label, _ in test)
    assert [row["method"] for row in threshold_rows] == [
        "anomalib default (F1 on the test set)",
        "normal quantile @ 0.05 (3 held-out good)",  # 25 % of the 12 training images
        "F1 on synthetic (3 good + 3 synthetic)",
    ]
    for row in threshold_rows:
        assert re.fullmatch(rf"\d\.\d{{3}} \(\d+/{good}\)", row["false_alarm_rate"])
        assert re.fullmatch(rf"\d\.\d{{3}} \(\d+/{defective}\)", row["recall"])
    assert 0 <= float(threshold_rows[1]["pixel_false_alarm_rate"]) <= 1
    (auroc,) = auroc_rows
    assert set(auroc) == {
        "category",
        "real_image_AUROC",
        "synthetic_image_AUROC",
        "synthetic_line_AUROC",
        "synthetic_distortion_AUROC",
        "synthetic_perlin_AUROC",
        "fit_s",
    }
    assert all(0 <= float(value) <= 1 for key, value in auroc.items() if key.endswith("AUROC"))
    columns = dict.fromkeys(key for row in threshold_rows for key in row)  # a row without a column has it empty
    with (args.output / "thresholds.csv").open() as handle:
        assert list(csv.DictReader(handle)) == [{key: row.get(key, "") for key in columns} for row in threshold_rows]
    with (args.output / "auroc.csv").open() as handle:
        assert list(csv.DictReader(handle)) == auroc_rows


def test_fit_scale_fits_every_size_in_its_own_process(tmp_path):
    args = argparse.Namespace(
        images=[6],
        devices=[1],
        image_size=32,
        model_size=32,
        backbone="resnet18",
        layers=["layer2", "layer3"],
        workdir=tmp_path,
    )
    (row,) = fit_scale.run(args)
    assert (row["images"], row["devices"]) == (6, 1)
    assert row["seconds"] > 0
    assert row["peak_mib"] > 0
    saved = torch.load(tmp_path / "statistics_6_1.pt")
    assert row["count"] == float(saved["count"]) > 0
    assert len(list((tmp_path / "data6" / "synthetic" / "train" / "good").iterdir())) == 6


def test_fit_scale_statistics_difference_is_relative_to_the_reference(tmp_path):
    reference = {"count": torch.tensor(4.0, dtype=torch.float64), "sums": torch.tensor([2.0, -8.0])}
    torch.save(reference, tmp_path / "a.pt")
    torch.save(reference, tmp_path / "b.pt")
    assert fit_scale.statistics_difference(tmp_path / "a.pt", tmp_path / "b.pt") == 0
    torch.save({"count": torch.tensor(4.0, dtype=torch.float64), "sums": torch.tensor([2.0, -6.0])}, tmp_path / "c.pt")
    assert fit_scale.statistics_difference(tmp_path / "a.pt", tmp_path / "c.pt") == pytest.approx(0.25)


def test_winclip_paper_reproduce_gives_the_means_beside_the_papers(synthetic_root, tiny_clip, tmp_path, capsys):
    args = argparse.Namespace(
        root=synthetic_root,
        backbone=str(tiny_clip["config"]),
        pretrained=str(tiny_clip["checkpoint"]),
        shots=[0, 1],
        seeds=[0],
        categories=["synthetic"],
        output=tmp_path,
        accelerator="cpu",
    )
    means = winclip_paper.reproduce(args)
    assert list(means) == [0, 1]
    assert all(len(values) == 3 and all(0 <= value <= 100 for value in values) for values in means.values())
    rows = table_rows(capsys.readouterr().out)
    for k_shot, paper in ((0, winclip_paper.PAPER[0]), (1, winclip_paper.PAPER[1])):
        expected = [f"{mean:.1f} ({reference:.1f})" for mean, reference in zip(means[k_shot], paper, strict=True)]
        assert rows[f"{k_shot}-shot"] == expected
