"""Compositional prompt ensemble (WinCLIP paper, Sec. 4.1 "Compositional prompt ensemble", Fig. 3).

Every state word, filled with the class name, is put into every template; the text embeddings of
all normal prompts are averaged into one normal anchor, those of all anomalous prompts into one
anomalous anchor. The word lists are the paper's (its supplementary material).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

GENERIC_OBJECT = "object"

NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALOUS_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")

_ARTICLES = ("a", "the")
_PHOTO_KINDS = (
    "cropped photo",
    "close-up photo",
    "bright photo",
    "dark photo",
    "jpeg corrupted photo",
    "blurry photo",
    "photo",
)
_SIZES = ("small", "large")
_PURPOSES = ("visual inspection", "anomaly detection")

TEMPLATES = (
    *(f"a {kind} of {article} {{}}." for kind in _PHOTO_KINDS for article in _ARTICLES),
    *(f"a photo of {article} {size} {{}}." for size in _SIZES for article in _ARTICLES),
    *(f"a photo of {article} {{}} for {purpose}." for purpose in _PURPOSES for article in _ARTICLES),
)


def compose_prompts(class_name: str) -> tuple[list[str], list[str]]:
    """Normal and anomalous prompts: every state (filled with ``class_name``) in every template."""
    normal = [template.format(state.format(class_name)) for state in NORMAL_STATES for template in TEMPLATES]
    anomalous = [template.format(state.format(class_name)) for state in ANOMALOUS_STATES for template in TEMPLATES]
    return normal, anomalous


@torch.no_grad()
def text_anchors(clip: nn.Module, tokenizer: Callable, class_name: str) -> torch.Tensor:
    """``(2, D)`` unit-norm anchors ``[normal, anomalous]``: mean of the unit-norm prompt embeddings.

    Each prompt embedding is normalised before averaging (CLIP's own prompt ensembling), so that no
    prompt weighs more because its embedding happens to be longer.
    """
    device = next(clip.parameters()).device
    anchors = []
    for prompts in compose_prompts(class_name):
        embeddings = clip.encode_text(tokenizer(prompts).to(device))
        anchors.append(nn.functional.normalize(embeddings, dim=-1).mean(dim=0))
    return nn.functional.normalize(torch.stack(anchors), dim=-1)
