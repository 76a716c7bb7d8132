"""Per-image latency of WinClipPlus against anomalib's WinClip: same backbone, same weights, one run.

Why it is a module of its own: the two models come from different code bases, so a fair timing
needs one of them rebuilt around the other's CLIP image tower (:func:`anomalib_model_with_weights`),
the same class name and reference images for both, and a check that they compute the same
few-shot association map, so that the speed compared is that of the same computation. Both are
timed in alternation on the same pre-processed image (batch 1,
:func:`~anomalib_featureridge.benchmark.harness.interleaved_medians`).
``tools/benchmark_winclip.py`` is its command line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from unittest import mock

import open_clip
import torch
from anomalib.models.image.winclip import torch_model as anomalib_winclip

from anomalib_featureridge.benchmark.harness import interleaved_medians
from anomalib_featureridge.models.win_clip_plus import WinClipPlusModel

VARIANTS = {
    "paper": {"scales": (2, 3), "window_stride": 1},
    "stride2": {"scales": (2, 3), "window_stride": 2},
    "scale2": {"scales": (2,), "window_stride": 1},
    "scale3": {"scales": (3,), "window_stride": 1},
}
BASELINE = "anomalib WinClip (2,3)"


@dataclass(frozen=True)
class Comparison:
    """Median ms per image of every timed model, and the few-shot parity (None when zero-shot)."""

    median_ms: dict[str, float]
    few_shot_difference: float | None


def anomalib_model_with_weights(plus: WinClipPlusModel, backbone: str, scales: tuple[int, ...]) -> torch.nn.Module:
    """The anomalib WinClipModel whose CLIP image tower holds ``plus``'s weights (its text tower stays random)."""
    clip = open_clip.create_model(backbone, pretrained=None)
    clip.visual.load_state_dict(plus.encoder.visual.state_dict())
    transform = open_clip.image_transform(clip.visual.image_size, is_train=False)
    with mock.patch.object(
        anomalib_winclip.open_clip, "create_model_and_transforms", return_value=(clip, None, transform)
    ):
        return anomalib_winclip.WinClipModel(scales=scales).eval()


def compare(args: argparse.Namespace) -> Comparison:
    """Build both models per variant with the same weights, check few-shot parity and time them interleaved."""
    torch.manual_seed(0)
    plus_reference: WinClipPlusModel | None = None
    rows = []
    for variant in args.variants:
        plus = WinClipPlusModel(backbone=args.backbone, pretrained=args.pretrained, **VARIANTS[variant]).eval()
        if plus_reference is None:
            plus_reference = plus
        else:
            plus.encoder.visual.load_state_dict(plus_reference.encoder.visual.state_dict())
        plus.set_class_name("bottle")
        size = plus.image_size
        image = torch.randn(1, 3, *size)
        references = torch.randn(args.k_shot, 3, *size) if args.k_shot else None
        if references is not None:
            plus.set_reference_images(references)
        rows.append((variant, plus, image, references))

    baseline = anomalib_model_with_weights(plus_reference, args.backbone, (2, 3))
    baseline.setup("bottle", rows[0][3])
    image = rows[0][2]
    difference = None
    with torch.no_grad():
        if args.k_shot:
            ours = plus_reference.few_shot_map(*plus_reference.encoder(image)[1:])
            _, windows, patches = baseline.encode_image(image)
            theirs = baseline._compute_few_shot_scores(patches, windows).flatten(1)
            difference = float((ours - theirs).abs().max())
    runs = {BASELINE: partial(baseline, image)}
    runs |= {f"WinClipPlus {variant}": partial(plus, row_image) for variant, plus, row_image, _ in rows}
    seconds = interleaved_medians(runs, warmup=1, repeats=args.repeats, device=torch.device("cpu"))
    return Comparison({name: 1000 * value for name, value in seconds.items()}, difference)


def markdown(comparison: Comparison, args: argparse.Namespace) -> str:
    """The parity line (few-shot) and the table: median ms per image and the ratio to anomalib's WinClip."""
    lines = []
    if comparison.few_shot_difference is not None:
        lines.append(f"few-shot association map, max |WinClipPlus - WinClip|: {comparison.few_shot_difference:.2e}")
    anomalib_ms = comparison.median_ms[BASELINE]
    lines += [
        f"{args.backbone}, k_shot={args.k_shot}, threads={args.threads}, {args.repeats} interleaved rounds, batch 1",
        "| model | scales | window stride | median ms/image | ratio to anomalib WinClip |",
        "|---|---|---|---|---|",
        f"| anomalib WinClip | (2, 3) | 1 | {anomalib_ms:.0f} | 1.00 |",
    ]
    for variant in args.variants:
        median = comparison.median_ms[f"WinClipPlus {variant}"]
        scales, stride = VARIANTS[variant]["scales"], VARIANTS[variant]["window_stride"]
        lines.append(f"| WinClipPlus {variant} | {scales} | {stride} | {median:.0f} | {median / anomalib_ms:.2f} |")
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace) -> str:
    """Compare the models the options ask for, on ``args.threads`` threads; the parity line and the table."""
    torch.set_num_threads(args.threads)
    return markdown(compare(args), args)
