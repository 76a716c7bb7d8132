"""Per-image latency of WinClipPlus against anomalib's WinClip, same backbone, same weights, one run.

Both torch modules are built around identical CLIP image-tower weights (random by default: the
weights do not change the FLOPs; ``--pretrained`` takes a tag or a local checkpoint file), get
the same class name and, for few-shot, the same reference images. They are timed in interleaved
rounds on the same pre-processed image (batch 1), so machine noise hits both alike; the figures
are medians. A parity line checks that both compute the same few-shot association map.

Example (figures in the model README):
    nice python tools/benchmark_winclip.py --repeats 4 --variants paper stride2 scale2
"""

from __future__ import annotations

import argparse
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


def anomalib_model_with_weights(plus: WinClipPlusModel, backbone: str, scales: tuple[int, ...]) -> torch.nn.Module:
    """The anomalib WinClipModel whose CLIP image tower holds ``plus``'s weights (its text tower stays random)."""
    clip = open_clip.create_model(backbone, pretrained=None)
    clip.visual.load_state_dict(plus.encoder.visual.state_dict())
    transform = open_clip.image_transform(clip.visual.image_size, is_train=False)
    with mock.patch.object(
        anomalib_winclip.open_clip, "create_model_and_transforms", return_value=(clip, None, transform)
    ):
        return anomalib_winclip.WinClipModel(scales=scales).eval()


def main() -> None:
    """Build both models per variant, check few-shot parity, time them interleaved and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-16-plus-240")
    parser.add_argument("--pretrained", default=None, help="open_clip tag or checkpoint file (default: random)")
    parser.add_argument("--k-shot", type=int, default=1, help="reference images (0 = zero-shot)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", nargs="+", default=["paper"], choices=sorted(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    plus_reference: WinClipPlusModel | None = None
    rows = []
    for variant in args.variants:
        settings = VARIANTS[variant]
        plus = WinClipPlusModel(backbone=args.backbone, pretrained=args.pretrained, **settings).eval()
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
        rows.append((variant, plus, settings, image, references))

    baseline = anomalib_model_with_weights(plus_reference, args.backbone, (2, 3))
    baseline.setup("bottle", rows[0][4])
    image = rows[0][3]
    with torch.no_grad():
        if args.k_shot:
            ours = plus_reference.few_shot_map(*plus_reference.encoder(image)[1:])
            _, windows, patches = baseline.encode_image(image)
            theirs = baseline._compute_few_shot_scores(patches, windows).flatten(1)
            print(f"few-shot association map, max |WinClipPlus - WinClip|: {(ours - theirs).abs().max():.2e}")
    runs = {"anomalib WinClip (2,3)": partial(baseline, image)}
    runs |= {f"WinClipPlus {variant}": partial(plus, row_image) for variant, plus, _, row_image, _ in rows}
    seconds = interleaved_medians(runs, warmup=1, repeats=args.repeats, device=torch.device("cpu"))
    median_ms = {name: 1000 * value for name, value in seconds.items()}

    anomalib_ms = median_ms["anomalib WinClip (2,3)"]
    print(f"{args.backbone}, k_shot={args.k_shot}, threads={args.threads}, {args.repeats} interleaved rounds, batch 1")
    print("| model | scales | window stride | median ms/image | ratio to anomalib WinClip |")
    print("|---|---|---|---|---|")
    print(f"| anomalib WinClip | (2, 3) | 1 | {anomalib_ms:.0f} | 1.00 |")
    for variant, _, settings, _, _ in rows:
        median = median_ms[f"WinClipPlus {variant}"]
        scales, stride = settings["scales"], settings["window_stride"]
        print(f"| WinClipPlus {variant} | {scales} | {stride} | {median:.0f} | {median / anomalib_ms:.2f} |")


if __name__ == "__main__":
    main()
