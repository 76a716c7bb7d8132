"""Backbone construction: layer checks, strict local weights, and failing fast without a network."""

import time

import pytest
import timm
import torch

from anomalib_featureridge.components import feature_extractor as backbone_module
from anomalib_featureridge.components import weights as weights_module
from anomalib_featureridge.components.feature_extractor import (
    BackboneWeightsError,
    create_feature_extractor,
    layer_indices,
)


def _save_full_state_dict(path, name: str = "resnet18") -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = timm.create_model(name, pretrained=False).state_dict()
    torch.save(state, path)
    return state


def test_layer_names_map_to_timm_indices() -> None:
    assert layer_indices("resnet18", ["layer2", "layer3"]) == [2, 3]
    assert layer_indices("tf_efficientnet_lite0", ["blocks.2", "blocks.4"]) == [2, 3]


def test_unknown_layer_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"no layer \['blocks.3'\].*'blocks.2', 'blocks.4'"):
        layer_indices("tf_efficientnet_lite0", ["blocks.2", "blocks.3"])


def test_unknown_backbone_is_named() -> None:
    with pytest.raises(ValueError, match="Unknown timm backbone 'not_a_net'"):
        layer_indices("not_a_net", ["layer2"])


def test_local_weights_are_loaded_exactly(tmp_path) -> None:
    state = _save_full_state_dict(tmp_path / "w.pth")
    features = create_feature_extractor("resnet18", ["layer2", "layer3"], backbone_weights=tmp_path / "w.pth")
    torch.testing.assert_close(features.state_dict()["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
    assert not any(parameter.requires_grad for parameter in features.parameters())
    assert not features.training


def test_weights_only_need_the_layers_used(tmp_path) -> None:
    state = _save_full_state_dict(tmp_path / "full.pth")
    truncated = {key: value for key, value in state.items() if not key.startswith(("layer4", "fc"))}
    torch.save(truncated, tmp_path / "truncated.pth")
    create_feature_extractor("resnet18", ["layer2", "layer3"], backbone_weights=tmp_path / "truncated.pth")


def test_weights_of_another_backbone_list_the_mismatch(tmp_path) -> None:
    _save_full_state_dict(tmp_path / "r18.pth")
    with pytest.raises(BackboneWeightsError, match=r"does not match backbone 'resnet34'.*missing keys"):
        create_feature_extractor("resnet34", ["layer2", "layer3"], backbone_weights=tmp_path / "r18.pth")
    with pytest.raises(BackboneWeightsError, match=r"missing keys.*blocks.*unexpected keys.*layer"):
        create_feature_extractor(
            "tf_efficientnet_lite0", ["blocks.2", "blocks.4"], backbone_weights=tmp_path / "r18.pth"
        )


def test_shape_mismatch_is_listed(tmp_path) -> None:
    state = _save_full_state_dict(tmp_path / "w.pth")
    state["layer2.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(BackboneWeightsError, match=r"shape mismatches.*layer2.0.conv1.weight"):
        create_feature_extractor("resnet18", ["layer2", "layer3"], backbone_weights=tmp_path / "bad.pth")


def test_missing_weights_file_is_named(tmp_path) -> None:
    with pytest.raises(BackboneWeightsError, match="not found"):
        create_feature_extractor("resnet18", ["layer2", "layer3"], backbone_weights=tmp_path / "absent.pth")


def test_wrapped_state_dict_is_accepted(tmp_path) -> None:
    state = _save_full_state_dict(tmp_path / "w.pth")
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    create_feature_extractor("resnet18", ["layer2", "layer3"], backbone_weights=tmp_path / "wrapped.pth")


def test_pretrained_without_network_fails_fast_with_the_way_out(monkeypatch) -> None:
    monkeypatch.setattr(weights_module, "cached_weights", lambda _source: None)
    monkeypatch.setattr(weights_module, "reachable", lambda _host: False)
    start = time.monotonic()
    with pytest.raises(BackboneWeightsError, match=r"cannot be reached.*backbone_weights"):
        create_feature_extractor("resnet18", ["layer2", "layer3"], pre_trained=True)
    assert time.monotonic() - start < 30, "must not sit in download retries"


def test_pretrained_with_hf_offline_fails_fast(monkeypatch) -> None:
    monkeypatch.setattr(weights_module, "cached_weights", lambda _source: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneWeightsError, match="HF_HUB_OFFLINE"):
        create_feature_extractor("resnet18", ["layer2", "layer3"], pre_trained=True)


def test_pretrained_uses_the_local_cache_without_network(tmp_path, monkeypatch) -> None:
    state = _save_full_state_dict(tmp_path / "cached.pth")
    monkeypatch.setattr(weights_module, "cached_weights", lambda _source: tmp_path / "cached.pth")
    monkeypatch.setattr(weights_module, "reachable", lambda _host: pytest.fail("must not probe the network"))
    features = create_feature_extractor("resnet18", ["layer2", "layer3"], pre_trained=True)
    torch.testing.assert_close(features.state_dict()["layer3.1.bn2.running_var"], state["layer3.1.bn2.running_var"])


def test_weights_server_follows_hf_endpoint(monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example.org:8443/")
    assert (
        weights_module.weights_server(backbone_module.pretrained_source("resnet18"))
        == "https://mirror.example.org:8443"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"this is a text file\n", r"\(20 bytes\) is not a readable state dict"),
        (b"", r"is empty \(0 bytes\)"),
        (b"\n", r"\(1 bytes\) is not a readable state dict"),
    ],
)
def test_unreadable_weights_file_is_named_with_the_way_out(tmp_path, content: bytes, problem: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(BackboneWeightsError, match=rf"Weights file .*weights\.pth {problem}.*torch\.save"):
        create_feature_extractor("resnet18", ["layer2", "layer3"], backbone_weights=path)


def test_truncated_weights_file_is_named(tmp_path) -> None:
    _save_full_state_dict(tmp_path / "full.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((tmp_path / "full.pth").read_bytes()[:100_000])
    with pytest.raises(BackboneWeightsError, match=r"truncated\.pth \(100000 bytes\) is not a readable state dict"):
        create_feature_extractor("resnet18", ["layer2", "layer3"], backbone_weights=truncated)


def test_a_server_that_accepts_but_never_answers_counts_as_unreachable(monkeypatch) -> None:
    """A proxy that takes the connection and then stays silent must fail the probe, not start a download."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    monkeypatch.setattr(weights_module, "NETWORK_PROBE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(weights_module, "cached_weights", lambda _source: None)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    try:
        with pytest.raises(BackboneWeightsError, match=r"127\.0\.0\.1:\d+ cannot be reached.*backbone_weights"):
            create_feature_extractor("resnet18", ["layer2", "layer3"], pre_trained=True)
    finally:
        for connection in accepted:
            connection.close()
        server.close()
    assert accepted, "the probe must have connected"


def test_a_server_that_answers_is_reachable_whatever_the_status() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            del args

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        assert weights_module.reachable(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.server_close()


def test_blocks_after_the_deepest_layer_are_dropped_without_changing_features() -> None:
    torch.manual_seed(0)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=[2, 3]).eval()
    truncated = create_feature_extractor("tf_efficientnet_lite0", ["blocks.2", "blocks.4"], pre_trained=False)
    truncated.load_state_dict({key: value for key, value in full.state_dict().items() if key in truncated.state_dict()})
    assert len(truncated.blocks) == 5
    assert len(full.blocks) == 7
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for expected, actual in zip(full(images), truncated(images), strict=True):
            torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("source", ["timm", "open_clip"])
def test_hub_offline_mode_blocks_hub_downloads_only_for_both_loaders(source, monkeypatch) -> None:
    """The CNN and the CLIP loaders used to disagree: HF_HUB_OFFLINE blocked every timm download, even one from a
    URL, but no open_clip URL download. As in huggingface_hub, it blocks Hub downloads only; a URL is probed."""
    from anomalib_featureridge.models.win_clip_plus import clip_loader

    if source == "timm":
        url_weights = backbone_module.pretrained_source("gcvit_xtiny.in1k")
        hub_weights = backbone_module.pretrained_source("resnet18")
    else:
        url_weights = clip_loader.pretrained_source(
            "ViT-B-16-plus-240", "laion400m_e31", {"url": "https://a.example/w.pt"}
        )
        hub_weights = clip_loader.pretrained_source("ViT-B-32", "laion2b", {"hf_hub": "laion/CLIP-ViT-B-32/"})
    assert (bool(url_weights.url), bool(url_weights.hf_repo)) == (True, False)
    assert (bool(hub_weights.hf_repo), bool(hub_weights.url)) == (True, False)
    probed: list[str] = []
    monkeypatch.setattr(weights_module, "reachable", lambda server: probed.append(server) or True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights_module.download_blocker(hub_weights) == "HF_HUB_OFFLINE is set"
    assert probed == [], "offline mode decides without the network"
    assert weights_module.download_blocker(url_weights) is None
    assert probed == [weights_module.server_of(url_weights.url)]


@pytest.mark.parametrize(
    ("value", "offline"), [("1", True), ("ON", True), ("yes", True), ("0", False), ("false", False)]
)
def test_hub_offline_values_are_read_as_huggingface_hub_reads_them(value, offline, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", value)
    assert weights_module.hugging_face_offline() is offline


def test_timm_cache_lookup_uses_timm_file_names() -> None:
    """timm reads a Hub repo's safetensors file first, then its pytorch file (no open_clip name unless asked)."""
    assert backbone_module.pretrained_source("resnet18").hf_files == ("model.safetensors", "pytorch_model.bin")
