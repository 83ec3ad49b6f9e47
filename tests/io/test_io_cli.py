"""``seganypet convert`` through the real command line (subprocess): output, summary line, errors."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from io_bad_inputs import make_bad_inputs
from io_dicom_synth import pattern, write_series

from seganypet.io import read_pet


def convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seganypet", "--no-progress", "convert", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_convert_dicom_with_weight_override(tmp_path):
    vals = pattern((5, 4, 3), scale=8000.0)
    w = write_series(tmp_path / "s", vals, weight=None)
    out = tmp_path / "out" / "suv.nii.gz"
    r = convert(tmp_path / "s", "-o", out)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "PatientWeight (0010,1030) is missing" in r.stderr and "--weight" in r.stderr
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    r = convert(tmp_path / "s", "-o", out, "--weight", "80", "--dose", "370")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.count("\n") == 0
    assert "shape 5x4x3" in line and "spacing 2x3x4 mm" in line and "units SUVbw" in line
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.float32
    f = 80000.0 / (370e6 * 2 ** (-3600 / 6586.2))
    np.testing.assert_allclose(img.get_fdata(), w.values * f, rtol=1e-6)
    suvmax = float((w.values * f).max())
    assert f"SUVmax {suvmax:.4g}" in line
    ref = read_pet(tmp_path / "s", weight=80.0)
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)


def test_convert_sul_and_series_uid(tmp_path):
    write_series(tmp_path / "f" / "a", pattern((3, 3, 2), scale=5000.0), seed=1, sex=None)
    b = write_series(tmp_path / "f" / "b", pattern((3, 3, 2), scale=5000.0), seed=2, sex=None)
    out = tmp_path / "x.nii"
    r = convert(tmp_path / "f", "-o", out)
    assert r.returncode == 2 and "2 PET series" in r.stderr and "--series-uid" in r.stderr
    r = convert(tmp_path / "f", "-o", out, "--series-uid", b.series_uid, "--suv", "lbm")
    assert r.returncode == 2 and "--sex" in r.stderr
    r = convert(tmp_path / "f", "-o", out, "--series-uid", b.series_uid, "--suv", "lbm", "--sex", "F")
    assert r.returncode == 0, r.stderr
    assert "units SUVlbm" in r.stdout


def test_convert_nan_zero(tmp_path):
    bad = make_bad_inputs(tmp_path / "in")
    out = tmp_path / "o.nii.gz"
    r = convert(bad["nan"], "-o", out, "--nan", "zero")
    assert r.returncode == 0, r.stderr
    assert "2 NaN and 1 infinite voxel" in r.stderr  # the warning is shown
    assert np.all(np.isfinite(nib.load(str(out)).get_fdata()))


@pytest.mark.parametrize(
    "case, text",
    [
        ("truncated", "cannot be read as NIfTI"),
        ("random", "cannot be read as NIfTI"),
        ("nan", "2 NaN and 1 infinite voxel"),
        ("2d", "2D image"),
        ("empty", "empty folder"),
        ("nodicom", "holds no DICOM files"),
        ("missing", "does not exist"),
    ],
)
def test_convert_bad_inputs_exit_2_one_line_no_output(tmp_path, case, text):
    bad = make_bad_inputs(tmp_path / "in")
    outdir = tmp_path / "out"
    outdir.mkdir()
    r = convert(bad[case], "-o", outdir / "o.nii.gz")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert text in lines[0] and lines[0].startswith("seganypet convert: error:")
    assert "Traceback" not in r.stderr
    assert list(outdir.iterdir()) == []


def test_convert_ct_and_bad_output_name(tmp_path):
    write_series(tmp_path / "ct", pattern((3, 3, 2)), modality="CT")
    r = convert(tmp_path / "ct", "-o", tmp_path / "o.nii.gz")
    assert r.returncode == 2 and "not a PET series" in r.stderr
    write_series(tmp_path / "pt", pattern((3, 3, 2)))
    r = convert(tmp_path / "pt", "-o", tmp_path / "o.png")
    assert r.returncode == 2 and ".nii.gz" in r.stderr
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "o.png").exists()
