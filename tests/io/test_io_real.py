"""Real PET: IBSI STS_001 DICOM vs. its NIfTI, ACRIN-FLT slices vs. a hand SUV computation, DICOM SEG."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from seganypet.io import read_pet, write_dicom_seg, write_label_map

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def sts(shared_data):
    return read_pet(shared_data / "pet-real/ibsi-sts/dicom/STS_001/PET/image")


def test_sts001_dicom_matches_nifti_exactly(sts, shared_data):
    import nibabel as nib

    ref = nib.load(str(shared_data / "pet-real/ibsi-sts/nifti/STS_001/PET_image.nii.gz"))
    data = ref.get_fdata(dtype=np.float32)
    assert sts.shape == data.shape == (41, 43, 59)
    assert sts.array.dtype == np.float32
    np.testing.assert_array_equal(sts.array, data)  # exactly the same values
    np.testing.assert_allclose(sts.affine, ref.affine, atol=1e-3)
    assert sts.units == "SUVbw"
    md = sts.metadata
    assert md["dicom_units"] == "GML" and md["weight_kg"] == 71.0
    assert md["tracer"].startswith("FDG")
    assert md["warnings"] == []


# Tags of the two ACRIN-FLT slices, written out by hand (checked against the files below).
ACRIN = {
    "1.dcm": dict(
        slope=9.12329,
        weight=69.7344,
        dose=178340011.59668,
        half_life=6586.2,
        series_time=(15, 23, 16.921),
        injection_time=(14, 17, 0.0),
    ),
    "2.dcm": dict(
        slope=46.2619,
        weight=82.174,
        dose=173529998.7793,
        half_life=6586.2,
        series_time=(11, 19, 59.109),
        injection_time=(11, 19, 59.0),
    ),
}


@pytest.mark.parametrize("name", ["1.dcm", "2.dcm"])
def test_acrin_flt_suvbw_by_hand(shared_data, name):
    path = shared_data / "pet-real/acrin-flt-slices" / name
    t = ACRIN[name]
    ds = pydicom.dcmread(path)
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    # the hand-written tag values are the file's
    assert float(ds.RescaleSlope) == t["slope"] and float(ds.RescaleIntercept) == 0
    assert float(ds.PatientWeight) == t["weight"]
    assert float(rp.RadionuclideTotalDose) == t["dose"]
    assert float(rp.RadionuclideHalfLife) == t["half_life"]
    assert (ds.Units, ds.DecayCorrection) == ("BQML", "START")
    assert "DECY" in ds.CorrectedImage
    assert ds.SeriesTime.startswith("{:02d}{:02d}".format(*t["series_time"][:2]))
    h, m, s = t["series_time"]
    hi, mi, si = t["injection_time"]
    dt = (h * 3600 + m * 60 + s) - (hi * 3600 + mi * 60 + si)
    decayed_dose = t["dose"] * 2.0 ** (-dt / t["half_life"])
    suv_expected = ds.pixel_array.astype(np.float64).T * t["slope"] * (t["weight"] * 1000.0) / decayed_dose

    img = read_pet(path)
    assert img.shape == (168, 168, 1)  # a single slice is a 3D volume with K = 1
    assert img.units == "SUVbw"
    got = img.array[:, :, 0].astype(np.float64)
    nz = suv_expected != 0
    assert nz.sum() > 1000
    rel = np.abs(got[nz] - suv_expected[nz]) / np.abs(suv_expected[nz])
    assert rel.max() < 1e-6
    assert np.all(got[~nz] == 0)
    warned = any("injection time equals the scan time" in w for w in img.metadata["warnings"])
    assert warned == (name == "2.dcm")
    if name == "2.dcm":
        assert img.metadata["uptake_time_s"] == pytest.approx(0.109, abs=1e-3)


def test_acrin_folder_with_two_series_lists_them(shared_data, tmp_path):
    from seganypet.errors import DicomError

    with pytest.raises(DicomError, match="2 PET series"):
        read_pet(shared_data / "pet-real/acrin-flt-slices")
    uid = str(pydicom.dcmread(shared_data / "pet-real/acrin-flt-slices/2.dcm").SeriesInstanceUID)
    img = read_pet(shared_data / "pet-real/acrin-flt-slices", series_uid=uid)
    assert img.metadata["series_instance_uid"] == uid


def test_dicom_seg_from_sts001_reads_back(sts, shared_data, tmp_path):
    import highdicom as hd
    import nibabel as nib

    from seganypet import __version__

    mask = nib.load(str(shared_data / "pet-real/ibsi-sts/nifti/STS_001/PET_mask.nii.gz")).get_fdata() > 0
    lm = np.zeros(sts.shape, np.uint16)
    lm[mask] = 2
    lm[1:6, 2:5, 3:9] = 5  # an asymmetric box, so a transposed or flipped write cannot pass
    names = {2: "GTV_Mass_PET", 5: "liver reference"}
    out = write_dicom_seg(lm, sts, tmp_path / "seg.dcm", names)
    seg = hd.seg.segread(str(out))
    assert seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sts.metadata["series_instance_uid"]
    assert list(seg.get_segment_numbers()) == [1, 2]
    labels = [seg.get_segment_description(n).segment_label for n in (1, 2)]
    assert labels == ["GTV_Mass_PET", "liver reference"]
    algo = seg.get_segment_description(1).algorithm_identification[0]
    assert algo.AlgorithmName == "seganypet" and algo.AlgorithmVersion == __version__
    uids = [str(ds.SOPInstanceUID) for ds in sts.source_datasets]
    pix = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2], assert_missing_frames_are_empty=True
    )  # (K, rows, columns, segments)
    assert pix.shape == (59, 43, 41, 2)
    np.testing.assert_array_equal(pix[..., 0].transpose(2, 1, 0), lm == 2)
    np.testing.assert_array_equal(pix[..., 1].transpose(2, 1, 0), lm == 5)
    # the SEG's own geometry (highdicom volume, LPS) puts every box voxel where the PET affine does
    vol = seg.get_volume(combine_segments=False)
    idx = np.argwhere(vol.array[..., 1] > 0)
    ras = vol.map_indices_to_reference(idx) * np.array([-1.0, -1.0, 1.0])
    ijk = sts.mm_to_ijk(ras)
    np.testing.assert_allclose(ijk, np.rint(ijk), atol=1e-4)
    assert sorted(map(tuple, np.rint(ijk).astype(int))) == sorted(map(tuple, np.argwhere(lm == 5)))

    # label map NIfTI of the same objects on the DICOM grid
    nii = write_label_map(lm, sts, tmp_path / "labels.nii.gz", names)
    back = nib.load(str(nii))
    np.testing.assert_array_equal(np.asarray(back.dataobj), lm)
    np.testing.assert_allclose(back.affine, sts.affine, atol=1e-4)


def test_dicom_seg_on_a_single_slice(shared_data, tmp_path):
    import highdicom as hd

    img = read_pet(shared_data / "pet-real/acrin-flt-slices/1.dcm")
    lm = (img.array > 2.0).astype(np.uint8)
    assert 0 < lm.sum() < lm.size
    out = write_dicom_seg(lm, img, tmp_path / "one.dcm", {1: "SUV above 2"})
    seg = hd.seg.segread(str(out))
    pix = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(img.source_datasets[0].SOPInstanceUID)], segment_numbers=[1]
    )
    np.testing.assert_array_equal(pix[0, :, :, 0].T, lm[:, :, 0])
