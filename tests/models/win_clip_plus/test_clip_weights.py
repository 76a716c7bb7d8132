"""Local CLIP checkpoints are read as tensors only, and unreadable files are named."""

import open_clip
import pytest
import torch

from anomalib_featureridge.models.win_clip_plus import clip_loader


def test_local_clip_weights_are_read_with_weights_only(tiny_clip, monkeypatch) -> None:
    calls = []
    original_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    model = open_clip.create_model("tiny-clip")
    clip_loader.load_checkpoint_strictly(model, "tiny-clip", tiny_clip["checkpoint"])
    assert calls == [True]
    expected = original_load(tiny_clip["checkpoint"], weights_only=True)
    torch.testing.assert_close(model.state_dict()["visual.proj"], expected["visual.proj"])


def test_a_text_file_as_clip_weights_is_named(tiny_clip, tmp_path) -> None:
    path = tmp_path / "clip.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(
        clip_loader.ClipWeightsError, match=r"CLIP checkpoint .*clip\.pt \(17 bytes\) is not a readable"
    ):
        clip_loader.load_checkpoint_strictly(open_clip.create_model("tiny-clip"), "tiny-clip", path)
