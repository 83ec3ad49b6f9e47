"""Label-map NIfTI + side-car, atomic writes, and DICOM SEG geometry on an oblique synthetic series."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
from io_dicom_synth import pattern, write_series

from seganypet.errors import InputError
from seganypet.image import PETImage
from seganypet.io import read_pet, write_dicom_seg, write_label_map


def _ref(shape=(6, 5, 4)) -> PETImage:
    aff = np.array([[-2.0, 0, 0, 50.0], [0, 0, 3.0, -10.0], [0, -4.0, 0, 7.0], [0, 0, 0, 1]])
    return PETImage(np.zeros(shape, np.float32), aff, units="SUVbw", path="ref.nii.gz")


def test_label_map_on_reference_grid_with_sidecar(tmp_path):
    ref = _ref()
    lm = np.zeros(ref.shape, np.int64)
    lm[1:3, 1:4, 0:2] = 1
    lm[4, 4, 3] = 7
    out = write_label_map(lm, ref, tmp_path / "labels.nii.gz", {1: "liver", 9: "unused"})
    img = nib.load(str(out))
    assert img.shape == ref.shape
    np.testing.assert_array_equal(img.affine, ref.affine)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), lm)
    side = json.loads((tmp_path / "labels.json").read_text())
    assert side["labels"] == {"1": "liver", "7": "object 7", "9": "unused"}
    assert side["voxels"] == {"1": 12, "7": 1}
    big = lm.copy()
    big[0, 0, 0] = 300
    out2 = write_label_map(big, ref, tmp_path / "big.nii", None)
    assert nib.load(str(out2)).get_data_dtype() == np.uint16
    # bool masks are fine
    write_label_map(lm > 0, ref, tmp_path / "mask.nii.gz")


@pytest.mark.parametrize(
    "bad, text",
    [
        (np.zeros((6, 5, 3)), "shape"),
        (np.full((6, 5, 4), 0.5), "non-integer"),
        (np.full((6, 5, 4), -1), "negative"),
    ],
)
def test_label_map_refusals_leave_nothing(tmp_path, bad, text):
    with pytest.raises(InputError, match=text):
        write_label_map(bad, _ref(), tmp_path / "x.nii.gz", {})
    assert list(tmp_path.iterdir()) == []


def test_label_map_needs_nifti_name(tmp_path):
    with pytest.raises(InputError, match=r"\.nii\.gz"):
        write_label_map(np.zeros((6, 5, 4), np.uint8), _ref(), tmp_path / "x.png")


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import seganypet.io.seg as segmod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(segmod.json, "dumps", boom)
    with pytest.raises(OSError):
        write_label_map(np.ones((6, 5, 4), np.uint8), _ref(), tmp_path / "y.nii.gz", {1: "a"})
    assert list(tmp_path.iterdir()) == []


def test_dicom_seg_geometry_on_oblique_series(tmp_path):
    import highdicom as hd

    a = math.radians(30.0)
    row = (math.cos(a), 0.0, math.sin(a))  # oblique: row direction leaves the axial plane
    col = (0.0, 1.0, 0.0)
    write_series(tmp_path / "s", pattern((7, 6, 5), scale=5000.0), row_dir=row, col_dir=col)
    img = read_pet(tmp_path / "s")
    lm = np.zeros(img.shape, np.uint8)
    lm[1:4, 2:3, 1:2] = 1
    lm[6, 5, 4] = 4
    out = write_dicom_seg(lm, img, tmp_path / "seg.dcm", {1: "lesion A", 4: "spot"})
    seg = hd.seg.segread(str(out))
    assert [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()] == [
        "lesion A",
        "spot",
    ]
    vol = seg.get_volume(combine_segments=False)
    for channel, label in ((0, 1), (1, 4)):
        idx = np.argwhere(vol.array[..., channel] > 0)
        ras = vol.map_indices_to_reference(idx) * np.array([-1.0, -1.0, 1.0])
        ijk = np.rint(img.mm_to_ijk(ras)).astype(int)
        assert sorted(map(tuple, ijk)) == sorted(map(tuple, np.argwhere(lm == label)))


def test_dicom_seg_refusals(tmp_path):
    with pytest.raises(InputError, match="DICOM series"):
        write_dicom_seg(np.ones((6, 5, 4), np.uint8), _ref(), tmp_path / "s.dcm")
    write_series(tmp_path / "s", pattern((3, 3, 2), scale=5000.0))
    img = read_pet(tmp_path / "s")
    with pytest.raises(InputError, match="empty"):
        write_dicom_seg(np.zeros(img.shape, np.uint8), img, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()
