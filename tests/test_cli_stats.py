"""``seganypet stats`` and ``seganypet report`` through seganypet.cli.main."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from seganypet.cli import main

AFFINE = np.array([[-4.0, 0, 0, 100.0], [0, -4.0, 0, 50.0], [0, 0, 3.0, -200.0], [0, 0, 0, 1]])


def _run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture()
def case(tmp_path):
    rng = np.random.default_rng(3)
    pet = rng.random((20, 18, 16)).astype(np.float32)
    lm = np.zeros(pet.shape, np.uint8)
    lm[2:12, 2:12, 2:12] = 1
    lm[15:17, 14:16, 12:14] = 2
    lm[18:20, 0:2, 0:2] = 2  # a second component of label 2, at the image corner
    pet[16, 15, 13] = 9.5
    nib.save(nib.Nifti1Image(pet, AFFINE), tmp_path / "pet.nii.gz")
    nib.save(nib.Nifti1Image(lm, AFFINE), tmp_path / "labels.nii.gz")
    (tmp_path / "labels.json").write_text(json.dumps({"labels": {"1": "liver", "2": "lesions"}}))
    return tmp_path, pet, lm


def test_stats_json_csv_table_and_report(case, capsys):
    d, pet, lm = case
    rc = main(["stats", "-i", str(d / "pet.nii.gz"), "-m", str(d / "labels.nii.gz"), "-o", str(d / "s.json"),
               "--report", str(d / "r.png")])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "liver" in out and "lesions" in out and "units: SUVbw" in out
    stats = json.loads((d / "s.json").read_text())
    assert stats["units"] == "SUVbw"
    objs = {o["label"]: o for o in stats["objects"]}
    assert objs[1]["name"] == "liver" and objs[1]["kind"] == "organ"
    assert objs[2]["suv_max"] == pytest.approx(9.5) and objs[2]["suv_max_ijk"] == [16, 15, 13]
    assert objs[2]["voxels"] == 16 and objs[2]["volume_ml"] == pytest.approx(16 * 0.048)
    assert objs[2]["n_components"] == 2
    assert stats["patient"]["lesion_count"] == 1 and stats["reference"]["liver"]["label"] == 1
    assert (d / "r.png").read_bytes()[:4] == b"\x89PNG"

    rc = main(["stats", "-i", str(d / "pet.nii.gz"), "-m", str(d / "labels.nii.gz"), "--components",
               "-o", str(d / "s.csv")])  # fmt: skip
    assert rc == 0
    with open(d / "s.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for key in ("units", "label", "name", "voxels", "volume_ml", "suv_max", "suv_max_ijk", "suv_mean",
                "suv_peak", "mtv_ml", "tlg"):  # fmt: skip
        assert key in rows[0]
    assert [(r["label"], r["component"], r["voxels"]) for r in rows] == [
        ("1", "1", "1000"), ("2", "1", "8"), ("2", "2", "8")
    ]  # fmt: skip
    assert all(r["units"] == "SUVbw" for r in rows)


def test_stats_without_sidecar_and_empty_map(case, capsys):
    d, pet, lm = case
    nib.save(nib.Nifti1Image(np.zeros_like(lm), AFFINE), d / "empty.nii.gz")
    assert (
        main(["stats", "-i", str(d / "pet.nii.gz"), "-m", str(d / "empty.nii.gz"), "-o", str(d / "e.json")])
        == 0
    )
    stats = json.loads((d / "e.json").read_text())
    assert stats["objects"] == [] and stats["patient"]["lesion_count"] == 0
    assert "no objects" in capsys.readouterr().out


@pytest.mark.parametrize("what", ["shape", "affine", "float"])
def test_label_map_off_grid_exits_2(case, capsys, what):
    d, pet, lm = case
    if what == "shape":
        img = nib.Nifti1Image(lm[:, :, :-1], AFFINE)
    elif what == "affine":
        shifted = AFFINE.copy()
        shifted[0, 3] += 2.0  # half a voxel
        img = nib.Nifti1Image(lm, shifted)
    else:
        img = nib.Nifti1Image(lm.astype(np.float32) + 0.5, AFFINE)
    nib.save(img, d / "bad.nii.gz")
    rc = main(["stats", "-i", str(d / "pet.nii.gz"), "-m", str(d / "bad.nii.gz"), "-o", str(d / "s.json"),
               "--report", str(d / "r.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert "label map" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (d / "s.json").exists() and not (d / "r.png").exists()
    if what != "float":
        assert "grid" in err


def test_stats_bad_output_suffix_and_missing_labels(case, capsys):
    d, _, _ = case
    assert (
        main(["stats", "-i", str(d / "pet.nii.gz"), "-m", str(d / "labels.nii.gz"), "-o", str(d / "s.txt")])
        == 2
    )
    assert main(["stats", "-i", str(d / "pet.nii.gz"), "-m", str(d / "nope.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert ".csv or .json" in err and "does not exist" in err


def test_report_command(case, capsys):
    d, _, _ = case
    rc = main(["report", "-i", str(d / "pet.nii.gz"), "-m", str(d / "labels.nii.gz"), "-o", str(d / "r.png"),
               "--html", str(d / "r.html"), "--suv-max", "2"])  # fmt: skip
    assert rc == 0
    assert (d / "r.png").read_bytes()[:4] == b"\x89PNG"
    page = (d / "r.html").read_text()
    assert "lesions" in page and "data:image/png;base64," in page
    assert (
        main(["report", "-i", str(d / "pet.nii.gz"), "-m", str(d / "labels.nii.gz"), "-o", str(d / "r.jpg")])
        == 2
    )


def test_stats_real_sts001(shared_data, tmp_path):
    case = shared_data / "pet-real" / "ibsi-sts" / "nifti" / "STS_001"
    out = tmp_path / "sts.json"
    assert (
        main(
            [
                "stats",
                "-i",
                str(case / "PET_image.nii.gz"),
                "-m",
                str(case / "PET_mask.nii.gz"),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    (o,) = json.loads(out.read_text())["objects"]
    img = nib.load(case / "PET_image.nii.gz")
    arr = img.get_fdata(dtype=np.float32)
    mask = np.asarray(nib.load(case / "PET_mask.nii.gz").dataobj) > 0
    assert o["suv_max"] == pytest.approx(float(arr[mask].max()), rel=1e-6)
    assert o["voxels"] == int(mask.sum())
    assert o["mtv_ml"] == pytest.approx(mask.sum() * abs(np.linalg.det(img.affine[:3, :3])) / 1000.0)


def test_units_option_reaches_the_outputs(case):
    d, _, _ = case
    out = d / "b.csv"
    read = ("--units", "Bq/mL", "--suv", "none")  # keep the stored units
    rc = _run("stats", "-i", d / "pet.nii.gz", "-m", d / "labels.nii.gz", *read, "-o", out)
    assert rc == 0
    with open(d / "b.csv", newline="") as fh:
        assert {r["units"] for r in csv.DictReader(fh)} == {"Bq/mL"}
