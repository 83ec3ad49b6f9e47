"""Parity with the published network: ../shared/reference (checkpoint.pth, config.json, io.npz)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import seganypet
from seganypet.modeling import ModelConfig

TOL = 1e-4


def rel_err(out: torch.Tensor, ref: np.ndarray) -> float:
    ref_t = torch.as_tensor(ref, dtype=torch.float32)
    return float((out.detach().float() - ref_t).norm() / ref_t.norm())


@pytest.fixture(scope="module")
def reference(shared_reference):
    model = seganypet.load_model(shared_reference / "checkpoint.pth")
    io = dict(np.load(shared_reference / "io.npz"))
    return model, io, json.loads((shared_reference / "config.json").read_text())


def test_inferred_config_matches_config_json(reference):
    model, _, config_json = reference
    expected = ModelConfig.from_dict(config_json).replace(box_embeddings=False)
    assert model.config.replace(box_embeddings=False) == expected
    assert model.config.name == "reference_small"
    assert not model.training
    assert model.supports_boxes is False
    assert model.metadata["format"] == "published"
    assert model.metadata["args"]["model_type"] == "parity_small"


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "naive"])
def test_full_session_parity(reference, fast):
    model, io, _ = reference
    model.fast_window = fast
    try:
        with torch.no_grad():
            image = torch.from_numpy(io["image"].astype(np.float32))
            emb = model.image_encoder(image)
            assert rel_err(emb, io["image_embedding"]) <= TOL
            pe = model.prompt_encoder.get_dense_pe()
            assert rel_err(pe, io["dense_pe"]) <= TOL
            for click in (1, 2, 3):
                multimask = bool(io[f"click{click}_multimask_output"])
                # the published submodule call sequence
                sparse, dense = model.prompt_encoder(
                    points=(
                        torch.from_numpy(io[f"click{click}_points"]),
                        torch.from_numpy(io[f"click{click}_labels"]),
                    ),
                    boxes=None,
                    masks=torch.from_numpy(io[f"click{click}_mask_input"]),
                )
                logits, iou = model.mask_decoder(
                    image_embeddings=emb,
                    image_pe=pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=multimask,
                )
                assert logits.shape == io[f"click{click}_low_res_logits"].shape
                assert rel_err(logits, io[f"click{click}_low_res_logits"]) <= TOL
                assert rel_err(iou, io[f"click{click}_iou"]) <= TOL
                # the convenience method gives the same
                logits2, iou2 = model.predict(
                    emb,
                    io[f"click{click}_points"],
                    io[f"click{click}_labels"],
                    mask_input=torch.from_numpy(io[f"click{click}_mask_input"]),
                    multimask=multimask,
                )
                assert torch.equal(logits, logits2) and torch.equal(iou, iou2)
    finally:
        model.fast_window = True


def test_dense_pe_axis_quirk(reference):
    """The point (a, b, c) has the encoding found at dense_pe[:, :, b, a, c]."""
    model, _, _ = reference
    pe = model.prompt_encoder.get_dense_pe()
    g = model.config.grid_size
    a, b, c = 1, 5, 3
    # voxel centre of grid cell (a, b, c) in crop voxel coordinates, before the +0.5 shift
    point = torch.tensor([[[(a + 0.5) * 16 - 0.5, (b + 0.5) * 16 - 0.5, (c + 0.5) * 16 - 0.5]]])
    enc = model.prompt_encoder.pe_layer.forward_with_coords(point + 0.5, (128, 128, 128))[0, 0]
    assert g == 8
    torch.testing.assert_close(enc, pe[0, :, b, a, c], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(enc, pe[0, :, a, b, c], atol=1e-3)
