"""Prompt encoder, box extension and the model's convenience methods (tiny preset)."""

from __future__ import annotations

import pytest
import torch

from seganypet.build import build_model
from seganypet.errors import PromptError
from seganypet.modeling import EXTENSION_KEYS, ModelConfig


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny").eval()


def test_forward_shapes(tiny):
    crop = torch.randn(1, 1, 128, 128, 128)
    with torch.no_grad():
        emb = tiny.encode(crop)
        assert emb.shape == (1, 48, 8, 8, 8)
        logits, iou = tiny.predict(emb, [[64.0, 60.0, 70.0]], [1])
        assert logits.shape == (1, 1, 32, 32, 32) and iou.shape == (1, 1)
        logits, iou = tiny.predict(emb, [[64.0, 60.0, 70.0], [10, 20, 30]], [1, 0], multimask=True)
        assert logits.shape == (1, 3, 32, 32, 32) and iou.shape == (1, 3)
        logits, _ = tiny.predict(emb, None, None, boxes=[[10, 10, 10], [40, 50, 60]])
        assert logits.shape == (1, 1, 32, 32, 32)


def test_prompt_encoder_published_signature(tiny):
    coords = torch.tensor([[[5.0, 6.0, 7.0], [50.0, 60.0, 70.0]]])
    labels = torch.tensor([[1, 0]])
    sparse, dense = tiny.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    assert sparse.shape == (1, 3, 48)  # 2 points + padding point
    assert dense.shape == (1, 48, 8, 8, 8)
    torch.testing.assert_close(sparse[0, 2], tiny.prompt_encoder.not_a_point_embed.weight[0])
    box = torch.tensor([[[1.0, 2.0, 3.0], [30.0, 40.0, 50.0]]])
    sparse_b, _ = tiny.prompt_encoder(points=(coords, labels), boxes=box, masks=None)
    assert sparse_b.shape == (1, 4, 48)  # no padding point when a box is given
    torch.testing.assert_close(sparse_b[:, :2], sparse[:, :2])
    # positive and negative points at the same place differ by the label embeddings
    pe = tiny.prompt_encoder
    diff = pe.point_embeddings[1].weight - pe.point_embeddings[0].weight
    s, _ = pe(points=(coords[:, :1].repeat(1, 2, 1), torch.tensor([[1, 0]])), boxes=None, masks=None)
    torch.testing.assert_close(s[0, 0] - s[0, 1], diff[0])


def test_box_extension_keys_and_flag():
    model = build_model("tiny")
    assert EXTENSION_KEYS[0] in model.state_dict()
    assert model.supports_boxes is False  # exists but untrained
    trained = build_model("tiny", supports_boxes=True)
    assert trained.supports_boxes is True
    no_box = build_model("vit_b_ori")
    assert EXTENSION_KEYS[0] not in no_box.state_dict()
    with pytest.raises(PromptError):
        no_box.prompt_encoder(points=None, boxes=torch.zeros(1, 2, 3), masks=None)


def test_bad_prompts_raise(tiny):
    emb = torch.zeros(1, 48, 8, 8, 8)
    with pytest.raises(PromptError):
        tiny.predict(emb, None, None)
    with pytest.raises(PromptError):
        tiny.predict(emb, [[1.0, 2.0]], [1])
    with pytest.raises(PromptError):
        tiny.predict(emb, [[1.0, 2.0, 3.0]], [1], mask_input=torch.zeros(1, 1, 16, 16, 16))
    with pytest.raises(PromptError):
        tiny.encode(torch.zeros(1, 1, 64, 64, 64))


def test_config_roundtrip_and_validation():
    cfg = ModelConfig(name="x", encoder_global_attn_indexes=[0, 1], encoder_depth=2)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    from seganypet.errors import ModelError

    with pytest.raises(ModelError, match="Unknown model config field"):
        ModelConfig.from_dict({"embed": 3})
    with pytest.raises(ModelError, match="prompt_embed_dim"):
        ModelConfig(prompt_embed_dim=100)
    with pytest.raises(ModelError, match="normalization"):
        ModelConfig(normalization="minmax")


def test_normalize_crop():
    from seganypet.modeling import normalize_crop

    x = torch.zeros(4, 4, 4)
    x[1:3, 1:3, 1:3] = torch.arange(8, dtype=torch.float32).reshape(2, 2, 2) + 1
    z = normalize_crop(x, "zscore_nonzero")
    pos = x > 0
    assert abs(float(z[pos].mean())) < 1e-6 and abs(float(z[pos].std()) - 1) < 1e-5
    assert torch.allclose(z[~pos], (0 - 4.5) / x[pos].std())
    s = normalize_crop(x * 10, "suv_clip")
    assert float(s.max()) == 4.0
    assert torch.equal(normalize_crop(torch.zeros(3, 3, 3)), torch.zeros(3, 3, 3))


def test_encode_bfloat16_close_to_float32(tiny):
    from seganypet.modeling import bf16_native

    assert isinstance(bf16_native(), bool)
    crop = torch.randn(1, 1, 128, 128, 128)
    with torch.no_grad():
        e32 = tiny.encode(crop)
        e16 = tiny.encode(crop, bfloat16=True)
    assert e16.dtype == torch.float32
    assert float((e16 - e32).norm() / e32.norm()) < 3e-2


def test_dense_pe_matches_points_without_quirk():
    """Our presets drop the published axis quirk: a click at a token's centre has that token's PE."""
    import torch

    from seganypet.build import build_model

    model = build_model("tiny")
    assert model.config.dense_pe_axis_quirk is False
    pe = model.prompt_encoder.get_dense_pe()
    a, b, c = 1, 5, 3
    point = torch.tensor([[[(a + 0.5) * 16 - 0.5, (b + 0.5) * 16 - 0.5, (c + 0.5) * 16 - 0.5]]])
    enc = model.prompt_encoder.pe_layer.forward_with_coords(point + 0.5, (128, 128, 128))[0, 0]
    torch.testing.assert_close(enc, pe[0, :, a, b, c], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(enc, pe[0, :, b, a, c], atol=1e-3)
