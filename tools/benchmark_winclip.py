"""Per-image latency of WinClipPlus against anomalib's WinClip, same backbone, same weights, one run.

Both torch modules are built around identical CLIP image-tower weights (random by default: the
weights do not change the FLOPs; ``--pretrained`` takes a tag or a local checkpoint file), get
the same class name and, for few-shot, the same reference images. They are timed in interleaved
rounds on the same pre-processed image (batch 1), so machine noise hits both alike; the figures
are medians. A parity line checks that both compute the same few-shot association map.
The measurement is ``anomalib_featureridge.benchmark.winclip_speed``.

Example (figures in the model README):
    nice python tools/benchmark_winclip.py --repeats 4 --variants paper stride2 scale2
"""

from __future__ import annotations

import argparse

import torch

from anomalib_featureridge.benchmark.winclip_speed import VARIANTS, report


def main() -> None:
    """Build both models per variant, check few-shot parity, time them interleaved and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-16-plus-240")
    parser.add_argument("--pretrained", default=None, help="open_clip tag or checkpoint file (default: random)")
    parser.add_argument("--k-shot", type=int, default=1, help="reference images (0 = zero-shot)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", nargs="+", default=["paper"], choices=sorted(VARIANTS))
    print(report(parser.parse_args()), end="", flush=True)


if __name__ == "__main__":
    main()
