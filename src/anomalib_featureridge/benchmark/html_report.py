"""``report.html``: the benchmark's comparison as a line engineer looks at it, part by part.

Built from ``results.csv`` and the per-image records beside it (``images/*.npz``, kept during the
benchmark's test pass), so ``anomalib-featureridge report RESULTS_DIR`` rebuilds it from a finished
run without scoring anything again. One static page, no server and no network: the curves and
cost charts are embedded PNGs, the histograms inline SVG, and the pictures (each test image with
its ground-truth outline, and each model's heatmap over it on one colour scale per model) JPEG
files in ``report_files/`` beside it. A little JavaScript (``report_page.js``) moves the thresholds
when the false-alarm rate changes (also ``?far=0.1`` in the URL), and with them the miss and
false-alarm counts, the recall per defect type and the gallery's order (``&sort=0&defect=scratch``
in the URL sort by the first model and show one defect type).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import shutil
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import matplotlib as mpl
import numpy as np
from PIL import Image
from scipy import ndimage

mpl.use("Agg")
import matplotlib.pyplot as plt

from anomalib_featureridge.benchmark import page_figures, per_image
from anomalib_featureridge.benchmark.harness import read_rows
from anomalib_featureridge.benchmark.report import Row, _with_series, markdown

PICTURE_SIDE = 384
FILES_DIR = "report_files"
DEFAULT_RATE = 0.05
OUTLINE = np.array([0, 255, 0], dtype=np.uint8)
COLOURS = plt.get_cmap("tab10")
TESTED_MODES = ("full", "few-shot")


@dataclass
class Entry:
    """One model's row in a group and what its test pass kept, restricted to the group's images."""

    series: str
    row: Row
    record: per_image.Record


@dataclass
class Group:
    """The rows compared with each other (mode, category, training-set size) on the same test images."""

    key: str
    title: str
    rows: list[Row]
    entries: list[Entry]
    paths: list[str]
    mask_paths: list[str]
    labels: np.ndarray
    masks: np.ndarray | None
    defects: list[str]


def _defect_type(path: str, label: int) -> str:
    """The defect folder an image comes from (MVTec and Folder layouts: its parent folder)."""
    return "good" if label == 0 else Path(path).parent.name


def _restricted(record: per_image.Record, paths: list[str]) -> per_image.Record:
    """The record's images in the order of ``paths``."""
    where = {path: index for index, path in enumerate(record.paths)}
    order = np.array([where[path] for path in paths], dtype=np.int64)
    return per_image.Record(
        scores=record.scores[order],
        labels=record.labels[order],
        maps=None if record.maps is None else record.maps[order],
        masks=None if record.masks is None else record.masks[order],
        paths=list(paths),
        mask_paths=[record.mask_paths[index] for index in order],
        meta=record.meta,
    )


def collect(rows: list[Row], output: Path) -> list[Group]:
    """The tested groups of the CSV whose rows have records, each on the images every one of them saw."""
    tested = _with_series([row for row in rows if row["mode"] in TESTED_MODES and not row["error"]])
    by_group: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in tested:
        by_group[row["mode"], row["category"], row["n_train"]].append(row)
    groups = []
    for group_key, group_rows in by_group.items():
        mode, category, n_train = group_key
        loaded = [(row, per_image.images_path(output, row)) for row in group_rows]
        loaded = [(row, per_image.load(path)) for row, path in loaded if path.is_file()]
        if not loaded:
            continue
        shared = set.intersection(*(set(record.paths) for _, record in loaded))
        paths = [path for path in loaded[0][1].paths if path in shared]
        entries = [Entry(row["series"], row, _restricted(record, paths)) for row, record in loaded]
        first = entries[0].record
        title = category if mode == "full" else f"{category}, {mode} with {n_train} training images"
        groups.append(
            Group(
                key=f"g{len(groups)}",
                title=title,
                rows=[row for row in rows if (row["mode"], row["category"], row["n_train"]) == group_key],
                entries=entries,
                paths=paths,
                mask_paths=first.mask_paths,
                labels=first.labels,
                masks=next((entry.record.masks for entry in entries if entry.record.masks is not None), None),
                defects=[_defect_type(path, int(label)) for path, label in zip(paths, first.labels, strict=True)],
            )
        )
    return groups


def _png(figure: plt.Figure) -> str:
    """A figure as an ``<img>`` with an embedded PNG."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return f'<img class="chart" alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def curves(group: Group) -> str:
    """Image ROC and pixel PRO (to the FPR limit) of every model in one figure."""
    figure, (roc_axis, pro_axis) = plt.subplots(1, 2, figsize=(9, 3.6))
    for index, entry in enumerate(group.entries):
        record = entry.record
        fpr, tpr = page_figures.roc_curve(record.scores, record.labels)
        area = page_figures.auroc(record.scores, record.labels)
        label = entry.series + ("" if area is None else f" ({area:.3f})")
        roc_axis.plot(fpr, tpr, color=COLOURS(index), label=label)
        pro = None
        if record.maps is not None and group.masks is not None:
            pro = page_figures.pro_curve(record.maps, group.masks)
        if pro is not None:
            pro_axis.plot(pro[0], pro[1], color=COLOURS(index), label=f"{entry.series} ({pro[2]:.3f})")
    roc_axis.plot([0, 1], [0, 1], color="#bbb", linestyle=":")
    roc_axis.set(title="image ROC (AUROC)", xlabel="false-positive rate", ylabel="true-positive rate")
    pro_axis.set(
        title=f"pixel PRO to FPR {page_figures.PRO_FPR_LIMIT} (normalised area)",
        xlabel=f"pixel false-positive rate ({per_image.MAP_SIDE} px maps)",
        ylabel="per-region overlap",
        xlim=(0, page_figures.PRO_FPR_LIMIT),
        ylim=(0, 1.02),
    )
    for axis in (roc_axis, pro_axis):
        if axis.lines:
            axis.legend(fontsize="small", loc="lower right")
    return _png(figure)


def costs(group: Group) -> str:
    """Fit time, inference per image and exported size of each model, as small bars."""
    fields = (("fit s", "fit_s"), ("inference ms / image", "infer_ms_per_image"), ("model MiB", "model_mib"))
    figure, axes = plt.subplots(1, 3, figsize=(9, 2.2))
    names = [entry.series for entry in group.entries]
    for axis, (title, field) in zip(axes, fields, strict=True):
        values = [float(entry.row[field]) if entry.row.get(field) else np.nan for entry in group.entries]
        axis.barh(names, values, color=[COLOURS(i) for i in range(len(names))])
        axis.invert_yaxis()
        axis.set_title(title, fontsize="medium")
        for position, value in enumerate(values):
            if not np.isnan(value):
                axis.text(value, position, f" {value:g}", va="center", fontsize="small")
        axis.margins(x=0.3)
    return _png(figure)


def histogram(group: Group, model: int, threshold: float) -> str:
    """Inline SVG: the good and defective test scores of one model, with a threshold line the page moves."""
    scores, labels = group.entries[model].record.scores, group.labels
    low, high = float(scores.min()), float(scores.max())
    high = high if high > low else low + 1.0
    edges = np.linspace(low, high, 25)
    width, height, left, bottom = 320, 110, 10, 92
    good, bad = np.histogram(scores[labels == 0], edges)[0], np.histogram(scores[labels == 1], edges)[0]
    tallest = max(int(good.max(initial=0)), int(bad.max(initial=0)), 1)
    step = (width - 2 * left) / (len(edges) - 1)
    bars = []
    for counts, colour in ((good, "#3b7dd8"), (bad, "#e4572e")):
        for index, count in enumerate(counts):
            if count:
                bar_height = 80 * count / tallest
                bars.append(
                    f'<rect x="{left + index * step:.1f}" y="{bottom - bar_height:.1f}" width="{step:.1f}" '
                    f'height="{bar_height:.1f}" fill="{colour}" fill-opacity="0.55"/>'
                )
    x = left + (min(max(threshold, low), high) - low) / (high - low) * (width - 2 * left)
    return (
        f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'data-low="{low!r}" data-high="{high!r}" data-left="{left}" data-span="{width - 2 * left}">'
        + "".join(bars)
        + f'<line x1="{left}" x2="{width - left}" y1="{bottom}" y2="{bottom}" stroke="#555"/>'
        + f'<text x="{left}" y="{height - 4}" font-size="10">{low:.4g}</text>'
        + f'<text x="{width - left}" y="{height - 4}" font-size="10" text-anchor="end">{high:.4g}</text>'
        + f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="6" y2="{bottom}" stroke="#111" '
        'stroke-width="2" stroke-dasharray="4 2"/></svg>'
    )


def _read_picture(path: str, side: int) -> np.ndarray | None:
    """An image file as RGB, fitted into ``side`` x ``side``; None when it cannot be read (moved data)."""
    try:
        with Image.open(path) as image:
            picture = image.convert("RGB")
    except (OSError, ValueError):
        return None
    picture.thumbnail((side, side))
    return np.asarray(picture)


def _outline(mask_path: str, coverage: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The ground truth's boundary at ``shape``: from the mask file, else from the kept coverage."""
    mask = None
    if mask_path:
        try:
            with Image.open(mask_path) as image:
                mask = np.asarray(image.convert("L").resize(shape[::-1], Image.Resampling.NEAREST)) > 127
        except (OSError, ValueError):
            mask = None
    if mask is None and coverage is not None:
        mask = np.asarray(Image.fromarray(coverage).resize(shape[::-1], Image.Resampling.BILINEAR)) >= 128
    if mask is None or not mask.any():
        return None
    edge = mask & ~ndimage.binary_erosion(mask)
    return ndimage.binary_dilation(edge)


def _save_jpeg(picture: np.ndarray, path: Path) -> None:
    Image.fromarray(picture).save(path, quality=85)


def pictures(group: Group, folder: Path) -> tuple[list[str], list[list[str]], list[tuple[float, float]]]:
    """Write each image with its outline and each model's heatmap over it; return their relative paths.

    A model's heatmaps share one colour scale (its maps' 1st to 99.9th percentile), so they can be
    compared across images; the scales are returned for the legend.
    """
    folder.mkdir(parents=True, exist_ok=True)
    colour_map = plt.get_cmap("inferno")
    scales = []
    for entry in group.entries:
        maps = entry.record.maps
        low, high = (0.0, 1.0) if maps is None else (float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9)))
        scales.append((low, high if high > low else low + 1e-6))
    images, heatmaps = [], []
    relative = folder.relative_to(folder.parent.parent)
    for index, path in enumerate(group.paths):
        picture = _read_picture(path, PICTURE_SIDE)
        if picture is None:  # the data set moved: the maps alone, on grey
            picture = np.full((PICTURE_SIDE, PICTURE_SIDE, 3), 128, dtype=np.uint8)
        coverage = None if group.masks is None else group.masks[index]
        edge = _outline(group.mask_paths[index], coverage, picture.shape[:2])
        shown = picture.copy()
        if edge is not None:
            shown[edge] = OUTLINE
        _save_jpeg(shown, folder / f"{index}.jpg")
        images.append(f"{relative}/{index}.jpg")
        per_model = []
        for model, entry in enumerate(group.entries):
            if entry.record.maps is None:
                per_model.append("")
                continue
            heat = Image.fromarray(entry.record.maps[index].astype(np.float32), mode="F")
            heat = np.asarray(heat.resize(picture.shape[1::-1], Image.Resampling.BILINEAR))
            low, high = scales[model]
            coloured = colour_map(np.clip((heat - low) / (high - low), 0, 1))[..., :3] * 255
            blended = (0.45 * picture + 0.55 * coloured).astype(np.uint8)
            if edge is not None:
                blended[edge] = OUTLINE
            _save_jpeg(blended, folder / f"{index}-{model}.jpg")
            per_model.append(f"{relative}/{index}-{model}.jpg")
        heatmaps.append(per_model)
    return images, heatmaps, scales


def _table(markdown_text: str) -> str:
    """The Markdown tables of ``results.md`` as HTML."""
    lines = [line for line in markdown_text.splitlines() if line.startswith("|")]
    if not lines:
        return ""
    cells = [[html.escape(cell.strip()) for cell in line.strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{cell}</th>" for cell in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in cells[2:])
    return f'<div class="scroll"><table class="figures"><tr>{head}</tr>{body}</table></div>'


def _format(value: float) -> str:
    return f"{value:.4g}"


def section(group: Group, folder: Path, rate: float) -> tuple[str, dict]:
    """One category's part of the page, and its data for the page's script."""
    key, labels = group.key, group.labels
    scores = [entry.record.scores for entry in group.entries]
    thresholds = [page_figures.threshold_at(s, labels, rate) for s in scores]
    names = [entry.series for entry in group.entries]
    images, heatmaps, scales = pictures(group, folder / key)
    parts = [f'<section id="{key}"><h2>{html.escape(group.title)}</h2>']
    parts += ["<h3>Figures</h3>", _table(markdown(group.rows)), "<h3>Curves</h3>", curves(group)]

    parts.append(
        f"<h3>Scores and thresholds</h3><p>Good (blue) and defective (red) test images. Each model's threshold "
        f'flags at most the chosen share of its good test images (now <span class="rate-text">{rate:g}</span>).</p>'
        '<div class="models">'
    )
    n_good, n_bad = int((labels == 0).sum()), int((labels == 1).sum())
    for model, name in enumerate(names):
        threshold, misses, alarms = page_figures.counts_at(scores[model], labels, rate)
        parts.append(
            f'<div class="model-panel"><h4 style="color:{mpl.colors.to_hex(COLOURS(model))}">{html.escape(name)}</h4>'
            + histogram(group, model, threshold)
            + f'<p>threshold <span id="{key}-m{model}-threshold">{_format(threshold)}</span>: '
            f'<b><span id="{key}-m{model}-misses">{misses}</span></b> of {n_bad} defective missed, '
            f'<b><span id="{key}-m{model}-alarms">{alarms}</span></b> of {n_good} good flagged</p></div>'
        )
    parts.append("</div>")

    kinds = sorted({d for d in group.defects if d != "good"})
    header = "".join(f'<th colspan="2">{html.escape(name)}</th>' for name in names)
    sub = "".join("<th>image AUROC</th><th>recall</th>" for _ in names)
    parts.append(
        "<h3>Per defect type</h3><p>AUROC of each defect folder against all good test images; recall at the "
        f'threshold above.</p><table class="figures"><tr><th rowspan="2">defect</th><th rowspan="2">images</th>'
        f"{header}</tr><tr>{sub}</tr>"
    )
    defects = np.array(group.defects)
    for kind_index, kind in enumerate(kinds):
        chosen = (defects == kind) | (labels == 0)
        cells = []
        for model in range(len(names)):
            area = page_figures.auroc(scores[model][chosen], labels[chosen])
            caught = int((scores[model][defects == kind] > thresholds[model]).sum())
            recall = caught / int((defects == kind).sum())
            cells.append(
                f"<td>{'' if area is None else f'{area:.3f}'}</td>"
                f'<td id="{key}-d{kind_index}-m{model}-recall">{recall:.2f}</td>'
            )
        parts.append(f"<tr><td>{html.escape(kind)}</td><td>{int((defects == kind).sum())}</td>{''.join(cells)}</tr>")
    parts.append("</table>")

    options = "".join(f'<option value="{html.escape(kind)}">{html.escape(kind)}</option>' for kind in kinds)
    sort_options = "".join(f'<option value="{m}">{html.escape(name)}</option>' for m, name in enumerate(names))
    legend = " ".join(
        f"<span>{html.escape(name)}: {_format(low)} to {_format(high)}</span>"
        for name, (low, high) in zip(names, scales, strict=True)
    )
    parts.append(
        "<h3>Gallery</h3><p>Worst first: the defective images missed (by the most models, the furthest below "
        "a threshold first), then the good images with the highest scores. Green: the ground truth. Heatmap "
        f"colour scale per model (inferno, dark to bright): {legend}. Click an image for a full-size view.</p>"
        f'<p class="controls">defect type <select class="filter" data-group="{key}"><option value="">all</option>'
        f'<option value="good">good</option>{options}</select> sort by <select class="sort" data-group="{key}">'
        f'<option value="">all models</option>{sort_options}</select></p><div class="gallery" id="{key}-gallery">'
    )
    order = page_figures.gallery_order(scores, labels, thresholds)
    for index in order:
        figures = [f'<figure><img loading="lazy" alt="" src="{images[index]}"><figcaption>image</figcaption></figure>']
        for model, name in enumerate(names):
            source = heatmaps[index][model]
            picture = f'<img loading="lazy" alt="" src="{source}">' if source else '<div class="no-map">no map</div>'
            figures.append(
                f'<figure class="verdict" data-model="{model}">{picture}<figcaption>{html.escape(name)} '
                f"{_format(float(scores[model][index]))}</figcaption></figure>"
            )
        name = f"{Path(group.paths[index]).parent.name}/{Path(group.paths[index]).name}"
        parts.append(
            f'<div class="card" data-index="{index}" data-defect="{html.escape(group.defects[index])}" '
            f'data-label="{int(labels[index])}"><div class="name">{html.escape(name)}</div>{"".join(figures)}</div>'
        )
    parts.append("</div>")
    parts += ["<h3>Costs</h3>", costs(group), "</section>"]
    data = {
        "key": key,
        "models": names,
        "scores": [[float(s) for s in model_scores] for model_scores in scores],
        "labels": [int(label) for label in labels],
        "defects": group.defects,
        "kinds": kinds,
    }
    return "\n".join(parts), data


def _machines(groups: list[Group]) -> str:
    """The machines and versions the rows were measured with, and the cost of keeping the per-image records."""
    seen: dict[str, None] = {}
    lines = []
    for group in groups:
        for entry in group.entries:
            meta = dict(entry.record.meta)
            record_s, test_s = meta.pop("record_s", None), meta.pop("test_s", None)
            seen.setdefault(", ".join(f"{name} {value}" for name, value in meta.items()), None)
            if record_s is not None and test_s:
                lines.append(
                    f"<li>{html.escape(group.title)}, {html.escape(entry.series)}: keeping the per-image record took "
                    f"{record_s:.3g} s of the test pass's {test_s:.3g} s ({100 * record_s / test_s:.2g} %)</li>"
                )
    machines = "".join(f"<li>{html.escape(machine)}</li>" for machine in seen)
    return f"<h2>Machine and versions</h2><ul>{machines}</ul><ul>{''.join(lines)}</ul>"


def _json(value: object) -> str:
    """JSON that cannot end the ``<script>`` element it sits in."""
    return json.dumps(value).replace("</", "<\\/")


def build(output: Path, rate: float = DEFAULT_RATE, target: Path | None = None) -> Path:
    """Write ``report.html`` (and its pictures in ``report_files/``) for the run in ``output``."""
    target = target or output / "report.html"
    folder = target.parent / FILES_DIR
    if folder.exists():
        shutil.rmtree(folder)
    rows = read_rows(output / "results.csv")
    groups = collect(rows, output)
    sections, data = [], []
    for group in groups:
        text, group_data = section(group, folder, rate)
        sections.append(text)
        data.append(group_data)
    if not groups:
        sections.append(
            "<p>No tested row of this run has a per-image record (images/*.npz): run the benchmark's full or "
            "few-shot rows with this version.</p>"
        )
    page = resources.files("anomalib_featureridge.benchmark")
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    navigation = " ".join(f'<a href="#{group.key}">{html.escape(group.title)}</a>' for group in groups)
    text = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Benchmark report: {html.escape(output.name)}</title>"
        '<script>window.pageErrors=[];window.addEventListener("error",function(e){window.pageErrors.push(String('
        'e.message));var p=document.getElementById("page-errors");if(p){p.textContent=window.pageErrors.join("\\n");'
        "}});</script>"
        f"<style>{page.joinpath('report_page.css').read_text()}</style></head><body>"
        f"<header><h1>Benchmark report: {html.escape(output.name)}</h1><p>Built {stamp} from "
        f"{html.escape(str(output.resolve() / 'results.csv'))}. {navigation}</p>"
        '<p class="controls">false-alarm rate <input id="rate-slider" type="range" min="0" max="0.5" step="0.01" '
        f'value="{rate}"> <input id="rate" type="number" min="0" max="0.99" step="0.01" value="{rate}"> '
        f'(now <span id="rate-value">{rate:g}</span>; also <code>?far=0.1</code> in the address)</p>'
        '<pre id="page-errors"></pre></header>'
        + "\n".join(sections)
        + _machines(groups)
        + '<div id="viewer" hidden><div id="viewer-body"></div><p>click to close</p></div>'
        + f'<script type="application/json" id="report-data">{_json({"rate": rate, "groups": data})}</script>'
        + f"<script>{page.joinpath('report_page.js').read_text()}</script></body></html>\n"
    )
    target.write_text(text)
    return target
