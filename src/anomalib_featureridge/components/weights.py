"""Where pretrained weights come from, and the offline policy: one rule for every model.

A machine without network must fail within seconds with the way out, never wait for most of a
minute in a downloader's retries; a local file must be read as tensors only (no pickled code) and a
bad file named with what is wrong with it.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

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


def hugging_face_offline() -> bool:
    """Whether the environment puts the Hugging Face Hub in offline mode, read as huggingface_hub reads it.

    Same variables (``HF_HUB_OFFLINE``, else ``TRANSFORMERS_OFFLINE``) and the same true values
    (1, ON, YES, TRUE in any case); read when asked, so that a variable set after import counts too.
    """
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.upper() in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class WeightsSource:
    """Where a library would fetch one set of pretrained weights: files of a Hugging Face Hub repo, or a URL.

    Each loader states its library's facts (which location the library picks, its file names, the folder
    it saves URL downloads in); every decision about them is made here, once for every loader.

    Args:
        name: What the weights are, for messages (``resnet18``, ``ViT-B-16/openai``).
        hf_repo: Hub repository the library downloads from; set, it is the source (the URL is not used).
        hf_files: File names the library accepts from the repo, in its order of preference.
        hf_revision: Hub revision, ``None`` for the default branch.
        url: Download URL, when the weights do not come from the Hub.
        url_cache: Folder the library saves a URL download in, under the URL's file name.
    """

    name: str
    hf_repo: str | None = None
    hf_files: tuple[str, ...] = ()
    hf_revision: str | None = None
    url: str | None = None
    url_cache: Path | None = None


def cached_weights(source: WeightsSource) -> Path | None:
    """The weights' file in the local cache the library would read, if they are there (no network)."""
    if source.hf_repo:
        from huggingface_hub import try_to_load_from_cache

        for filename in source.hf_files:
            found = try_to_load_from_cache(source.hf_repo, filename, revision=source.hf_revision)
            if isinstance(found, str):
                return Path(found)
        return None
    if source.url and source.url_cache is not None:
        candidate = source.url_cache / Path(urlparse(source.url).path).name
        return candidate if candidate.is_file() else None
    return None


def weights_server(source: WeightsSource) -> str | None:
    """The server a download of ``source`` would go to (``HF_ENDPOINT`` for Hub files); ``None`` if none is known."""
    if source.hf_repo:
        return hugging_face_server()
    return server_of(source.url) if source.url else None


def download_blocker(source: WeightsSource) -> str | None:
    """Why a download of ``source`` cannot start now, or ``None`` when it can.

    Hub offline mode blocks only Hub downloads, as in huggingface_hub itself: a URL download does not go
    through huggingface_hub, so ``HF_HUB_OFFLINE`` does not stop it and the probe decides.
    """
    if source.hf_repo and hugging_face_offline():
        return "HF_HUB_OFFLINE is set"
    server = weights_server(source)
    if server is None:
        return "no download location is known"
    if not reachable(server):
        return f"{server} cannot be reached (no answer within {NETWORK_PROBE_TIMEOUT_S:g} s)"
    return None


def unobtainable_weights_error(
    source: WeightsSource, reason: str, way_out: str, error: type[BackboneWeightsError] = BackboneWeightsError
) -> BackboneWeightsError:
    """The error for weights that are neither cached nor downloadable: why, and the loader's way out."""
    cause = f"{reason}, and they are not in the local cache"
    return error(f"Cannot download the pretrained weights of {source.name}: {cause}. {way_out}")


def require_weights(
    source: WeightsSource, way_out: str, error: type[BackboneWeightsError] = BackboneWeightsError
) -> Path | None:
    """The cached file of ``source``, else ``None`` when a download may start; raise with ``way_out`` when neither."""
    cached = cached_weights(source)
    if cached is not None:
        return cached
    reason = download_blocker(source)
    if reason is not None:
        raise unobtainable_weights_error(source, reason, way_out, error)
    return None


def freeze(module: nn.Module) -> nn.Module:
    """Evaluation mode and no gradients: pretrained weights are used as they are, never trained here."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


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


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values: tells the same weights from others exactly."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
