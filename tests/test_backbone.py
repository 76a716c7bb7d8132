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
    monkeypatch.setattr(backbone_module, "_cached_weights", lambda _name: None)
    monkeypatch.setattr(weights_module, "reachable", lambda _host: False)
    start = time.monotonic()
    with pytest.raises(BackboneWeightsError, match=r"cannot be reached.*backbone_weights"):
        create_feature_extractor("resnet18", ["layer2", "layer3"], pre_trained=True)
    assert time.monotonic() - start < 30, "must not sit in download retries"


def test_pretrained_with_hf_offline_fails_fast(monkeypatch) -> None:
    monkeypatch.setattr(backbone_module, "_cached_weights", lambda _name: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneWeightsError, match="HF_HUB_OFFLINE"):
        create_feature_extractor("resnet18", ["layer2", "layer3"], pre_trained=True)


def test_pretrained_uses_the_local_cache_without_network(tmp_path, monkeypatch) -> None:
    state = _save_full_state_dict(tmp_path / "cached.pth")
    monkeypatch.setattr(backbone_module, "_cached_weights", lambda _name: tmp_path / "cached.pth")
    monkeypatch.setattr(weights_module, "reachable", lambda _host: pytest.fail("must not probe the network"))
    features = create_feature_extractor("resnet18", ["layer2", "layer3"], pre_trained=True)
    torch.testing.assert_close(features.state_dict()["layer3.1.bn2.running_var"], state["layer3.1.bn2.running_var"])


def test_weights_server_follows_hf_endpoint(monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example.org:8443/")
    assert backbone_module._weights_server("resnet18") == "https://mirror.example.org:8443"


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
    monkeypatch.setattr(backbone_module, "_cached_weights", lambda _name: None)
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
