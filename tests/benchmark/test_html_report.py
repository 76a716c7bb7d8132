"""``report.html`` from a tiny benchmark run: its content, and the page's own script in headless Chromium."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from anomalib_featureridge import cli
from anomalib_featureridge.benchmark import page_figures, per_image
from anomalib_featureridge.benchmark.harness import read_rows

SMOKE = ["--backbone", "resnet18", "--layers", "layer2", "layer3", "--random-init", "--batch-size", "4"]
SMOKE += ["--warmup", "0", "--repeats", "1", "--num-workers", "0", "--in-process"]
MODELS = ("FeatureRidge", "Padim")
RATE = 0.05


@pytest.fixture(scope="module")
def tiny_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two models benchmarked on the generated category with ``--report`` (random weights)."""
    output = tmp_path_factory.mktemp("report_run")
    arguments = ["benchmark", "--root", str(synthetic_root), "--categories", "synthetic", "--output", str(output)]
    cli.main([*arguments, "--models", *MODELS, "--report", *SMOKE])
    return output


def records(output: Path) -> dict[str, per_image.Record]:
    """Each row's record, by model."""
    rows = read_rows(output / "results.csv")
    return {row["model"]: per_image.load(per_image.images_path(output, row)) for row in rows}


class PageParser(HTMLParser):
    """The parts of the page the tests read: element texts by id, the gallery cards, the embedded data."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[str, str] = {}
        self.cards: list[dict[str, str]] = []
        self.images: list[str] = []
        self.data = ""
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "div" and "card" in (attributes.get("class") or "").split():
            self.cards.append({k: v or "" for k, v in attributes.items()})
        if tag == "img":
            self.images.append(attributes.get("src") or "")
        if tag == "figure" and self.cards:  # a figure belongs to the card started last
            self.cards[-1].setdefault("figures", "")
            self.cards[-1]["figures"] += (attributes.get("class") or "") + ";"
        if tag not in {"img", "input", "meta", "br", "line", "rect"}:
            self._open.append(attributes.get("id"))

    def handle_endtag(self, tag: str) -> None:
        if tag not in {"img", "input", "meta", "br", "line", "rect"} and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1]:
            self.texts[self._open[-1]] = self.texts.get(self._open[-1], "") + data
            if self._open[-1] == "report-data":
                self.data += data


def parse(text: str) -> PageParser:
    page = PageParser()
    page.feed(text)
    return page


def expected_counts(record: per_image.Record, rate: float) -> tuple[int, int]:
    """Misses and false alarms at ``rate``, computed here from the scores without the package's code."""
    good = np.sort(record.scores[record.labels == 0])[::-1]
    threshold = good[math.floor(len(good) * rate + 1e-9)]
    misses = int(((record.labels == 1) & (record.scores <= threshold)).sum())
    alarms = int(((record.labels == 0) & (record.scores > threshold)).sum())
    return misses, alarms


def test_the_run_keeps_each_test_image_of_each_model(tiny_run):
    kept = records(tiny_run)
    assert set(kept) == set(MODELS)
    for record in kept.values():
        assert len(record.paths) == 10  # 4 good and 2 of each of the 3 defect kinds
        assert record.maps is not None
        assert record.maps.shape == (10, per_image.MAP_SIDE, per_image.MAP_SIDE)
        assert record.masks is not None
        assert record.masks[record.labels == 1].max() == 255
        assert record.masks[record.labels == 0].max() == 0
        assert 0 < record.meta["record_s"] < record.meta["test_s"]
    # the scores are the raw ones, not anomalib's normalised scores clamped to [0, 1]
    assert kept["Padim"].scores.max() > 1


def test_the_report_shows_every_model_and_image_with_the_counts_of_the_scores(tiny_run):
    text = (tiny_run / "report.html").read_text()
    page = parse(text)
    kept = records(tiny_run)
    paths = kept[MODELS[0]].paths
    assert sorted(int(card["data-index"]) for card in page.cards) == list(range(len(paths)))
    for path in paths:
        assert f"{Path(path).parent.name}/{Path(path).name}" in text
    for source in page.images:
        assert source.startswith("data:image/png") or (tiny_run / source).is_file()
    data = json.loads(page.data)["groups"][0]
    assert data["models"] == list(MODELS)
    for model, name in enumerate(MODELS):
        assert f">{name}<" in text
        assert data["scores"][model] == [float(score) for score in kept[name].scores]
        misses, alarms = expected_counts(kept[name], RATE)
        assert (misses, alarms) == page_figures.counts_at(kept[name].scores, kept[name].labels, RATE)[1:]
        assert (int(page.texts[f"g0-m{model}-misses"]), int(page.texts[f"g0-m{model}-alarms"])) == (misses, alarms)
        # each model's heatmap of each image is on the page
        assert sum(source.endswith(f"-{model}.jpg") for source in page.images) == len(paths)
    assert "Machine and versions" in text
    assert "torch" in text


def test_the_report_command_rebuilds_the_page_at_another_rate(tiny_run, tmp_path):
    target = tmp_path / "elsewhere.html"
    assert cli.main(["report", str(tiny_run), "--false-alarm-rate", "0.5", "--output", str(target)]) == 0
    page = parse(target.read_text())
    kept = records(tiny_run)
    for model, name in enumerate(MODELS):
        assert int(page.texts[f"g0-m{model}-alarms"]) == expected_counts(kept[name], 0.5)[1]
    assert (tmp_path / "report_files" / "g0" / "0.jpg").is_file()


def test_the_report_command_refuses_a_folder_without_results(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no results.csv" in capsys.readouterr().err


def test_gallery_order_puts_the_worst_miss_first():
    scores = [np.array([0.1, 0.9, 0.2, 0.5, 0.3]), np.array([0.1, 0.9, 0.6, 0.5, 0.3])]
    labels = np.array([0, 0, 1, 1, 1])
    thresholds = [0.4, 0.4]
    # image 4 is missed by both models, image 2 by the first only; then the good ones, highest first
    assert page_figures.gallery_order(scores, labels, thresholds) == [4, 2, 1, 0, 3]
    assert page_figures.gallery_order(scores, labels, thresholds, selected=1) == [4, 1, 0, 3, 2]


def chromium() -> str:
    """Debian's chromium (or another Chrome on PATH); the browser test is skipped without one."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on PATH: install it (apt-get install chromium) to run the browser test")


def in_browser(page: Path, query: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """Open the page from disk in headless Chromium, console messages on stderr."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    command += [f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000", *extra]
    return subprocess.run(
        [*command, f"{page.as_uri()}?{query}"], capture_output=True, text=True, timeout=180, check=True
    )


def test_the_page_in_a_browser_follows_the_chosen_rate(tiny_run, tmp_path):
    kept = records(tiny_run)
    scores = [kept[name].scores for name in MODELS]
    labels = kept[MODELS[0]].labels
    initial = [expected_counts(kept[name], RATE) for name in MODELS]
    # a rate whose counts differ from those the page was written with, with a miss to put first
    rate = next(
        (
            rate
            for rate in (0.25, 0.5, 0.75, 0.0)
            if [expected_counts(kept[name], rate) for name in MODELS] != initial
            and any(expected_counts(kept[name], rate)[0] for name in MODELS)
        ),
        None,
    )
    assert rate is not None, "the tiny run should have a rate with misses and other counts"
    page_path = tiny_run / "report.html"
    result = in_browser(page_path, f"far={rate}", tmp_path, "--dump-dom")
    consoles = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert not consoles, consoles
    page = parse(result.stdout)
    assert page.texts.get("page-errors", "") == ""
    assert page.texts["rate-value"] == str(rate)
    for model, name in enumerate(MODELS):
        misses, alarms = expected_counts(kept[name], rate)
        assert (int(page.texts[f"g0-m{model}-misses"]), int(page.texts[f"g0-m{model}-alarms"])) == (misses, alarms)
        threshold = page_figures.threshold_at(kept[name].scores, labels, rate)
        assert float(page.texts[f"g0-m{model}-threshold"]) == pytest.approx(threshold, rel=1e-3)
    thresholds = [page_figures.threshold_at(s, labels, rate) for s in scores]
    order = [int(card["data-index"]) for card in page.cards]
    assert order == page_figures.gallery_order(scores, labels, thresholds)
    worst = order[0]
    assert labels[worst] == 1
    assert any(s[worst] <= t for s, t in zip(scores, thresholds, strict=True)), "the first card is a miss"
    assert "verdict miss;" in page.cards[0]["figures"], "and marked as one"

    # the address also picks the model the gallery follows and the defect type it shows
    result = in_browser(page_path, f"far={rate}&sort=1&defect=hole", tmp_path, "--dump-dom")
    page = parse(result.stdout)
    order = [int(card["data-index"]) for card in page.cards]
    assert order == page_figures.gallery_order(scores, labels, thresholds, selected=1)
    shown = [card["data-defect"] for card in page.cards if "hidden" not in card]
    assert shown == ["hole", "hole"]

    screenshot = tmp_path / "report.png"
    in_browser(page_path, f"far={rate}", tmp_path, f"--screenshot={screenshot}")
    assert screenshot.stat().st_size > 10_000
