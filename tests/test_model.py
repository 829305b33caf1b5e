"""Weights: a local save_pretrained folder, the hub cache, synthetic weights, the weights hash,
the architecture check and the synthetic init's activation scale. No network: HF_HUB_OFFLINE
and an endpoint on 127.0.0.1 where nothing listens."""

import socket
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from transformers import SamModel

from samrep.errors import SamrepError
from samrep.model import (
    ARCHITECTURES,
    VIT_H_HUB_ID,
    load_model,
    weights_sha256,
)
from tests.conftest import tiny_sam


def closed_loopback_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def offline_hub(monkeypatch, tmp_path) -> Path:
    """HF_HUB_OFFLINE=1, an empty temporary cache and a dead loopback endpoint; returns the cache.

    huggingface_hub reads these variables once, at import (already done: samrep imports
    transformers), so its module constants get the values a fresh process would derive.
    """
    home, endpoint = tmp_path / "hf", closed_loopback_url()
    cache = home / "hub"
    for key, value in {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def tiny_folder(tmp_path) -> tuple[Path, str]:
    """A tiny SAM written by save_pretrained: (folder, weights_sha256 of the saved model)."""
    model = tiny_sam(seed=7)
    folder = tmp_path / "tiny-weights"
    model.save_pretrained(folder)
    return folder, weights_sha256(model)


def test_local_folder_loads_with_the_same_weights(tiny_folder, tmp_path, offline_hub):
    folder, sha = tiny_folder
    model, info = load_model(
        str(folder), "tiny", allow_synthetic=False, seed=0, cache_dir=tmp_path / "synth"
    )
    assert isinstance(model, SamModel)
    assert info.source == "local"
    assert info.synthetic is False
    assert info.arch == "tiny"
    assert info.name == str(folder)
    assert info.sha256 == sha == weights_sha256(model)
    assert info.num_parameters == sum(p.numel() for p in tiny_sam(0).parameters())
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not (tmp_path / "synth").exists()  # nothing synthetic was made
    assert info.to_dict()["source"] == "local"


def test_local_folder_without_config(tmp_path, offline_hub):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SamrepError) as info:
        load_model(str(empty), "tiny", allow_synthetic=False, seed=0, cache_dir=tmp_path / "s")
    message = str(info.value)
    assert str(empty) in message and "config.json" in message and "allow_synthetic" in message


def test_hub_id_not_cached_offline_without_synthetic(tmp_path, offline_hub):
    with pytest.raises(SamrepError) as info:
        load_model(VIT_H_HUB_ID, "vit_h", allow_synthetic=False, seed=0, cache_dir=tmp_path / "s")
    message = str(info.value)
    assert VIT_H_HUB_ID in message
    assert "allow_synthetic" in message
    assert "HF_HUB_OFFLINE" in message
    assert not (tmp_path / "s").exists()


def test_hub_id_uses_the_hub_cache(tmp_path, offline_hub):
    """A model in the hub cache (as the client lays it out) loads offline with source "hub"."""
    model = tiny_sam(seed=3)
    repo_id = "samrep-tests/tiny-sam"
    commit = "f" * 40
    snapshot = offline_hub / "models--samrep-tests--tiny-sam" / "snapshots" / commit
    model.save_pretrained(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(commit)

    loaded, info = load_model(repo_id, "tiny", allow_synthetic=False, seed=0, cache_dir=tmp_path)
    assert info.source == "hub"
    assert info.name == repo_id
    assert info.sha256 == weights_sha256(model) == weights_sha256(loaded)


def test_synthetic_weights_are_made_saved_and_reused(tmp_path, offline_hub):
    cache_dir = tmp_path / "synth"
    model, info = load_model(
        VIT_H_HUB_ID, "tiny", allow_synthetic=True, seed=5, cache_dir=cache_dir
    )
    assert info.source == "synthetic" and info.synthetic is True
    assert info.name == "synthetic-tiny-seed5"
    folder = cache_dir / info.name
    assert (folder / "config.json").is_file()
    assert list(cache_dir.iterdir()) == [folder]  # no temporary folder left behind
    assert info.sha256 == weights_sha256(model)

    again, info2 = load_model(
        VIT_H_HUB_ID, "tiny", allow_synthetic=True, seed=5, cache_dir=cache_dir
    )
    assert info2.sha256 == info.sha256
    assert info2.source == "synthetic" and info2.name == info.name

    # a different seed is a different set of weights, in its own folder
    _, other = load_model(VIT_H_HUB_ID, "tiny", allow_synthetic=True, seed=6, cache_dir=cache_dir)
    assert other.sha256 != info.sha256
    assert (cache_dir / "synthetic-tiny-seed6" / "config.json").is_file()


def test_synthetic_weights_are_read_back_from_disk(tmp_path, offline_hub):
    """The second call loads the saved folder (it does not silently make new weights)."""
    cache_dir = tmp_path / "synth"
    _, first = load_model("", "tiny", allow_synthetic=True, seed=0, cache_dir=cache_dir)
    folder = cache_dir / first.name
    replacement = tiny_sam(seed=99)
    replacement.save_pretrained(folder)  # overwrite what the first call saved
    _, second = load_model("", "tiny", allow_synthetic=True, seed=0, cache_dir=cache_dir)
    assert second.sha256 == weights_sha256(replacement) != first.sha256


def test_weights_sha256_tracks_every_weight():
    model = tiny_sam(seed=0)
    sha = weights_sha256(model)
    assert sha == weights_sha256(tiny_sam(seed=0))  # deterministic for one seed
    assert sha != weights_sha256(tiny_sam(seed=1))
    param = dict(model.named_parameters())["vision_encoder.layers.1.mlp.lin2.weight"]
    with torch.no_grad():
        param[3, 5] += 1e-3
        assert weights_sha256(model) != sha
        param[3, 5] -= 1e-3
        assert torch.equal(
            param,
            dict(tiny_sam(seed=0).named_parameters())["vision_encoder.layers.1.mlp.lin2.weight"],
        )
    assert weights_sha256(model) == sha
    assert weights_sha256(model.to(torch.bfloat16)) != sha  # dtype is part of the hash


def test_local_folder_of_the_wrong_architecture(tiny_folder, tmp_path, offline_hub):
    folder, _ = tiny_folder
    with pytest.raises(SamrepError) as info:
        load_model(str(folder), "vit_h", allow_synthetic=True, seed=0, cache_dir=tmp_path / "s")
    message = str(info.value)
    assert str(folder) in message and "'vit_h'" in message and "architecture" in message


def test_unknown_arch(tmp_path):
    with pytest.raises(SamrepError, match="vit_z"):
        load_model("", "vit_z", allow_synthetic=True, seed=0, cache_dir=tmp_path)


def test_architectures_build_configs():
    vit_h = ARCHITECTURES["vit_h"]().vision_config
    assert (vit_h.hidden_size, vit_h.num_hidden_layers, vit_h.num_attention_heads) == (1280, 32, 16)
    assert list(vit_h.global_attn_indexes) == [7, 15, 23, 31]
    tiny = ARCHITECTURES["tiny"]().vision_config
    assert tiny.image_size == vit_h.image_size == 1024
    assert tiny.patch_size == vit_h.patch_size and tiny.window_size == vit_h.window_size


def test_synthetic_init_gives_sane_activations():
    """transformers' own SAM init collapses activations to ~1e-9; the synthetic init must not."""
    model = tiny_sam(seed=0)
    gen = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, 1024, 1024, generator=gen)
    points = torch.tensor([[[[300.0, 400.0]]]])
    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixel_values)
        hidden = model.vision_encoder(pixel_values).last_hidden_state
        out = model(pixel_values=pixel_values, input_points=points, multimask_output=True)
    assert embeddings.shape == (1, 32, 64, 64)
    assert 1e-2 <= embeddings.std().item() <= 1e2
    # before the neck's layer norm too (the norm alone would hide a collapse above ~1e-3)
    assert 1e-2 <= hidden.std().item() <= 1e2
    assert out.pred_masks.shape == (1, 1, 3, 256, 256)
    assert torch.isfinite(out.pred_masks).all() and torch.isfinite(out.iou_scores).all()
    assert out.pred_masks.std().item() > 0
