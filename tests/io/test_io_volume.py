"""NIfTI / MHA / ECAT7 reading, unit handling, and the read errors (API level)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from io_bad_inputs import make_bad_inputs

from seganypet.errors import ImageContentError, ImageReadError, InputError, SUVError
from seganypet.image import PETImage
from seganypet.io import read_pet, write_image


def _oblique_affine() -> np.ndarray:
    a = np.deg2rad(25.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([2.0, 3.0, 4.0])
    aff[:3, 3] = [10.0, -20.0, 30.0]
    return aff


def _volume(shape=(6, 5, 4)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.gamma(2.0, 1.5, size=shape).astype(np.float32)


def test_nifti_keeps_order_affine_and_values(tmp_path):
    data = _volume()
    aff = _oblique_affine()
    nib.save(nib.Nifti1Image(data, aff), str(tmp_path / "x.nii.gz"))
    img = read_pet(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(img.array, data)
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    assert img.units == "SUVbw" and img.metadata["units_assumed"] is True
    assert img.source_datasets is None


def test_write_image_round_trip_nifti_and_mha(tmp_path):
    data = _volume()
    aff = _oblique_affine()
    src = PETImage(data, aff, units="SUVlbm")
    for name in ("y.nii.gz", "y.nii", "y.mha", "y.nrrd"):
        out = write_image(src, tmp_path / name)
        back = read_pet(out, suv="none")
        np.testing.assert_array_equal(back.array, data)
        np.testing.assert_allclose(back.affine, aff, atol=1e-5)
        assert back.units == "SUVlbm", name  # units travel in the file
    hdr = nib.load(str(tmp_path / "y.nii.gz")).header
    assert hdr.get_data_dtype() == np.float32
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
    with pytest.raises(InputError, match=r"\.nii\.gz"):
        write_image(src, tmp_path / "y.png")


def test_mha_lps_direction_becomes_ras_affine(tmp_path):
    # an ITK image written independently: check every corner maps to ITK's own physical point
    arr_kji = _volume((4, 5, 6)).transpose(2, 1, 0).copy()  # ITK array order (k, j, i)
    itk = sitk.GetImageFromArray(arr_kji)
    itk.SetSpacing((2.0, 3.0, 4.0))
    itk.SetOrigin((5.0, -7.0, 11.0))
    a = np.deg2rad(30.0)
    direction = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    itk.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(itk, str(tmp_path / "z.mha"))
    img = read_pet(tmp_path / "z.mha")
    assert img.shape == (4, 5, 6)
    np.testing.assert_array_equal(img.array, arr_kji.transpose(2, 1, 0))
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        lps = np.array(itk.TransformIndexToPhysicalPoint(tuple(int(v) for v in ijk)))
        np.testing.assert_allclose(img.ijk_to_mm(ijk), lps * [-1, -1, 1], atol=1e-9)
        assert img.array[ijk] == itk.GetPixel(*[int(v) for v in ijk])


def test_units_option_and_suv_conversion_for_volumes(tmp_path):
    data = np.full((3, 3, 3), 10000.0, np.float32)  # Bq/mL
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "bq.nii.gz"))
    with pytest.raises(SUVError, match="patient weight is unknown.*--weight"):
        read_pet(tmp_path / "bq.nii.gz", units="Bq/mL")
    img = read_pet(tmp_path / "bq.nii.gz", units="Bq/mL", weight=70.0, dose=350e6)
    np.testing.assert_allclose(img.array, 10000.0 * 70000.0 / 350e6, rtol=1e-6)
    assert img.units == "SUVbw"
    # no unit information and Bq/mL-like values: a warning is shown
    plain = read_pet(tmp_path / "bq.nii.gz")
    assert any("look like Bq/mL" in w for w in plain.metadata["warnings"])
    suv = np.full((3, 3, 3), 2.0, np.float32)
    nib.save(nib.Nifti1Image(suv, np.eye(4)), str(tmp_path / "suv.nii.gz"))
    sul = read_pet(tmp_path / "suv.nii.gz", suv="lbm", weight=70.0, height=1.75, sex="M")
    lbm = 9270.0 * 70.0 / (6680.0 + 216.0 * 70.0 / 1.75**2)
    np.testing.assert_allclose(sul.array, 2.0 * lbm / 70.0, rtol=1e-6)
    with pytest.raises(SUVError, match="sex is unknown"):
        read_pet(tmp_path / "suv.nii.gz", suv="lbm", weight=70.0, height=1.75)
    with pytest.raises(SUVError, match="cannot be turned into SUV"):
        read_pet(tmp_path / "suv.nii.gz", units="furlongs")


def test_ecat7_via_nibabel():
    from nibabel.testing import data_path

    path = Path(data_path) / "tinypet.v"
    if not path.exists():
        pytest.skip("nibabel's ECAT test file is not installed")
    img = read_pet(path, suv="none")
    ref = nib.ecat.load(str(path))
    assert img.shape == ref.shape[:3]
    assert img.units == "Bq/mL"  # ECAT data_units Bq/cc
    np.testing.assert_allclose(img.array, ref.get_fdata()[..., 0], rtol=1e-6)
    with pytest.raises(SUVError, match="--weight"):
        read_pet(path)


# --- errors --------------------------------------------------------------------------------------


ERRORS = {
    "truncated": (ImageReadError, "cannot be read as NIfTI"),
    "random": (ImageReadError, "cannot be read as NIfTI"),
    "nan": (ImageContentError, "2 NaN and 1 infinite voxel"),
    "2d": (ImageContentError, "2D image"),
    "empty": (ImageReadError, "empty folder"),
    "nodicom": (ImageReadError, "holds no DICOM files"),
    "missing": (ImageReadError, "does not exist"),
    "unknown": (ImageReadError, "unknown format"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_read_errors_are_one_sentence(tmp_path, case):
    path = make_bad_inputs(tmp_path)[case]
    cls, text = ERRORS[case]
    with pytest.raises(cls, match=text) as err:
        read_pet(path)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400


def test_nan_policy_zero_replaces_and_reports(tmp_path):
    path = make_bad_inputs(tmp_path)["nan"]
    img = read_pet(path, nan_policy="zero")
    assert np.all(np.isfinite(img.array))
    assert img.array[0, 0, 0] == 0 and img.array[2, 2, 2] == 0
    assert any("2 NaN and 1 infinite voxel" in w for w in img.metadata["warnings"])
    with pytest.raises(InputError, match="nan_policy"):
        read_pet(path, nan_policy="ignore")


def test_bad_options_are_input_errors(tmp_path):
    path = make_bad_inputs(tmp_path)["nan"]
    with pytest.raises(InputError, match="unknown read_pet option"):
        read_pet(path, wieght=70)
    with pytest.raises(InputError, match="weight must be a number"):
        read_pet(path, weight="heavy")
    with pytest.raises(SUVError, match="unknown SUV kind"):
        read_pet(path, suv="xyz")


def test_4d_and_one_slice_nifti(tmp_path):
    nib.save(nib.Nifti1Image(_volume((4, 4, 4, 3)), np.eye(4)), str(tmp_path / "t.nii.gz"))
    with pytest.raises(ImageContentError, match="4D image"):
        read_pet(tmp_path / "t.nii.gz")
    nib.save(nib.Nifti1Image(_volume((4, 4, 4, 1)), np.eye(4)), str(tmp_path / "s.nii.gz"))
    assert read_pet(tmp_path / "s.nii.gz").shape == (4, 4, 4)
    nib.save(nib.Nifti1Image(_volume((4, 4, 1)), np.eye(4)), str(tmp_path / "k1.nii.gz"))
    assert read_pet(tmp_path / "k1.nii.gz").shape == (4, 4, 1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without read permission")
def test_permission_denied(tmp_path):
    path = make_bad_inputs(tmp_path)["nan"]
    path.chmod(0)
    try:
        with pytest.raises(ImageReadError, match="permission denied"):
            read_pet(path)
    finally:
        path.chmod(0o644)


def test_unreadable_path_is_reported(tmp_path, monkeypatch):
    # root reads everything, so simulate a file without read permission at the access check
    import seganypet.io as io_mod

    path = make_bad_inputs(tmp_path)["nan"]
    monkeypatch.setattr(io_mod.os, "access", lambda p, mode: False)
    with pytest.raises(ImageReadError, match="permission denied"):
        read_pet(path)
