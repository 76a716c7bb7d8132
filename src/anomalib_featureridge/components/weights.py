"""Where pretrained weights come from, and the offline policy: one rule for every model.

A machine without network must fail within seconds with the way out, never wait for most of a
minute in a downloader's retries; a local file must be read as tensors only (no pickled code) and a
bad file named with what is wrong with it.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch

NETWORK_PROBE_TIMEOUT_S = 3.0


class BackboneWeightsError(RuntimeError):
    """Backbone weights are missing, unreachable or do not fit the architecture."""


def server_of(url: str) -> str:
    """``scheme://host[:port]`` of a download URL: what :func:`reachable` probes."""
    parts = urlparse(url)
    return f"{parts.scheme}://{parts.netloc}"


def hugging_face_server() -> str:
    """The Hugging Face Hub endpoint huggingface_hub downloads from (``HF_ENDPOINT`` or the public hub)."""
    return server_of(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def reachable(server: str) -> bool:
    """Whether ``server`` (``scheme://host[:port]``) answers an HTTP request within a few seconds.

    An accepted connection is not enough: a proxy or firewall that accepts connections but never
    answers would otherwise send the download into huggingface_hub's retries for most of a minute.
    Any HTTP answer counts, an error status too (the server is there).
    """
    request = urllib.request.Request(server + "/", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=NETWORK_PROBE_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def download_blocker(
    server: str | None, from_hugging_face: bool, probe: Callable[[str], bool] | None = None
) -> str | None:
    """Why a download from ``server`` cannot start now (offline mode, no answer), or ``None`` when it can.

    ``probe`` defaults to :func:`reachable`, looked up when called.
    """
    if from_hugging_face and os.environ.get("HF_HUB_OFFLINE", "0") not in {"", "0"}:
        return "HF_HUB_OFFLINE is set"
    if server is None:
        return "no download location is known"
    if not (probe or reachable)(server):
        return f"{server} cannot be reached (no answer within {NETWORK_PROBE_TIMEOUT_S:g} s)"
    return None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (tensors only, no pickled code)."""
    path = Path(path)
    if not path.is_file():
        msg = f"Backbone weights file not found: {path}"
        raise BackboneWeightsError(msg)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch's unpickler reports a text or truncated file as a bare KeyError, IndexError or EOFError.
        size = path.stat().st_size
        detail = (str(error).splitlines() or [""])[0][:200]
        content = "is empty (0 bytes)" if size == 0 else f"({size} bytes) is not a readable state dict"
        msg = (
            f"Weights file {path} {content}: expected tensors saved with torch.save(model.state_dict()) or a "
            f".safetensors file; download or copy it again. Details: {type(error).__name__}: {detail}"
        )
        raise BackboneWeightsError(msg) from error
    for wrapper_key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper_key), dict):
            state = state[wrapper_key]
    if not isinstance(state, dict):
        msg = f"{path} does not hold a state dict (found {type(state).__name__})."
        raise BackboneWeightsError(msg)
    return state
