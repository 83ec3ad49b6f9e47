"""make_phantom: determinism, the Phantom contract, lesions, uptake and noise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from seganypet.errors import InputError
from seganypet.image import PETImage
from seganypet.phantoms import LESION_BASE, ORGANS, AnatomyError, make_phantom
from seganypet.phantoms.lesions import CONTRAST_RANGE, SIZE_RANGE_MM


@pytest.fixture(scope="module")
def anatomy(shared_data):
    return shared_data / "anatomy"


@pytest.fixture(scope="module")
def torso(anatomy):
    return make_phantom(11, spacing=6.0, anatomy=anatomy, n_lesions=8)


def test_same_seed_same_phantom_other_seed_differs(anatomy):
    a = make_phantom(3, spacing=8.0, anatomy=anatomy)
    b = make_phantom(3, spacing=8.0, anatomy=anatomy)
    c = make_phantom(4, spacing=8.0, anatomy=anatomy)
    assert np.array_equal(a.pet.array, b.pet.array)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.truth, b.truth)
    assert a.lesions == b.lesions
    assert not np.array_equal(a.labels, c.labels) or a.pet.array.shape != c.pet.array.shape


def test_phantom_contract(torso):
    pet = torso.pet
    assert isinstance(pet, PETImage)
    assert pet.units == "SUVbw" and pet.is_suv
    assert np.allclose(pet.spacing, (6.0, 6.0, 6.0))
    assert np.all(np.diag(pet.affine)[:3] > 0)  # RAS+, axis aligned
    assert torso.labels.shape == pet.shape == torso.truth.shape == torso.ct.shape
    assert np.issubdtype(torso.labels.dtype, np.integer)
    present = set(np.unique(torso.labels).tolist()) - {0}
    assert present == set(torso.label_info)
    for label, info in torso.label_info.items():
        assert set(info) == {"name", "kind"}
        if label >= LESION_BASE:
            assert info["kind"] == "lesion" and info["name"] == f"lesion_{label - LESION_BASE + 1:02d}"
        else:
            assert info["kind"] == "organ" and ORGANS[info["name"]] == label
    for name in ("liver", "spleen", "kidney_left", "kidney_right", "bladder", "aorta", "spine"):
        assert ORGANS[name] in present, name
    assert pet.metadata["patient_weight_kg"] > 30 and pet.metadata["injected_dose_bq"] > 1e7


def test_lesions_in_ranges(torso):
    assert 1 <= len(torso.lesions) <= 8
    assert len({les["label"] for les in torso.lesions}) == len(torso.lesions)
    for les in torso.lesions:
        assert SIZE_RANGE_MM[0] <= les["diameter_mm"] <= SIZE_RANGE_MM[1]
        assert CONTRAST_RANGE[0] <= les["contrast"] <= CONTRAST_RANGE[1]
        mask = torso.labels == les["label"]
        assert mask.sum() == les["voxels"] >= 1
        if not les["necrotic"]:
            c, bg = les["contrast"], les["background_suv"]
            assert np.median(torso.truth[mask]) >= bg * (1.0 + 0.4 * (c - 1.0)), les


def test_uptake_plausible_and_noisy(torso):
    liver = ndimage.binary_erosion(torso.labels == ORGANS["liver"], iterations=1)
    vals = torso.pet.array[liver]
    assert 1.3 < vals.mean() < 3.2  # FDG liver ~2
    cov = vals.std() / vals.mean()
    assert 0.02 < cov < 0.5  # noise present, not absurd
    assert abs(vals.mean() - torso.truth[liver].mean()) / torso.truth[liver].mean() < 0.2  # quantitative
    assert torso.pet.array.min() >= 0.0
    assert torso.pet.array[torso.ct < -900].mean() < 0.3  # air is cold
    bladder = torso.pet.array[torso.labels == ORGANS["bladder"]].mean()
    assert bladder > vals.mean()


def test_lower_counts_are_noisier(anatomy):
    lo = make_phantom(5, spacing=8.0, anatomy=anatomy, counts=1e4, n_lesions=0)
    hi = make_phantom(5, spacing=8.0, anatomy=anatomy, counts=1e7, n_lesions=0)
    assert np.array_equal(lo.labels, hi.labels)  # anatomy does not depend on the count level
    liver = ndimage.binary_erosion(lo.labels == ORGANS["liver"], iterations=1)

    def cov(p):
        v = p.pet.array[liver]
        return v.std() / v.mean()

    assert cov(lo) > 1.5 * cov(hi)


def test_wholebody_psma(anatomy):
    ph = make_phantom(2, kind="wholebody", tracer="psma", spacing=8.0, anatomy=anatomy, n_lesions=3)
    torso = make_phantom(2, kind="torso", tracer="psma", spacing=8.0, anatomy=anatomy, n_lesions=3)
    assert ph.pet.shape[2] > 2.5 * torso.pet.shape[2]
    names = {v["name"] for v in ph.label_info.values()}
    assert {"brain", "heart", "salivary_glands", "skull", "lung_left", "lung_right"} <= names
    mean = {n: ph.pet.array[ph.labels == ORGANS[n]].mean() for n in ("kidney_left", "liver", "brain")}
    assert mean["kidney_left"] > mean["liver"] > mean["brain"]
    assert ph.pet.metadata["tracer"] == "psma"


def test_wholebody_fdg_brain_hot(anatomy):
    ph = make_phantom(6, kind="wholebody", tracer="fdg", spacing=8.0, anatomy=anatomy, n_lesions=0)
    brain = ph.pet.array[ph.labels == ORGANS["brain"]].mean()
    liver = ph.pet.array[ph.labels == ORGANS["liver"]].mean()
    assert brain > 2.0 * liver
    # the parametric parts sit where anatomy puts them: head > heart > liver > bladder > thighs
    z = {n: np.argwhere(ph.labels == ORGANS[n])[:, 2].mean() for n in ("brain", "heart", "liver", "bladder")}
    assert z["brain"] > z["heart"] > z["liver"] > z["bladder"]
    femur_z = np.argwhere(ph.labels == ORGANS["femurs"])[:, 2]
    assert femur_z.min() < z["bladder"] - 100 / 8.0  # thighs extend well below the pelvis


def test_bad_arguments(anatomy, tmp_path):
    with pytest.raises(InputError, match="kind"):
        make_phantom(0, kind="legs", anatomy=anatomy)
    with pytest.raises(InputError, match="tracer"):
        make_phantom(0, tracer="fes", anatomy=anatomy)
    with pytest.raises(InputError, match="spacing"):
        make_phantom(0, spacing=0.1, anatomy=anatomy)
    with pytest.raises(AnatomyError, match="anatomy not found"):
        make_phantom(0, anatomy=tmp_path / "nowhere")
