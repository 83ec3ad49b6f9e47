"""Encoder: the closed-form padding attention equals the published padded attention."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from seganypet.build import build_model, expected_shapes
from seganypet.modeling.image_encoder import Attention, padding_log_mass


def _randomise(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(
                torch.randn(p.shape, generator=gen) * scale + (1.0 if p.dim() == 1 and p.shape[0] == 1 else 0)
            )


@pytest.mark.parametrize("window", [8, 10, 14])
def test_attention_fast_equals_padded(window):
    torch.manual_seed(window)
    attn = Attention(dim=24, num_heads=3, input_size=(window,) * 3)
    _randomise(attn, seed=window)
    attn = attn.double()  # exactness check without float32 rounding noise
    x = torch.randn(2, 6, 6, 6, 24, dtype=torch.float64)
    # naive: zero-pad to window³, attend over everything, crop
    xp = torch.nn.functional.pad(x, (0, 0, 0, window - 6, 0, window - 6, 0, window - 6))
    naive = attn(xp)[:, :6, :6, :6]
    fast = attn.forward_fast(x, window)
    torch.testing.assert_close(fast, naive, rtol=1e-9, atol=1e-10)


def test_attention_fast_global():
    attn = Attention(dim=16, num_heads=2, input_size=(5, 5, 5))
    _randomise(attn, seed=3)
    x = torch.randn(1, 5, 5, 5, 16)
    torch.testing.assert_close(attn.forward_fast(x, 0), attn(x), rtol=1e-4, atol=1e-5)


def test_padding_log_mass_brute_force():
    gen = torch.Generator().manual_seed(1)
    s, n = 5, 3
    t1 = torch.randn(n, s, generator=gen, dtype=torch.float64) * 3  # (qw, kw)
    t2 = torch.randn(s, s, generator=gen, dtype=torch.float64) * 3  # (j = kd, kw)
    t3 = torch.randn(s, s, generator=gen, dtype=torch.float64) * 3  # (j = kh, kw)
    got = padding_log_mass(t1, t2[:n], t2[n:], t3[:n], t3[n:])
    for qw in range(n):
        terms = [
            t1[qw, kw] + t2[kd, kw] + t3[kh, kw]
            for kd, kh, kw in itertools.product(range(s), repeat=3)
            if max(kd, kh, kw) >= n
        ]
        want = torch.logsumexp(torch.stack(terms), 0)
        assert abs(got[qw].item() - want.item()) < 1e-10


def test_tiny_model_fast_equals_naive():
    model = build_model("tiny").eval()
    _randomise(model, seed=5, scale=0.2)
    x = torch.randn(1, 1, 128, 128, 128)
    with torch.no_grad():
        model.fast_window = True
        fast = model.image_encoder(x)
        model.fast_window = False
        naive = model.image_encoder(x)
    assert fast.shape == (1, 48, 8, 8, 8)
    assert float((fast - naive).norm() / naive.norm()) < 1e-5


def test_vit_b_ori_keys_exactly_published(shared_reference):
    published = json.loads((shared_reference / "vit_b_ori_keys.json").read_text())
    model = build_model("vit_b_ori")
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(published) == 324
    assert state == published  # same keys, same shapes, nothing extra
    assert sum(p.numel() for p in model.parameters()) == 100_509_232
    assert {k: list(v) for k, v in expected_shapes(model.config).items()} == published


def test_fast_path_gradients_match_naive():
    """Training uses the fast path: its gradients must be the published ones."""
    model = build_model("tiny").double()
    _randomise(model, seed=7, scale=0.2)
    x = torch.randn(1, 1, 128, 128, 128, dtype=torch.float64)
    grads = []
    for fast in (True, False):
        model.zero_grad()
        model.fast_window = fast
        model.image_encoder(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.image_encoder.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], rtol=1e-7, atol=1e-10, msg=name)
