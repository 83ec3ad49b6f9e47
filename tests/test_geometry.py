"""seganypet.geometry: canonical reorientation, the 1.5 mm grid, exact round trips, paste-back maps."""

from __future__ import annotations

import numpy as np
import pytest

from seganypet.geometry import (
    GridMap,
    canonical_affine,
    from_model_grid,
    model_grid,
    resample,
    to_model_grid,
)


def _rot(ax: str, deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    r = np.eye(3)
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[ax]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(spacing, perm=(0, 1, 2), flips=(1, 1, 1), rot=None, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    a = np.zeros((4, 4))
    a[3, 3] = 1
    for col, (row, sp, f) in enumerate(zip(perm, spacing, flips)):
        a[row, col] = sp * f
    if rot is not None:
        a[:3, :3] = rot @ a[:3, :3]
    a[:3, 3] = origin
    return a


def _sphere(shape, affine, centre_ijk, radius_mm) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    c = np.asarray(centre_ijk, float) @ affine[:3, :3].T + affine[:3, 3]
    return np.linalg.norm(world - c, axis=-1) <= radius_mm


CASES = {
    "ras_4x4x3": _affine((4.0, 4.0, 3.0)),
    "lps_2x2x3": _affine((2.0, 2.0, 3.0), flips=(-1, -1, 1)),
    "permuted_flipped": _affine((3.0, 2.0, 4.0), perm=(2, 0, 1), flips=(1, -1, -1)),
    "oblique": _affine((2.0, 2.5, 3.0), flips=(-1, 1, 1), rot=_rot("x", 17) @ _rot("z", 8)),
    "iso_1p5": _affine((1.5, 1.5, 1.5)),
    "aniso_fine": _affine((1.6, 1.6, 5.0)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_label_round_trip_keeps_every_voxel(name):
    """A 20-voxel-wide sphere survives input -> 1.5 mm -> input exactly (inputs with voxels >= 1.5 mm)."""
    affine = CASES[name]
    shape = (40, 36, 30)
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    radius_mm = 10 * sp.min()  # 20 voxels wide along the finest axis
    lab = _sphere(shape, affine, (20, 18, 15), radius_mm).astype(np.uint8) * 3
    assert lab.sum() > 100
    model, m_aff = to_model_grid(lab, affine, 1.5, order=0)
    assert model.dtype == np.uint8
    assert np.allclose(np.linalg.norm(m_aff[:3, :3], axis=0), 1.5)
    back = from_model_grid(model, m_aff, shape, affine, order=0)
    assert back.shape == shape
    np.testing.assert_array_equal(back, lab)


def test_canonical_matches_nibabel():
    import nibabel as nib

    affine = CASES["permuted_flipped"]
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    shape, can = canonical_affine(data.shape, affine)
    assert shape == img.shape
    np.testing.assert_allclose(can, img.affine, atol=1e-9)
    assert np.all(np.diag(can[:3, :3]) > 0)


def test_model_grid_is_torchio_placement():
    """floor(n * s / 1.5) voxels, field-of-view centre kept, canonical directions."""
    affine = CASES["lps_2x2x3"]
    shape = (50, 40, 31)
    m_shape, m_aff = model_grid(shape, affine)
    assert m_shape == (66, 53, 62)
    centre_in = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    centre_m = m_aff[:3, :3] @ ((np.array(m_shape) - 1) / 2) + m_aff[:3, 3]
    np.testing.assert_allclose(centre_in, centre_m, atol=1e-9)
    np.testing.assert_allclose(m_aff[:3, :3], np.diag([1.5, 1.5, 1.5]), atol=1e-12)
    # already canonical 1.5 mm: identity (no 127.9999 -> 127 loss)
    shape2, aff2 = model_grid((128, 128, 128), np.diag([1.5, 1.5, 1.5, 1.0]))
    assert shape2 == (128, 128, 128)
    np.testing.assert_allclose(aff2, np.diag([1.5, 1.5, 1.5, 1.0]), atol=1e-12)


def test_linear_resampling_matches_simpleitk():
    """Trilinear intensities equal SimpleITK's linear resampler onto the same grid (torchio Resample)."""
    sitk = pytest.importorskip("SimpleITK")
    affine = CASES["lps_2x2x3"]
    shape = (20, 18, 12)
    data = np.random.default_rng(1).random(shape).astype(np.float32) * 5
    m_shape, m_aff = model_grid(shape, affine)
    ours = resample(data, affine, m_shape, m_aff, order=1)

    def to_sitk(arr, aff):
        img = sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0)))
        sp = np.linalg.norm(aff[:3, :3], axis=0)
        flip = np.diag([-1.0, -1.0, 1.0])
        img.SetSpacing(sp.tolist())
        img.SetDirection((flip @ (aff[:3, :3] / sp)).ravel().tolist())
        img.SetOrigin((flip @ aff[:3, 3]).tolist())
        return img

    ref_img = to_sitk(np.zeros(m_shape, np.float32), m_aff)
    out = sitk.Resample(to_sitk(data, affine), ref_img, sitk.Transform(), sitk.sitkLinear, 0.0)
    theirs = np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_identity_grid_is_exact():
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    data = np.random.default_rng(2).random((16, 16, 16)).astype(np.float32)
    out, m_aff = to_model_grid(data, affine)
    np.testing.assert_allclose(out, data, rtol=0, atol=1e-6)
    np.testing.assert_allclose(m_aff, affine, atol=1e-12)


@pytest.mark.parametrize("name", ["ras_4x4x3", "lps_2x2x3", "permuted_flipped", "oblique"])
def test_gridmap_crop_and_paste_match_full_resampling(name):
    affine = CASES[name]
    shape = (30, 26, 22)
    data = np.random.default_rng(3).random(shape).astype(np.float32)
    g = GridMap.build(shape, affine)
    full, m_aff = to_model_grid(data, affine)
    np.testing.assert_allclose(m_aff, g.affine)
    # a crop partly outside the model grid: zeros there, the full resampling inside
    origin = (-5, 3, g.shape[2] - 10)
    size = 24
    crop = g.sample_crop(data, origin, size)
    padded = np.zeros(tuple(n + 2 * size for n in full.shape), np.float32)
    padded[size:-size, size:-size, size:-size] = full
    ref = padded[tuple(slice(o + size, o + 2 * size) for o in origin)]
    np.testing.assert_allclose(crop, ref, atol=1e-5)
    # paste-back of a known crop "prediction" == nearest-neighbour resampling of the pasted model grid
    pred = np.random.default_rng(4).random((size, size, size)) > 0.5
    canvas = np.zeros(full.shape, bool)
    sl_m = tuple(slice(max(o, 0), min(o + size, n)) for o, n in zip(origin, full.shape))
    sl_c = tuple(slice(s.start - o, s.stop - o) for s, o in zip(sl_m, origin))
    canvas[sl_m] = pred[sl_c]
    expected = from_model_grid(canvas, m_aff, shape, affine, order=0)
    got = np.zeros(shape, bool)
    hit = g.paste_indices(origin, size)
    assert hit is not None
    region, idx = hit
    got[region] = pred[np.ix_(*idx)].transpose(g.inv_perm)
    np.testing.assert_array_equal(got, expected)


def test_paste_known_sphere_no_half_voxel_shift():
    """A sphere drawn on the 1.5 mm grid around a click lands around the same world point on an LPS
    1.5 mm input: exactly the voxels within the radius (no off-by-one, no half-voxel shift)."""
    affine = _affine((1.5, 1.5, 1.5), perm=(1, 0, 2), flips=(-1, -1, 1))
    shape = (60, 50, 40)
    g = GridMap.build(shape, affine)
    click = np.array([17, 22, 9])
    m = np.floor(g.input_to_model(click) + 0.5).astype(int)
    origin = m - 16
    size = 32
    zz = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1)
    pred = np.linalg.norm(zz - 16, axis=-1) <= 6.0  # radius 6 voxels = 9 mm
    got = np.zeros(shape, bool)
    region, idx = g.paste_indices(origin, size)
    got[region] = pred[np.ix_(*idx)].transpose(g.inv_perm)
    np.testing.assert_array_equal(got, _sphere(shape, affine, click, 9.0 + 1e-6))


def test_general_path_for_non_axis_aligned_grids():
    """resample() also handles grids that are not axis-aligned with each other (slow path)."""
    a = _affine((2.0, 2.0, 2.0))
    b = _affine((2.0, 2.0, 2.0), rot=_rot("z", 90.0 + 0.0))
    b[:3, :3] = _rot("z", 30) @ a[:3, :3]
    data = np.zeros((10, 10, 10), np.uint8)
    data[3:7, 3:7, 3:7] = 1
    out = resample(data, a, (10, 10, 10), b, order=0)
    assert out.dtype == np.uint8 and 0 < out.sum() < 200


def test_round_trip_on_a_real_dicom_grid(shared_data):
    """The grid of a real PT series (LPS DICOM converted to RAS on reading) round-trips exactly."""
    from seganypet.io import read_pet

    img = read_pet(shared_data / "pet-real" / "ibsi-sts" / "dicom" / "STS_001" / "PET" / "image")
    assert min(img.spacing) >= 1.5
    centre = tuple(n // 2 for n in img.shape)
    lab = _sphere(img.shape, img.affine, centre, 10 * min(img.spacing)).astype(np.uint8)
    model, m_aff = to_model_grid(lab, img.affine, order=0)
    np.testing.assert_array_equal(from_model_grid(model, m_aff, img.shape, img.affine), lab)
    # intensities: the model grid covers the same field of view centre
    centre_in = img.affine[:3, :3] @ ((np.array(img.shape) - 1) / 2) + img.affine[:3, 3]
    centre_m = m_aff[:3, :3] @ ((np.array(model.shape) - 1) / 2) + m_aff[:3, 3]
    np.testing.assert_allclose(centre_in, centre_m, atol=1e-6)
