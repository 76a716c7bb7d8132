"""Reproduce the WinCLIP paper's MVTec AD table (zero-shot and 1/2/4-shot) with WinClipPlus.

Needs MVTec AD on disk and the OpenCLIP ViT-B/16+ 240 px LAION-400M weights (the open_clip tag
``laion400m_e31``, downloaded once, or the checkpoint file). Every category is scored with
anomalib's Engine; few-shot rows average over ``--seeds`` random reference draws (the paper
averages over random draws as well). The table prints the category means next to the paper's.
The reproduction is ``anomalib_featureridge.benchmark.winclip_paper``.

Example:
    python tools/reproduce_winclip_paper.py --root ./datasets/MVTecAD --shots 0 1 2 4 --seeds 0 1 2
    python tools/reproduce_winclip_paper.py --root /data/MVTecAD \
        --pretrained /weights/vit_b_16_plus_240-laion400m_e31-8fb26589.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomalib_featureridge.benchmark.winclip_paper import MVTEC_CATEGORIES, reproduce


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="MVTec AD folder (one sub-folder per category)")
    parser.add_argument("--backbone", default="ViT-B-16-plus-240")
    parser.add_argument("--pretrained", default="laion400m_e31", help="open_clip tag or local checkpoint file")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="reference draws per few-shot row")
    parser.add_argument("--categories", nargs="+", default=list(MVTEC_CATEGORIES))
    parser.add_argument("--output", type=Path, default=Path("results/winclip_paper"))
    parser.add_argument("--accelerator", default="auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Score every category for every shot count and print the means beside the paper's."""
    reproduce(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
