"""The built-in parametric torso: used when the shared CT organ map is absent (or asked for)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from seganypet.cli import main
from seganypet.phantoms import ORGANS, AnatomyError, make_phantom
from seganypet.phantoms import anatomy as anatomy_mod
from seganypet.phantoms.anatomy import body_mask_from_ct, load_anatomy, source_lookup_tables
from seganypet.phantoms.builtin_anatomy import build_builtin_anatomy


def test_builtin_anatomy_is_a_plausible_torso():
    labels, ct, affine, names = build_builtin_anatomy()
    assert labels.shape == ct.shape and labels.dtype == np.uint8 and ct.dtype == np.int16
    assert np.allclose(np.diag(affine)[:3], 3.0)
    to_organ, _ = source_lookup_tables()
    organs = {int(o) for o in np.unique(to_organ[labels]) if o}
    wanted = [
        "liver",
        "spleen",
        "kidney_left",
        "kidney_right",
        "bladder",
        "spine",
        "pelvis",
        "aorta",
        "bowel",
    ]
    assert {ORGANS[n] for n in wanted} <= organs
    ml = 27.0 / 1000.0  # 3 mm voxels
    assert 900 < (labels == 5).sum() * ml < 2000  # liver, mL
    assert 100 < (labels == 1).sum() * ml < 400  # spleen
    # RAS+: the liver (+x, the patient's right) is right of the spleen, the spine is posterior
    centre = {k: np.argwhere(labels == k).mean(0) for k in (1, 5, 30)}
    assert centre[5][0] > centre[1][0] and centre[30][1] < centre[5][1]
    body = body_mask_from_ct(ct)
    assert body[labels > 0].mean() > 0.99 and 0.3 < body.mean() < 0.9
    assert ct[labels == 30].mean() > 200 and ct[labels == 11].mean() < -500  # bone, lung
    assert names[5] == "liver"


def test_fallback_when_no_anatomy_folder(monkeypatch, caplog):
    def missing(anatomy=None):
        raise AnatomyError("phantom anatomy not found")

    monkeypatch.setattr(anatomy_mod, "find_anatomy", missing)
    monkeypatch.delenv("SEGANYPET_ANATOMY", raising=False)
    with caplog.at_level(logging.WARNING, logger="seganypet.phantoms"):
        src = load_anatomy()
    assert str(src.path) == "builtin" and "built-in parametric" in caplog.text
    monkeypatch.setenv("SEGANYPET_ANATOMY", "/no/such/folder")  # named explicitly: an error, no fallback
    with pytest.raises(AnatomyError):
        load_anatomy()
    with pytest.raises(AnatomyError):
        load_anatomy("/no/such/folder")


def test_builtin_phantom_and_cli(tmp_path, capsys):
    ph = make_phantom(21, spacing=8.0, anatomy="builtin", n_lesions=2)
    assert ph.info["anatomy_source"] == "builtin"
    present = {v["name"] for v in ph.label_info.values() if v["kind"] == "organ"}
    assert {"liver", "spleen", "bladder", "kidney_left"} <= present
    liver = ph.pet.array[ph.labels == ORGANS["liver"]].mean()
    assert 1.0 < liver < 3.5  # FDG liver SUV
    again = make_phantom(21, spacing=8.0, anatomy="builtin", n_lesions=2)
    assert np.array_equal(ph.labels, again.labels) and np.array_equal(ph.pet.array, again.pet.array)
    out = tmp_path / "ph"
    argv = [
        "--no-progress",
        "phantom",
        "-o",
        str(out),
        "--anatomy",
        "builtin",
        "--spacing",
        "8",
        "--lesions",
        "1",
    ]
    assert main(argv) == 0
    info = json.loads(next(out.rglob("phantom.json")).read_text())
    assert info["info"]["anatomy_source"] == "builtin"
