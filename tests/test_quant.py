"""seganypet.quant: hand-computed statistics, the analytic SUVpeak phantoms, reference regions, outputs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from seganypet.errors import InputError
from seganypet.image import PETImage
from seganypet.quant import (
    CONTRACT_KEYS,
    OBJECT_COLUMNS,
    PEAK_RADIUS_MM,
    classify,
    compute_stats,
    sphere_kernel,
    write_stats,
)
from seganypet.report import format_table

SP = (2.0, 3.0, 4.0)  # anisotropic voxels, 0.024 mL


def _pet(array, spacing=SP, units="SUVbw", origin=(10.0, -20.0, 30.0)) -> PETImage:
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    return PETImage(np.asarray(array, dtype=np.float32), aff, units=units)


def _pv_sphere(shape, spacing, centre_ijk, radius, n=8) -> np.ndarray:
    """Partial-volume fraction of each voxel inside a sphere (n^3 sub-samples per voxel)."""
    s = (np.arange(n) + 0.5) / n - 0.5
    idx = np.stack(np.meshgrid(*[np.arange(k) for k in shape], indexing="ij"), -1).astype(float)
    out = np.zeros(shape)
    for a in s:
        for b in s:
            for c in s:
                d = (idx + [a, b, c] - np.asarray(centre_ijk)) * np.asarray(spacing)
                out += np.sum(d**2, -1) <= radius**2
    return out / n**3


def test_peak_radius_is_one_millilitre():
    assert 4 / 3 * math.pi * PEAK_RADIUS_MM**3 == pytest.approx(1000.0)
    assert PEAK_RADIUS_MM == pytest.approx(6.2035, abs=1e-4)


@pytest.mark.parametrize(
    "linear",
    [
        np.diag([1.0, 1.0, 1.0]),
        np.diag([2.0, 3.0, 4.0]),
        np.diag([4.6875, 4.6875, 3.27]),
        # rotated by 30 degrees about z, anisotropic
        np.array([[math.cos(0.52), -math.sin(0.52), 0], [math.sin(0.52), math.cos(0.52), 0], [0, 0, 1]])
        @ np.diag([2.0, 2.5, 3.0]),
    ],
)
def test_fractional_kernel_volume_is_one_ml(linear):
    k = sphere_kernel(linear, PEAK_RADIUS_MM)
    assert all(s % 2 == 1 for s in k.shape)
    vol = k.sum() * abs(np.linalg.det(linear)) / 1000.0
    assert vol == pytest.approx(1.0, abs=0.003)
    assert np.allclose(k, k[::-1, ::-1, ::-1])  # point-symmetric: convolution == correlation


def test_hand_computed_object_on_anisotropic_grid():
    img = np.zeros((6, 5, 4), np.float32)
    lm = np.zeros((6, 5, 4), np.int16)
    vals = {(1, 1, 1): 2.0, (2, 1, 1): 4.0, (2, 2, 1): 6.0, (2, 2, 2): 8.0}
    for ijk, v in vals.items():
        img[ijk] = v
        lm[ijk] = 3
    img[5, 4, 3] = 100.0  # hotter voxel outside the object must not count as its max
    pet = _pet(img)
    stats = compute_stats(pet, lm, {3: "node"})
    assert stats["units"] == "SUVbw"
    (o,) = stats["objects"]
    v = np.array(list(vals.values()))
    assert (o["label"], o["name"], o["kind"], o["voxels"]) == (3, "node", "lesion", 4)
    assert o["volume_ml"] == pytest.approx(4 * 0.024)
    assert o["mtv_ml"] == pytest.approx(0.096)
    assert o["suv_max"] == pytest.approx(8.0)
    assert o["suv_max_ijk"] == [2, 2, 2]
    assert o["suv_max_mm"] == pytest.approx([10 + 4.0, -20 + 6.0, 30 + 8.0])
    assert o["suv_mean"] == pytest.approx(5.0)
    assert o["suv_min"] == pytest.approx(2.0)
    assert o["suv_sd"] == pytest.approx(v.std())
    assert o["tlg"] == pytest.approx(5.0 * 0.096)
    assert o["centroid_ijk"] == pytest.approx([1.75, 1.5, 1.25])
    assert o["centroid_mm"] == pytest.approx([10 + 3.5, -20 + 4.5, 30 + 5.0])
    assert (o["bbox_min_ijk"], o["bbox_max_ijk"]) == ([1, 1, 1], [2, 2, 2])
    assert o["n_components"] == 1 and o["component"] == 0
    p = stats["patient"]
    assert p["lesion_count"] == 1 and p["suv_max"] == pytest.approx(8.0)
    assert p["total_mtv_ml"] == pytest.approx(0.096) and p["total_tlg"] == pytest.approx(0.48)
    assert set(CONTRACT_KEYS) <= set(o) and list(o) == OBJECT_COLUMNS


def test_suvmax_tie_takes_first_voxel_in_raster_order():
    img = np.ones((4, 4, 4), np.float32)
    img[1, 2, 0] = img[2, 0, 3] = 5.0
    lm = np.ones((4, 4, 4), np.uint8)
    (o,) = compute_stats(_pet(img), lm)["objects"]
    assert o["suv_max_ijk"] == [1, 2, 0]


def test_uniform_image_peak_equals_value_even_at_the_edge():
    img = np.full((9, 8, 7), 3.0, np.float32)
    lm = np.zeros(img.shape, np.uint8)
    lm[0, 0, 0] = 1  # a corner voxel: the sphere is truncated to the image and renormalised
    lm[4, 4, 3] = 2
    objs = {o["label"]: o for o in compute_stats(_pet(img), lm)["objects"]}
    assert objs[1]["suv_peak"] == pytest.approx(3.0)
    assert objs[2]["suv_peak"] == pytest.approx(3.0)
    # coverage = the part of the sphere inside the image: {x > -1, y > -1.5, z > -2} mm from its centre
    g = np.linspace(-PEAK_RADIUS_MM, PEAK_RADIUS_MM, 121)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    ball = x**2 + y**2 + z**2 <= PEAK_RADIUS_MM**2
    inside = ball & (x > -SP[0] / 2) & (y > -SP[1] / 2) & (z > -SP[2] / 2)
    assert objs[1]["suv_peak_coverage"] == pytest.approx(inside.sum() / ball.sum(), abs=0.01)
    assert objs[2]["suv_peak_coverage"] == pytest.approx(1.0)


def test_object_at_the_image_edge():
    img = np.zeros((5, 6, 7), np.float32)
    lm = np.zeros(img.shape, np.uint8)
    lm[0, :, 6] = 1  # a line on two faces of the image
    img[0, :, 6] = np.arange(6) + 1.0
    (o,) = compute_stats(_pet(img), lm)["objects"]
    assert o["voxels"] == 6 and o["suv_max"] == 6.0 and o["suv_max_ijk"] == [0, 5, 6]
    assert o["suv_mean"] == pytest.approx(3.5)
    assert o["bbox_min_ijk"] == [0, 0, 6] and o["bbox_max_ijk"] == [0, 5, 6]
    # the sphere is truncated on three sides at voxel (0,5,6): the peak is the mean of what is inside
    assert o["suv_peak_coverage"] < 0.5
    assert 0.0 < o["suv_peak"] < 6.0


@pytest.mark.parametrize("radius", [3.0, 4.0, 5.0])
def test_suv_peak_hot_sphere_analytic(radius):
    """A hot sphere (10, radius R < r_peak) on background 1, concentric with the peak sphere:
    SUVpeak = 1 + 9 (R / r_peak)^3 exactly; voxel values are partial-volume fractions."""
    sp, shape, c = (1.5, 2.0, 2.5), (21, 17, 15), (10, 8, 7)
    img = 1.0 + 9.0 * _pv_sphere(shape, sp, c, radius)
    lm = np.zeros(shape, np.uint8)
    lm[c] = 1
    (o,) = compute_stats(_pet(img, sp), lm)["objects"]
    expected = 1.0 + 9.0 * (radius / PEAK_RADIUS_MM) ** 3
    assert o["suv_peak"] == pytest.approx(expected, rel=0.02)
    assert o["suv_peak_ijk"] == list(c)


@pytest.mark.parametrize("i0", [7, 8, 9])
def test_suv_peak_half_space_analytic(i0):
    """Activity 1 beyond a plane on voxel boundaries: the mean in the sphere is the volume fraction of
    the spherical cap beyond the plane, pi h^2 (3r - h) / 3 / (4/3 pi r^3), h = r - d."""
    sp, shape = (2.0, 3.0, 4.0), (20, 9, 9)
    img = np.zeros(shape, np.float32)
    img[10:] = 1.0  # plane at i = 9.5
    lm = np.zeros(shape, np.uint8)
    lm[i0, 4, 4] = 1
    r = PEAK_RADIUS_MM
    h = r - (9.5 - i0) * sp[0]
    expected = math.pi * h * h * (3 * r - h) / 3 / (4 / 3 * math.pi * r**3)
    fractional = compute_stats(_pet(img, sp), lm)["objects"][0]["suv_peak"]
    assert fractional == pytest.approx(expected, rel=0.01, abs=1e-4)
    centres = compute_stats(_pet(img, sp), lm, peak_sampling="centres")["objects"][0]["suv_peak"]
    assert abs(centres - expected) > abs(fractional - expected)  # why fractional is the default


def test_suv_peak_large_uniform_sphere_and_local_peak():
    sp, shape, c = (2.0, 2.0, 3.0), (25, 25, 17), (12, 12, 8)
    hot = _pv_sphere(shape, sp, c, 15.0, n=4) > 0.5
    img = np.where(hot, 10.0, 1.0)
    img[12, 12, 8] = 20.0  # a single hot voxel: the local peak around it is diluted
    (o,) = compute_stats(_pet(img, sp), hot.astype(np.uint8))["objects"]
    assert o["suv_max"] == 20.0
    assert o["suv_peak_local"] == pytest.approx(o["suv_peak"])
    w = sphere_kernel(np.diag(sp), PEAK_RADIUS_MM)
    assert o["suv_peak"] == pytest.approx(10.0 + 10.0 * w.max() / w.sum())


def test_components_with_18_connectivity():
    img = np.ones((8, 8, 8), np.float32)
    lm = np.zeros((8, 8, 8), np.uint8)
    lm[1, 1, 1] = lm[2, 2, 2] = 1  # corner contact only: two 18-connected components
    lm[5, 5, 5] = lm[6, 6, 5] = lm[6, 6, 6] = 2  # edge contact: one component
    lm[0:2, 6:8, 6:8] = 1  # a third, larger part of label 1
    img[2, 2, 2] = 7.0
    plain = compute_stats(_pet(img), lm)
    assert [o["n_components"] for o in plain["objects"]] == [3, 1]
    assert plain["patient"]["lesion_components"] == 4
    split = compute_stats(_pet(img), lm, {1: "lesions"}, components=True)
    rows = [(o["label"], o["component"], o["voxels"]) for o in split["objects"]]
    assert rows == [(1, 1, 8), (1, 2, 1), (1, 3, 1), (2, 1, 3)]
    assert split["patient"]["lesion_count"] == 4
    assert split["patient"]["total_mtv_ml"] == pytest.approx(plain["patient"]["total_mtv_ml"])
    hot = [o for o in split["objects"] if o["suv_max"] == 7.0]
    assert len(hot) == 1 and hot[0]["suv_max_ijk"] == [2, 2, 2]


def test_empty_label_map(tmp_path):
    pet = _pet(np.ones((4, 5, 6)))
    stats = compute_stats(pet, np.zeros((4, 5, 6), np.uint8), {1: "liver"})
    assert stats["objects"] == [] and stats["patient"]["lesion_count"] == 0
    assert stats["patient"]["suv_max"] is None and stats["patient"]["total_mtv_ml"] == 0.0
    js = json.loads(write_stats(stats, tmp_path / "s.json").read_text())
    assert js["objects"] == [] and js["units"] == "SUVbw"
    with open(write_stats(stats, tmp_path / "s.csv"), newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["units", *OBJECT_COLUMNS]]
    assert "no objects" in format_table(stats)


def test_classify():
    assert classify("liver") == ("organ", "liver")
    assert classify("Liver_lesion") == ("lesion", None)
    assert classify("aorta") == ("organ", "blood_pool")
    assert classify("Mediastinal blood pool") == ("organ", "blood_pool")
    assert classify("kidney_left") == ("organ", None)
    assert classify(None) == ("lesion", None)
    assert classify("spot 3") == ("lesion", None)
    assert classify("liver", kind="lesion") == ("lesion", None)
    assert classify("spot", kind="organ") == ("organ", None)


def test_reference_regions_and_ratios():
    rng = np.random.default_rng(0)
    sp, shape = (3.0, 3.0, 3.0), (40, 30, 30)
    img = rng.normal(2.0, 0.2, shape).astype(np.float32)
    lm = np.zeros(shape, np.uint8)
    lm[2:22, 3:27, 3:27] = 1  # liver box 60 x 72 x 72 mm: a 3 cm sphere fits at its centre
    lm[30:33, 5:8, 5:8] = 2
    img[31, 6, 6] = 8.0
    lm[26:38, 20:24, 20:24] = 3  # "aorta": a 12 mm x 12 mm tube along i
    img[lm == 3] = 1.5
    stats = compute_stats(_pet(img, sp), lm, {1: "liver", 2: "lesion a", 3: "aorta"})
    ref = stats["reference"]["liver"]
    assert ref["label"] == 1 and ref["fits"] and ref["depth_mm"] >= 15.0
    assert ref["centre_ijk"][0] in (11, 12) and ref["centre_ijk"][1] in (14, 15)
    sphere = np.linalg.norm((np.argwhere(lm == 1) - ref["centre_ijk"]) * 3.0, axis=1) <= 15.0
    assert ref["voxels"] == sphere.sum()
    vals = img[tuple(np.argwhere(lm == 1)[sphere].T)]
    assert ref["mean"] == pytest.approx(vals.mean(), rel=1e-6)
    assert ref["sd"] == pytest.approx(vals.std(), rel=1e-5)
    bp = stats["reference"]["blood_pool"]
    assert bp["mean"] == pytest.approx(1.5) and bp["voxels"] > 0
    p = stats["patient"]
    assert p["lesion_count"] == 1 and p["suv_max"] == pytest.approx(8.0)
    assert p["suv_max_to_liver"] == pytest.approx(8.0 / ref["mean"])
    assert p["suv_max_to_blood_pool"] == pytest.approx(8.0 / 1.5)
    assert p["percist_threshold"] == pytest.approx(1.5 * ref["mean"] + 2 * ref["sd"])
    lesion = [o for o in stats["objects"] if o["label"] == 2][0]
    assert lesion["ratio_to_liver"] == pytest.approx(8.0 / ref["mean"])
    # kinds override the name rules: the "liver" becomes a lesion and no reference
    alt = compute_stats(_pet(img, sp), lm, {1: "liver", 2: "a"}, kinds={1: "lesion", 3: "organ"})
    assert "liver" not in alt["reference"] and alt["patient"]["lesion_count"] == 2


def test_units_follow_the_image(tmp_path):
    img = np.zeros((5, 5, 5), np.float32)
    img[2, 2, 2] = 12345.0
    lm = (img > 0).astype(np.uint8)
    stats = compute_stats(_pet(img, units="Bq/mL"), lm)
    assert stats["units"] == "Bq/mL" and stats["objects"][0]["suv_max"] == 12345.0
    with open(write_stats(stats, tmp_path / "s.csv"), newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["units"] == "Bq/mL" and json.loads(row["suv_max_ijk"]) == [2, 2, 2]
    assert float(row["suv_max"]) == 12345.0 and int(row["voxels"]) == 1
    assert "Bq/mL" in format_table(stats)


def test_write_stats_json_roundtrip_and_bad_suffix(tmp_path):
    img = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    lm = np.zeros((3, 4, 5), np.uint8)
    lm[1:, 1:3, 2:] = 1
    stats = compute_stats(_pet(img), lm, {1: "x"})
    back = json.loads(write_stats(stats, tmp_path / "out" / "s.json").read_text())
    assert back["objects"][0]["suv_max"] == pytest.approx(stats["objects"][0]["suv_max"])
    assert back["patient"]["lesion_count"] == 1
    with pytest.raises(InputError, match="csv or .json"):
        write_stats(stats, tmp_path / "s.txt")
    assert not (tmp_path / "s.txt").exists()


def test_bad_label_maps():
    pet = _pet(np.ones((4, 4, 4)))
    with pytest.raises(InputError, match="shape"):
        compute_stats(pet, np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(InputError, match="non-integer"):
        compute_stats(pet, np.full((4, 4, 4), 0.5))
    with pytest.raises(InputError, match="negative"):
        compute_stats(pet, -np.ones((4, 4, 4), np.int8))
    ok = compute_stats(pet, np.ones((4, 4, 4), bool))
    assert ok["objects"][0]["voxels"] == 64


def test_real_sts001(shared_data):
    nib = pytest.importorskip("nibabel")
    case = shared_data / "pet-real" / "ibsi-sts" / "nifti" / "STS_001"
    img = nib.load(case / "PET_image.nii.gz")
    mask = np.asarray(nib.load(case / "PET_mask.nii.gz").dataobj)
    pet = PETImage(img.get_fdata(dtype=np.float32), img.affine, units="SUVbw")
    stats = compute_stats(pet, mask, {1: "GTV"})
    (o,) = stats["objects"]
    inside = pet.array[mask > 0]
    assert o["suv_max"] == float(inside.max())
    assert pet.array[tuple(o["suv_max_ijk"])] == inside.max()
    assert o["voxels"] == int((mask > 0).sum())
    assert o["mtv_ml"] == pytest.approx(o["voxels"] * abs(np.linalg.det(img.affine[:3, :3])) / 1000)
    assert o["suv_mean"] == pytest.approx(float(inside.astype(np.float64).mean()))
    assert o["tlg"] == pytest.approx(o["suv_mean"] * o["mtv_ml"])
    assert o["suv_mean"] < o["suv_peak"] <= o["suv_max"]


def test_whole_image_and_cropped_convolutions_agree():
    """Many/large objects switch to one whole-image convolution; the numbers must not change."""
    rng = np.random.default_rng(5)
    img = rng.gamma(3.0, 1.0, (30, 28, 26)).astype(np.float32)
    small = np.zeros(img.shape, np.uint8)
    small[10:14, 12:15, 0:3] = 1  # at the k = 0 face
    big = small.copy()
    big[small == 0] = 2  # covers the rest of the image -> whole-image path
    a = compute_stats(_pet(img), small)["objects"][0]
    b = compute_stats(_pet(img), big)["objects"][0]
    for key in ("suv_peak", "suv_peak_local", "suv_peak_coverage"):
        assert b[key] == pytest.approx(a[key], rel=1e-9)
    assert a["suv_peak_ijk"] == b["suv_peak_ijk"] and a["suv_peak_coverage"] < 1.0


def test_chunked_convolution_matches(monkeypatch):
    import seganypet.quant as quant

    rng = np.random.default_rng(9)
    img = rng.gamma(3.0, 1.0, (12, 10, 23)).astype(np.float32)
    lm = np.ones(img.shape, np.uint8)
    lm[3:6, 3:6, 9:14] = 2
    whole = compute_stats(_pet(img), lm)
    monkeypatch.setattr(quant, "CHUNK_VOXELS", 12 * 10 * 4)  # slabs of 4 slices
    chunked = compute_stats(_pet(img), lm)
    for a, b in zip(whole["objects"], chunked["objects"]):
        assert b["suv_peak"] == pytest.approx(a["suv_peak"], rel=1e-9)
        assert b["suv_peak_ijk"] == a["suv_peak_ijk"]
