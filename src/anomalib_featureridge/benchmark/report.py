"""Markdown tables and plots rebuilt from the rows the benchmark appended to ``results.csv``.

Rebuilt from the whole CSV, never from one run, so that a resumed or extended benchmark reports every row.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

Row = dict[str, str]
REFERENCE = "Patchcore"
COLUMNS = (
    ("image AUROC", "image_AUROC"),
    ("pixel AUROC", "pixel_AUROC"),
    ("pixel AUPRO", "pixel_AUPRO"),
    ("fit s", "fit_s"),
    ("infer ms/img", "infer_ms_per_image"),
    ("backbone ms/img", "backbone_ms_per_image"),
    ("peak RSS MiB", "peak_rss_fit_mib"),
    ("model MiB", "model_mib"),
    ("head MiB", "head_mib"),
)


def _number(row: Row, field: str) -> float | None:
    value = row.get(field, "")
    return float(value) if value not in {"", None} else None


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if value is not None and reference else ""


def _cell(row: Row, field: str) -> str:
    value = _number(row, field)
    return "" if value is None else f"{value:g}"


def _over_floor(row: Row) -> float | None:
    """Inference time in units of the same row's backbone time, which cancels machine load between rows."""
    infer, floor = _number(row, "infer_ms_per_image"), _number(row, "backbone_ms_per_image")
    return infer / floor if infer is not None and floor else None


def _group(rows: list[Row]) -> dict[tuple[str, str, str], list[Row]]:
    """Rows by (mode, category, n_train): the rows that are compared with each other."""
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[row["mode"], row["category"], row["n_train"]].append(row)
    return groups


def markdown(rows: list[Row]) -> str:
    """One table per mode; ratios are against Patchcore's row of the same mode, category and size.

    Rows are measured minutes apart, so on a shared machine their raw timings see different
    loads. The load-corrected inference ratio compares each model's time over its own row's
    backbone time (the same backbone module, timed in alternation with the model).
    """
    lines: list[str] = []
    header = (
        "| model | category | n train | settings | "
        + " | ".join(title for title, _ in COLUMNS)
        + " | infer / backbone | infer vs Patchcore | infer vs Patchcore, load-corrected | fit vs Patchcore | error |"
    )
    for mode in ("full", "scaling", "few-shot"):
        mode_rows = [row for row in rows if row["mode"] == mode]
        if not mode_rows:
            continue
        lines += ["", f"### {mode}", "", header, "|" + "---|" * (header.count("|") - 1)]
        for (_, _, _), group in _group(mode_rows).items():
            reference = next((row for row in group if row["model"] == REFERENCE and not row["error"]), None)
            for row in group:
                infer = _number(row, "infer_ms_per_image")
                over_floor = _over_floor(row)
                ratios = [
                    _ratio(infer, _number(row, "backbone_ms_per_image")),
                    _ratio(infer, reference and _number(reference, "infer_ms_per_image")),
                    _ratio(over_floor, reference and _over_floor(reference)),
                    _ratio(_number(row, "fit_s"), reference and _number(reference, "fit_s")),
                ]
                cells = [row["model"], row["category"], row["n_train"], row["settings"]]
                cells += [_cell(row, field) for _, field in COLUMNS] + ratios + [row["error"]]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines).lstrip() + "\n"


def _with_series(rows: list[Row]) -> list[Row]:
    """Copies of the rows naming their plot series: the model, with its settings where one model has several."""
    settings: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        settings[row["model"]].add(row["settings"])
    return [
        row
        | {"series": f"{row['model']} {row['settings']}".strip() if len(settings[row["model"]]) > 1 else row["model"]}
        for row in rows
    ]


def _bars(axis: plt.Axes, rows: list[Row], field: str, title: str) -> None:
    """Grouped bars: one group per category, one bar per series; a value not measured gets no bar, not a zero."""
    categories = sorted({row["category"] for row in rows})
    models = list(dict.fromkeys(row["series"] for row in rows))
    width = 0.8 / max(len(models), 1)
    for offset, model in enumerate(models):
        values = [
            next((_number(r, field) for r in rows if r["series"] == model and r["category"] == c), None)
            for c in categories
        ]
        heights = [math.nan if value is None else value for value in values]
        axis.bar([i + offset * width for i in range(len(categories))], heights, width, label=model)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(categories))], categories)
    axis.set_title(title)


def _lines(axis: plt.Axes, rows: list[Row], field: str, title: str, category: str | None = None) -> None:
    """One line per series over the training-set size."""
    for model in dict.fromkeys(row["series"] for row in rows):
        points = sorted(
            (int(row["n_train"]), _number(row, field))
            for row in rows
            if row["series"] == model and _number(row, field) is not None and category in {None, row["category"]}
        )
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=model)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("training images")
    axis.set_title(title)


def plots(rows: list[Row], output: Path) -> list[Path]:
    """Accuracy per category, cost per model, scaling and few-shot curves; returns the files written."""
    written: list[Path] = []
    ok = _with_series([row for row in rows if not row["error"]])

    def save(figure: plt.Figure, name: str) -> None:
        axes = figure.axes
        axes[0].legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(output / name, dpi=110)
        plt.close(figure)
        written.append(output / name)

    full = [row for row in ok if row["mode"] == "full"]
    if full:
        figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for axis, (title, field) in zip(axes, COLUMNS[:3], strict=True):
            _bars(axis, full, field, title)
        save(figure, "accuracy.png")
        figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
        for axis, (title, field) in zip(axes, [COLUMNS[3], COLUMNS[4], COLUMNS[6], COLUMNS[7]], strict=True):
            _bars(axis, full, field, title)
        save(figure, "cost.png")
    scaling = [row for row in ok if row["mode"] == "scaling"]
    if scaling:
        figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for axis, (title, field) in zip(axes, [COLUMNS[3], COLUMNS[6], COLUMNS[7]], strict=True):
            _lines(axis, scaling, field, title)
        save(figure, "scaling.png")
    few_shot = [row for row in ok if row["mode"] == "few-shot"]
    categories = sorted({row["category"] for row in few_shot})
    if few_shot:
        figure, axes = plt.subplots(len(categories), 3, figsize=(13, 3.6 * len(categories)), squeeze=False)
        for axes_row, category in zip(axes, categories, strict=True):
            for axis, (title, field) in zip(axes_row, COLUMNS[:3], strict=True):
                _lines(axis, few_shot, field, f"{category}: {title}", category)
        save(figure, "few_shot.png")
    return written


def write_report(rows: list[Row], output: Path) -> None:
    """Write ``results.md`` and the plots next to the CSV."""
    (output / "results.md").write_text(markdown(rows))
    plots(rows, output)
