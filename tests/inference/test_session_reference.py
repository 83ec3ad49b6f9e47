"""The Session on the published-format parity fixture adds no hidden changes: given the fixture image
as a 128^3 image at 1.5 mm (RAS, identity-like affine) and the fixture's clicks, it returns the
fixture's low-res logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seganypet.inference import Session


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def reference(shared_reference):
    from seganypet.build import load_model

    model = load_model(shared_reference / "checkpoint.pth")
    data = dict(np.load(shared_reference / "io.npz"))
    return model, data


def test_session_reproduces_fixture_clicks(reference):
    model, d = reference
    image = d["image"][0, 0].astype(np.float32)
    # the fixture image is already z-scored: normalization="none" makes the session's step identity;
    # "shift" places the only possible 128^3 crop of a 128^3 image at the origin
    s = Session(model, normalization="none", crop_policy="shift", extend=False)
    s.set_image(image, np.diag([1.5, 1.5, 1.5, 1.0]))
    assert s.model_grid[0] == (128, 128, 128)
    np.testing.assert_array_equal(s.engine.crop((0, 0, 0)), image)

    pts1 = d["click1_points"][0]
    s.add_point(pts1[0], positive=bool(d["click1_labels"][0, 0]))
    got1 = s.low_res_logits()
    # what the session did == the bare network on the same crop and click (nothing hidden) ...
    with torch.inference_mode():
        emb = model.encode(torch.from_numpy(image)[None, None])
        direct, _ = model.predict(
            emb,
            torch.from_numpy(d["click1_points"]),
            torch.from_numpy(d["click1_labels"]),
            mask_input=torch.from_numpy(d["click1_mask_input"]),
        )
    assert _rel(got1, direct[0, 0].numpy()) < 1e-6
    # ... and equals the fixture's logits
    assert _rel(got1, d["click1_low_res_logits"][0, 0]) <= 1e-4

    # click 2 (negative): points accumulate, click 1's logits are the mask prompt
    np.testing.assert_allclose(d["click2_mask_input"][0, 0], d["click1_low_res_logits"][0, 0])
    p2 = d["click2_points"][0, 1]
    s.add_point(p2, positive=bool(d["click2_labels"][0, 1]))
    assert s.windows()[0]["labels"] == d["click2_labels"][0].tolist()
    assert _rel(s.low_res_logits(), d["click2_low_res_logits"][0, 0]) <= 1e-4
