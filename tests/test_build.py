"""Presets, checkpoint formats, safe loading and config inference (seganypet.build)."""

from __future__ import annotations

import argparse
import fractions
import os
from pathlib import Path

import pytest
import torch

import seganypet
from seganypet import build
from seganypet.build import (
    PRESETS,
    build_model,
    expected_shapes,
    guess_preset,
    infer_config,
    load_model,
    save_model,
)
from seganypet.errors import CheckpointError, ModelError, UnsafeCheckpointError
from seganypet.modeling import EXTENSION_KEYS


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny").eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module, skip=()) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k not in skip)


def test_presets_and_errors():
    assert {"vit_b_ori", "tiny", "small", "reference_small"} <= set(PRESETS)
    with pytest.raises(ModelError, match="Unknown model preset"):
        build_model("vit_h")
    with pytest.raises(ModelError, match="preset name, not trained weights"):
        load_model("small")
    model = build_model("small", normalization="suv_clip")
    assert model.config.normalization == "suv_clip" and model.config.name == "small"


def test_default_model_missing_is_clear(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "DEFAULT_WEIGHTS", tmp_path / "weights" / "default.pt")
    with pytest.raises(ModelError, match="default model is not installed.*--model PATH"):
        seganypet.load_model()


def test_default_model_loads_when_installed(monkeypatch, tmp_path, tiny):
    path = save_model(tiny, tmp_path / "default.pt", {"training": "test"})
    monkeypatch.setattr(build, "DEFAULT_WEIGHTS", path)
    model = seganypet.load_model("default")
    assert _same_weights(model, tiny) and model.metadata["training"] == "test"


def test_save_load_roundtrip_our_format(tmp_path, tiny):
    meta = {"training_data": ["phantoms:0-99"], "steps": 1200, "boxes_trained": True}
    trained = build_model("tiny", supports_boxes=True)
    trained.load_state_dict(tiny.state_dict())
    path = seganypet.save_model(trained, tmp_path / "m.pt", meta)
    raw = torch.load(path, weights_only=True)  # plain weights_only works: no custom classes
    assert raw["format"] == "seganypet-model" and raw["config"]["supports_boxes"] is True
    model = load_model(path)
    assert not model.training
    assert model.config == trained.config and model.supports_boxes
    assert model.metadata["steps"] == 1200 and model.metadata["seganypet_version"] == seganypet.__version__
    assert _same_weights(model, tiny)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind


def test_save_rejects_non_json_metadata(tmp_path, tiny):
    with pytest.raises(ModelError, match="JSON"):
        save_model(tiny, tmp_path / "m.pt", {"bad": object()})
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("layout", ["published", "bare", "module"])
def test_published_layouts_load(tmp_path, tiny, layout):
    state = {k: v for k, v in tiny.state_dict().items() if k not in EXTENSION_KEYS}
    if layout == "published":
        obj = {"model_state_dict": state, "epoch": 3, "args": argparse.Namespace(lr=1e-4)}
    elif layout == "bare":
        obj = state
    else:
        obj = {"model_state_dict": {"module." + k: v for k, v in state.items()}}
    path = tmp_path / f"{layout}.pth"
    torch.save(obj, path)
    model = load_model(path)
    assert _same_weights(model, tiny, skip=EXTENSION_KEYS)
    # a published-format file carries no config: the published dense-PE axis quirk is assumed
    assert model.config.replace(box_embeddings=False) == PRESETS["tiny"].replace(
        box_embeddings=False, dense_pe_axis_quirk=True
    )
    assert model.config.box_embeddings and not model.supports_boxes  # extension added, untrained
    if layout == "published":
        assert model.metadata["epoch"] == 3 and model.metadata["args"] == {"lr": 1e-4}


def test_save_published_format(tmp_path, tiny):
    path = save_model(tiny, tmp_path / "pub.pth", format="published")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model_state_dict"}
    assert not set(EXTENSION_KEYS) & set(raw["model_state_dict"])


def test_infer_vit_b_ori_from_shapes():
    shapes = expected_shapes(PRESETS["vit_b_ori"])
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    cfg = infer_config(state)
    assert cfg.replace(box_embeddings=False) == PRESETS["vit_b_ori"]
    assert cfg.encoder_global_attn_indexes == (2, 5, 8, 11) and cfg.encoder_window_size == 14
    assert cfg.encoder_num_heads == 12 and cfg.prompt_embed_dim == 384
    assert guess_preset(state) == ("vit_b_ori", 1.0)


def test_partial_checkpoint_is_refused(tmp_path, tiny):
    state = dict(tiny.state_dict())
    for key in list(state)[5:9]:
        del state[key]
    state["image_encoder.extra.weight"] = torch.zeros(3)
    key = "mask_decoder.iou_token.weight"
    state[key] = torch.zeros(2, 48)
    torch.save({"model_state_dict": state}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "partial.pth")
    msg = str(err.value)
    assert "4 missing key(s)" in msg and "image_encoder.extra.weight" in msg
    assert "mis-shaped" in msg and key in msg and "Nothing was loaded" in msg
    assert "'tiny'" in msg


def test_wrong_network_is_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path / "other.pth")
    torch.save({"epoch": 1, "note": "no weights"}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="does not contain a model state dict"):
        load_model(tmp_path / "empty.pth")


def test_missing_truncated_and_garbage_files(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    good = save_model(tiny, tmp_path / "good.pt")
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "trunc.pt")
    assert not isinstance(err.value, UnsafeCheckpointError)
    (tmp_path / "junk.pt").write_bytes(os.urandom(2000))
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_model(tmp_path)


class _Evil:
    """Unpickling this would create a file (stand-in for arbitrary code execution)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"model_state_dict": {}, "payload": _Evil(str(target))}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match="arbitrary code.*trust_checkpoint"):
        load_model(tmp_path / "evil.pth")
    assert not target.exists()
    # also through the CLI-like path of the bare state-dict loader
    torch.save(_Evil(str(target)), tmp_path / "evil2.pth")
    with pytest.raises(UnsafeCheckpointError):
        load_model(tmp_path / "evil2.pth")
    assert not target.exists()


def test_trust_checkpoint_opt_in(tmp_path, tiny):
    state = {k: v for k, v in tiny.state_dict().items()}
    torch.save({"model_state_dict": state, "lr": fractions.Fraction(1, 3)}, tmp_path / "odd.pth")
    with pytest.raises(UnsafeCheckpointError):
        load_model(tmp_path / "odd.pth")
    with pytest.warns(UserWarning, match="arbitrary code"):
        model = load_model(tmp_path / "odd.pth", trust_checkpoint=True)
    assert _same_weights(model, tiny)


def test_reference_checkpoint_needs_namespace_allowlist(shared_reference):
    import pickle

    with pytest.raises(pickle.UnpicklingError):
        torch.load(shared_reference / "checkpoint.pth", weights_only=True)
    model = load_model(Path(shared_reference) / "checkpoint.pth")
    assert model.config.name == "reference_small"
