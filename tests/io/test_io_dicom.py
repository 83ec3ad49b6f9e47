"""DICOM PT series reading and SUV on synthetic series written with pydicom (io_dicom_synth)."""

from __future__ import annotations

import math
import shutil
import zipfile

import numpy as np
import pytest
from io_dicom_synth import expected_ras_affine, pattern, write_series

from seganypet.errors import DicomError, ImageReadError, SUVError
from seganypet.io import read_pet

HL = 6586.2


def suvbw_factor(weight_kg: float, dose_bq: float, dt_s: float, half_life: float = HL) -> float:
    """Hand computation: SUVbw = C * weight[g] / (dose * 2^(-dt/T1/2))."""
    return weight_kg * 1000.0 / (dose_bq * 2.0 ** (-dt_s / half_life))


def test_bqml_start_values_geometry_and_order(tmp_path):
    vals = pattern((7, 5, 6), scale=20000.0)
    w = write_series(tmp_path / "s", vals)  # shuffled files, random names, reversed InstanceNumber
    img = read_pet(tmp_path / "s")
    assert img.shape == (7, 5, 6)
    assert img.units == "SUVbw"
    f = suvbw_factor(70.0, 370e6, 3600.0)
    np.testing.assert_allclose(img.array, w.values * f, rtol=1e-6)
    np.testing.assert_allclose(img.affine, expected_ras_affine(w), atol=1e-6)
    # LPS -> RAS: first slice position (-100, -120, -300) LPS is (100, 120, -300) RAS
    np.testing.assert_allclose(img.ijk_to_mm([0, 0, 0]), [100.0, 120.0, -300.0])
    np.testing.assert_allclose(img.spacing, (2.0, 3.0, 4.0))
    md = img.metadata
    assert md["weight_kg"] == 70.0 and md["dose_bq"] == 370e6 and md["sex"] == "M"
    assert md["series_instance_uid"] == w.series_uid
    assert md["suv_factor"] == pytest.approx(f, rel=1e-12)
    assert md["uptake_time_s"] == pytest.approx(3600.0)
    assert len(img.source_datasets) == 6
    # source datasets are in k order (ascending position along the normal)
    z = [float(ds.ImagePositionPatient[2]) for ds in img.source_datasets]
    assert z == sorted(z)


def test_per_slice_rescale_slope_is_applied(tmp_path):
    vals = pattern((4, 3, 5), scale=1000.0)
    vals[:, :, 2] *= 50.0  # one hot slice: its slope differs from the others
    w = write_series(tmp_path / "s", vals, per_slice_slope=True)
    import pydicom

    slopes = {float(pydicom.dcmread(f).RescaleSlope) for f in w.files}
    assert len(slopes) == 5
    img = read_pet(tmp_path / "s", suv="none")
    assert img.units == "Bq/mL"
    np.testing.assert_array_equal(img.array, w.values)
    np.testing.assert_allclose(img.array, vals, rtol=1e-3)


def test_admin_decay_correction_has_no_decay_step(tmp_path):
    vals = pattern((4, 3, 3), scale=5000.0)
    w = write_series(tmp_path / "s", vals, decay_correction="ADMIN", injection_time=None)
    img = read_pet(tmp_path / "s")
    np.testing.assert_allclose(img.array, w.values * 70000.0 / 370e6, rtol=1e-6)
    assert img.metadata["decay_factor"] == 1.0


def test_gml_is_already_suv_and_converts_to_sul_and_bsa(tmp_path):
    vals = pattern((4, 3, 3), scale=10.0)
    w = write_series(tmp_path / "s", vals, units="GML", weight=80.0, height=1.8, sex="F")
    img = read_pet(tmp_path / "s")
    assert img.units == "SUVbw"
    np.testing.assert_array_equal(img.array, w.values)
    sul = read_pet(tmp_path / "s", suv="lbm")
    bmi = 80.0 / 1.8**2
    lbm = 9270.0 * 80.0 / (8780.0 + 244.0 * bmi)  # Janmahasatian, female
    assert sul.units == "SUVlbm"
    np.testing.assert_allclose(sul.array, w.values * lbm / 80.0, rtol=1e-6)
    bsa = read_pet(tmp_path / "s", suv="bsa")
    bsa_cm2 = 0.007184 * 80.0**0.425 * 180.0**0.725 * 1e4  # DuBois
    assert bsa.units == "SUVbsa"
    np.testing.assert_allclose(bsa.array, w.values * bsa_cm2 / 80000.0, rtol=1e-6)


def test_sul_from_bqml_male(tmp_path):
    vals = pattern((3, 3, 2), scale=8000.0)
    w = write_series(tmp_path / "s", vals, weight=90.0, height=1.7, sex="M")
    img = read_pet(tmp_path / "s", suv="lbm")
    lbm_kg = 9270.0 * 90.0 / (6680.0 + 216.0 * 90.0 / 1.7**2)
    np.testing.assert_allclose(img.array, w.values * suvbw_factor(lbm_kg, 370e6, 3600.0), rtol=1e-6)


def test_sul_without_height_names_tag_and_flag(tmp_path):
    write_series(tmp_path / "s", pattern((3, 3, 2)), height=None)
    with pytest.raises(SUVError, match=r"PatientSize \(0010,1020\).*--height"):
        read_pet(tmp_path / "s", suv="lbm")
    img = read_pet(tmp_path / "s", suv="lbm", height=1.75)
    assert img.units == "SUVlbm" and img.metadata["height_m"] == 1.75


def test_cnts_with_philips_factor(tmp_path):
    vals = pattern((4, 4, 3), scale=3000.0)
    w = write_series(
        tmp_path / "s", vals, units="CNTS", philips_suv_factor=0.000123, decay_correction="START"
    )
    img = read_pet(tmp_path / "s")
    assert img.units == "SUVbw"
    np.testing.assert_allclose(img.array, w.values * 0.000123, rtol=1e-6)
    assert img.metadata["philips_suv_scale"] == pytest.approx(0.000123)


def test_cnts_without_philips_factor_is_refused(tmp_path):
    write_series(tmp_path / "s", pattern((3, 3, 2)), units="CNTS")
    with pytest.raises(SUVError, match=r"\(7053,1000\)"):
        read_pet(tmp_path / "s")
    assert read_pet(tmp_path / "s", suv="none").units == "CNTS"


def test_missing_weight_error_and_override(tmp_path):
    vals = pattern((3, 3, 2), scale=5000.0)
    w = write_series(tmp_path / "s", vals, weight=None)
    with pytest.raises(SUVError) as err:
        read_pet(tmp_path / "s")
    msg = str(err.value)
    assert "PatientWeight (0010,1030) is missing" in msg and "--weight" in msg
    img = read_pet(tmp_path / "s", weight=65.0)
    np.testing.assert_allclose(img.array, w.values * suvbw_factor(65.0, 370e6, 3600.0), rtol=1e-6)
    assert img.metadata["weight_kg"] == 65.0


def test_missing_dose_and_injection_time_name_tags(tmp_path):
    write_series(tmp_path / "a", pattern((3, 3, 2)), dose=None)
    with pytest.raises(SUVError, match=r"RadionuclideTotalDose \(0018,1074\).*--dose"):
        read_pet(tmp_path / "a")
    img = read_pet(tmp_path / "a", dose=200e6)
    assert img.metadata["dose_bq"] == 200e6
    write_series(tmp_path / "b", pattern((3, 3, 2)), injection_time=None)
    with pytest.raises(SUVError, match=r"RadiopharmaceuticalStartTime.*--injection-time"):
        read_pet(tmp_path / "b")
    img = read_pet(tmp_path / "b", injection_time="10:30")
    assert img.metadata["uptake_time_s"] == pytest.approx(5400.0)


def test_injection_after_scan_is_contradictory(tmp_path):
    write_series(tmp_path / "s", pattern((3, 3, 2)), injection_time="130000")
    with pytest.raises(SUVError, match="lies after the scan time"):
        read_pet(tmp_path / "s")


def test_start_datetime_preferred_and_series_after_acquisition(tmp_path):
    # injection the evening before (DateTime gives the date); series time after acquisition time
    write_series(
        tmp_path / "s",
        pattern((3, 3, 2), scale=5000.0),
        injection_time=None,
        injection_datetime="20240104230000",
        series_time="013000",
        acquisition_time="010000",
    )
    img = read_pet(tmp_path / "s")
    assert img.metadata["uptake_time_s"] == pytest.approx(2 * 3600.0)  # to the acquisition time
    assert any("SeriesTime lies after AcquisitionTime" in m for m in img.metadata["warnings"])


def test_suspicious_values_warn(tmp_path, caplog):
    write_series(tmp_path / "s", pattern((3, 3, 2)), weight=350.0, injection_time="120000")
    with caplog.at_level("WARNING"):
        img = read_pet(tmp_path / "s")
    warns = img.metadata["warnings"]
    assert any("350 kg" in m for m in warns)
    assert any("injection time equals the scan time" in m for m in warns)
    assert "injection time equals the scan time" in caplog.text
    write_series(tmp_path / "z", pattern((3, 3, 2)), weight=0.0)
    with pytest.raises(SUVError, match=r"PatientWeight \(0010,1030\) is 0 kg.*--weight"):
        read_pet(tmp_path / "z")


def test_two_pet_series_need_a_uid(tmp_path):
    a = write_series(tmp_path / "f", pattern((3, 3, 2)), seed=1)
    b = write_series(tmp_path / "f" / "sub", pattern((3, 3, 3)) * 2, seed=2)
    with pytest.raises(DicomError) as err:
        read_pet(tmp_path / "f")
    msg = str(err.value)
    assert a.series_uid in msg and b.series_uid in msg and "--series-uid" in msg
    img = read_pet(tmp_path / "f", series_uid=b.series_uid)
    assert img.shape == (3, 3, 3)
    with pytest.raises(DicomError, match="no series with SeriesInstanceUID 1.2.3"):
        read_pet(tmp_path / "f", series_uid="1.2.3")


def test_pet_is_picked_beside_ct_and_ct_alone_is_refused(tmp_path):
    ct_both = write_series(tmp_path / "both" / "ct", pattern((3, 3, 4)), modality="CT", seed=3)
    pt = write_series(tmp_path / "both" / "pt", pattern((3, 3, 2)), seed=4)
    assert read_pet(tmp_path / "both").metadata["series_instance_uid"] == pt.series_uid
    ct = write_series(tmp_path / "ct", pattern((3, 3, 4)), modality="CT", seed=5)
    with pytest.raises(DicomError, match="not a PET series"):
        read_pet(tmp_path / "ct")
    with pytest.raises(DicomError, match="not a PET series"):
        read_pet(tmp_path / "both", series_uid=ct_both.series_uid)
    with pytest.raises(DicomError, match="not a PET series"):
        read_pet(ct.files[0])


def test_oblique_orientation(tmp_path):
    a = math.radians(20.0)
    b = math.radians(-15.0)
    row = np.array([math.cos(a), math.sin(a), 0.0])
    col0 = np.array([-math.sin(a), math.cos(a), 0.0])
    # tilt the column direction out of the axial plane (rotation about the row direction)
    col = col0 * math.cos(b) + np.cross(row, col0) * math.sin(b)
    vals = pattern((6, 5, 4), scale=9000.0)
    w = write_series(tmp_path / "s", vals, row_dir=tuple(row), col_dir=tuple(col))
    img = read_pet(tmp_path / "s", suv="none")
    np.testing.assert_allclose(img.affine, expected_ras_affine(w), atol=1e-6)
    np.testing.assert_array_equal(img.array, w.values)
    # voxel (i, j, k) sits at IPP_k + i * col_spacing * row + j * row_spacing * col (LPS)
    for i, j, k in [(0, 0, 0), (5, 4, 3), (2, 1, 2)]:
        lps = w.positions[k] + i * 2.0 * row + j * 3.0 * col
        np.testing.assert_allclose(img.ijk_to_mm([i, j, k]), [-lps[0], -lps[1], lps[2]], atol=1e-6)


def test_gantry_tilt_is_refused(tmp_path):
    write_series(tmp_path / "a", pattern((3, 3, 4)), tilt_shift_mm=0.7)
    with pytest.raises(DicomError, match="gantry tilt"):
        read_pet(tmp_path / "a")
    write_series(tmp_path / "b", pattern((3, 3, 4)), gantry_tilt_tag=12.0)
    with pytest.raises(DicomError, match="gantry tilt"):
        read_pet(tmp_path / "b")


def test_non_orthogonal_orientation_is_refused(tmp_path):
    write_series(tmp_path / "s", pattern((3, 3, 2)), col_dir=(0.3, 0.9539392014169456, 0.0))
    with pytest.raises(DicomError, match="not orthogonal"):
        read_pet(tmp_path / "s")


def test_irregular_spacing_is_reported_or_refused(tmp_path):
    import pydicom

    w = write_series(tmp_path / "s", pattern((3, 3, 5)))
    # move the last slice by 0.2 mm: small irregularity -> warning
    for f in w.files:
        ds = pydicom.dcmread(f)
        if float(ds.ImagePositionPatient[2]) == pytest.approx(w.positions[-1][2]):
            ds.ImagePositionPatient = [*list(ds.ImagePositionPatient)[:2], float(w.positions[-1][2]) + 0.2]
            ds.save_as(f)
    img = read_pet(tmp_path / "s")
    assert any("irregular" in m for m in img.metadata["warnings"])
    # drop a middle slice: a gap twice the spacing -> error
    w2 = write_series(tmp_path / "t", pattern((3, 3, 5)), seed=7)
    z_mid = w2.positions[2][2]
    for f in w2.files:
        if float(pydicom.dcmread(f).ImagePositionPatient[2]) == pytest.approx(z_mid):
            f.unlink()
    with pytest.raises(DicomError, match="irregular"):
        read_pet(tmp_path / "t")


def test_repeated_positions_are_refused(tmp_path):
    w = write_series(tmp_path / "s", pattern((3, 3, 3)))
    shutil.copy(w.files[0], tmp_path / "s" / "copy.dcm")
    import pydicom

    ds = pydicom.dcmread(tmp_path / "s" / "copy.dcm")
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.save_as(tmp_path / "s" / "copy.dcm")
    with pytest.raises(DicomError, match="share one position"):
        read_pet(tmp_path / "s")


def test_zip_input_and_unsafe_zips(tmp_path):
    w = write_series(tmp_path / "s", pattern((4, 3, 3), scale=5000.0))
    zpath = tmp_path / "series.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in w.files:
            zf.write(f, f"patient/pet/{f.name}")
    img = read_pet(zpath)
    np.testing.assert_allclose(img.array, w.values * suvbw_factor(70.0, 370e6, 3600.0), rtol=1e-6)
    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../../evil.dcm", b"x")
    with pytest.raises(ImageReadError, match="path traversal"):
        read_pet(bad)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.dcm", b"\0" * (5 * 1024 * 1024))
    with pytest.raises(ImageReadError, match="zip bomb"):
        read_pet(bomb)
    with pytest.raises(ImageReadError, match="zip bomb"):
        read_pet(zpath, max_zip_bytes=1000)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(zpath.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="not a readable zip archive"):
        read_pet(broken)


def test_single_file_and_one_slice_folder_are_3d(tmp_path):
    w = write_series(tmp_path / "s", pattern((4, 3, 1), scale=5000.0))
    a = read_pet(w.files[0])
    b = read_pet(tmp_path / "s")
    assert a.shape == b.shape == (4, 3, 1)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.spacing, (2.0, 3.0, 4.0))  # k spacing from SliceThickness


def test_folder_with_non_dicom_files_only(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hello")
    with pytest.raises(DicomError, match="holds no DICOM files"):
        read_pet(tmp_path / "d")


def test_single_file_of_a_series_warns(tmp_path):
    w = write_series(tmp_path / "s", pattern((4, 3, 3), scale=5000.0))
    img = read_pet(w.files[0])
    assert img.shape == (4, 3, 1)
    assert any("one slice of a series with 3 files" in m for m in img.metadata["warnings"])


def test_truncated_and_fake_dicom_files(tmp_path):
    w = write_series(tmp_path / "s", pattern((8, 8, 3), scale=5000.0))
    raw = w.files[1].read_bytes()
    w.files[1].write_bytes(raw[: len(raw) - 60])  # pixel data cut short
    with pytest.raises(DicomError, match="pixel data"):
        read_pet(tmp_path / "s")
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(np.random.default_rng(3).bytes(2000))
    with pytest.raises(ImageReadError, match="fake.dcm"):
        read_pet(fake)


def test_missing_dates_use_times_only(tmp_path):
    import pydicom

    w = write_series(tmp_path / "s", pattern((3, 3, 2), scale=5000.0))
    for f in w.files:
        ds = pydicom.dcmread(f)
        for key in ("SeriesDate", "AcquisitionDate", "StudyDate"):
            delattr(ds, key)
        ds.save_as(f)
    img = read_pet(tmp_path / "s")
    assert img.metadata["uptake_time_s"] == pytest.approx(3600.0)


def test_decay_correction_tags_checked(tmp_path):
    write_series(tmp_path / "a", pattern((3, 3, 2)), corrected=("ATTN",))
    with pytest.raises(SUVError, match="contradictory"):
        read_pet(tmp_path / "a")
    write_series(tmp_path / "d", pattern((3, 3, 2)), corrected=("DECY",))  # one value: a str in pydicom
    assert read_pet(tmp_path / "d").units == "SUVbw"
    write_series(tmp_path / "b", pattern((3, 3, 2)), decay_correction="NONE", corrected=("ATTN",))
    with pytest.raises(SUVError, match="not decay corrected"):
        read_pet(tmp_path / "b")
    assert read_pet(tmp_path / "b", suv="none").units == "Bq/mL"
    write_series(tmp_path / "c", pattern((3, 3, 2)), decay_correction=None)
    with pytest.raises(SUVError, match=r"DecayCorrection \(0054,1102\) is missing"):
        read_pet(tmp_path / "c")
