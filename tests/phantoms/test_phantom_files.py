"""save_phantom files, DICOM round trip, and the ``seganypet phantom`` command."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from seganypet.cli import main
from seganypet.phantoms import make_phantom, save_phantom


@pytest.fixture(scope="module")
def saved(shared_data, tmp_path_factory):
    ph = make_phantom(21, spacing=8.0, anatomy=shared_data / "anatomy", n_lesions=3)
    out = tmp_path_factory.mktemp("phantom")
    written = save_phantom(ph, out, dicom=True)
    return ph, out, written


def test_files_readable_and_on_one_grid(saved):
    ph, out, written = saved
    for name in (
        "pet.nii.gz",
        "labels.nii.gz",
        "labels.json",
        "truth.nii.gz",
        "ct.nii.gz",
        "phantom.json",
        "dicom",
    ):
        assert (out / name).exists() and written[name] == out / name
    imgs = {n: nib.load(out / n) for n in ("pet.nii.gz", "labels.nii.gz", "truth.nii.gz", "ct.nii.gz")}
    for img in imgs.values():
        assert img.shape == ph.pet.shape
        assert np.allclose(img.affine, ph.pet.affine)
    assert np.array_equal(np.asarray(imgs["labels.nii.gz"].dataobj), ph.labels)
    assert np.allclose(imgs["pet.nii.gz"].get_fdata(), ph.pet.array)
    labels = json.loads((out / "labels.json").read_text())["labels"]
    assert {int(k): v for k, v in labels.items()} == ph.label_info
    meta = json.loads((out / "phantom.json").read_text())
    assert len(meta["lesions"]) == sum(v["kind"] == "lesion" for v in ph.label_info.values())
    assert not list(out.glob(".*tmp"))  # no temporary leftovers


def test_dicom_round_trip_gives_suv(saved):
    io = pytest.importorskip("seganypet.io")
    ph, out, _ = saved
    img = io.read_pet(out / "dicom")
    assert img.units == "SUVbw"
    assert img.shape == ph.pet.shape
    # same world grid: map the read voxels onto the phantom's voxels
    m = np.linalg.inv(ph.pet.affine) @ img.affine
    assert np.allclose(np.abs(m[:3, :3]), np.eye(3), atol=1e-3)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in img.shape], indexing="ij"), -1).reshape(-1, 3)
    src = np.rint(idx @ m[:3, :3].T + m[:3, 3]).astype(int)
    ref = ph.pet.array[src[:, 0], src[:, 1], src[:, 2]].reshape(img.shape)
    assert np.abs(img.array - ref).max() <= 1e-3 * ref.max()


def test_cli_writes_a_phantom(shared_data, tmp_path, capsys):
    out = tmp_path / "ph"
    rc = main(
        [
            "phantom",
            "-o",
            str(out),
            "--seed",
            "4",
            "--spacing",
            "8",
            "--lesions",
            "2",
            "--anatomy",
            str(shared_data / "anatomy"),
            "--tracer",
            "psma",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "phantom seed 4" in text and "lesions" in text and "pet.nii.gz" in text
    assert (out / "pet.nii.gz").exists() and (out / "labels.json").exists()


def test_cli_several_phantoms(shared_data, tmp_path, capsys):
    rc = main(
        [
            "phantom",
            "-o",
            str(tmp_path),
            "--seed",
            "7",
            "-n",
            "2",
            "--spacing",
            "10",
            "--anatomy",
            str(shared_data / "anatomy"),
            "--iterations",
            "1",
            "--subsets",
            "4",
        ]
    )
    assert rc == 0
    assert (tmp_path / "phantom_00007" / "pet.nii.gz").exists()
    assert (tmp_path / "phantom_00008" / "labels.nii.gz").exists()


def test_cli_missing_anatomy_exits_2(tmp_path, capsys):
    rc = main(["phantom", "-o", str(tmp_path / "x"), "--anatomy", str(tmp_path / "no_such_folder")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "anatomy not found" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_anatomy_environment_variable(shared_data, monkeypatch, tmp_path, capsys):
    from seganypet.phantoms import find_anatomy

    monkeypatch.setenv("SEGANYPET_ANATOMY", str(shared_data / "anatomy"))
    assert find_anatomy() == shared_data / "anatomy"
    monkeypatch.setenv("SEGANYPET_ANATOMY", str(tmp_path / "missing"))
    assert main(["phantom", "-o", str(tmp_path / "out")]) == 2
    assert "SEGANYPET_ANATOMY" in capsys.readouterr().err
