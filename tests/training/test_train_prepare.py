"""seganypet prepare: layouts, store format, idempotence, atomicity, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from train_helpers import make_case

from seganypet.cli import main
from seganypet.errors import InputError
from seganypet.training import prepare as prep
from seganypet.training.store import Store


def test_store_contents(small_store: Path) -> None:
    store = Store(small_store)
    assert store.split("train") == ["ph00", "ph01"] and store.split("val") == ["ph02"]
    case = store.cases["ph00"]
    kinds = {o["name"]: o["kind"] for o in case.objects}
    assert kinds == {"liver": "organ", "lesion_1": "lesion"}
    img, lab = case.image(), case.labels()
    assert img.shape == lab.shape == case.shape
    # 3 mm -> 1.5 mm: about twice as many voxels per axis, canonical 1.5 mm affine
    assert abs(case.shape[0] - 71) <= 1
    assert np.allclose(np.abs(np.diag(case.affine)[:3]), 1.5)
    labels = lab[:]
    for o in case.objects:
        assert o["voxels"] == int((labels == o["label"]).sum())
        (i0, j0, k0), (i1, j1, k1) = o["bbox"]
        inside = (labels[i0 : i1 + 1, j0 : j1 + 1, k0 : k1 + 1] == o["label"]).sum()
        assert inside == o["voxels"]
    # the resampled lesion is hot: SUV on the model grid matches the source
    assert img[:][labels == 2].mean() > 5.0
    m = json.loads((small_store / "manifest.json").read_text())
    assert m["cases"]["ph00"]["source"]["image_sha256"] and m["seganypet_version"]


def test_prepare_idempotent_and_atomic(tmp_path: Path, phantom_dataset: Path, monkeypatch) -> None:
    out = tmp_path / "store"
    calls = []
    real = prep.prepare_case

    def crash_on_second(case, store, split):
        calls.append(case.case_id)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(case, store, split)

    monkeypatch.setattr(prep, "prepare_case", crash_on_second)
    with pytest.raises(RuntimeError):
        prep.prepare([phantom_dataset], out)
    # the finished case survived, the crashed one left nothing (no temp folders either)
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["ph00"]
    assert list(json.loads((out / "manifest.json").read_text())["cases"]) == ["ph00"]
    monkeypatch.setattr(prep, "prepare_case", real)
    res = prep.prepare([phantom_dataset], out)
    assert res["skipped"] == ["ph00"] and res["prepared"] == ["ph01", "ph02"]
    mtime = (out / "cases" / "ph01" / "image.b2nd").stat().st_mtime_ns
    res = prep.prepare([phantom_dataset], out)
    assert res["prepared"] == [] and len(res["skipped"]) == 3
    assert (out / "cases" / "ph01" / "image.b2nd").stat().st_mtime_ns == mtime


def test_layouts(tmp_path: Path) -> None:
    suv, labels, affine = make_case(5)
    # nnU-Net raw
    nn = tmp_path / "Dataset001_X"
    (nn / "imagesTr").mkdir(parents=True)
    (nn / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(suv, affine), nn / "imagesTr" / "c1_0000.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), nn / "labelsTr" / "c1.nii.gz")
    (nn / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumor": 2}}))
    # autoPET: binary lesion mask split into components
    ap = tmp_path / "autopet" / "PETCT_1" / "study"
    ap.mkdir(parents=True)
    nib.save(nib.Nifti1Image(suv, affine), ap / "SUV.nii.gz")
    nib.save(nib.Nifti1Image((labels == 2).astype(np.uint8), affine), ap / "SEG.nii.gz")
    # pairs
    pr = tmp_path / "pairs"
    (pr / "images").mkdir(parents=True)
    (pr / "labels").mkdir()
    nib.save(nib.Nifti1Image(suv, affine), pr / "images" / "a.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), pr / "labels" / "a.nii.gz")
    assert prep.detect_layout(nn) == "nnunet"
    assert prep.detect_layout(tmp_path / "autopet") == "autopet"
    assert prep.detect_layout(pr) == "pairs"
    out = tmp_path / "store"
    prep.prepare([nn], out, prefix="nn_")
    prep.prepare([tmp_path / "autopet"], out, prefix="ap_")
    prep.prepare([pr], out, prefix="pr_", kind="lesion")
    store = Store(out)
    assert set(store.cases) == {"nn_c1", "ap_PETCT_1_study", "pr_a"}
    assert {o["name"]: o["kind"] for o in store.cases["nn_c1"].objects} == {
        "liver": "organ",
        "tumor": "lesion",
    }
    assert [o["kind"] for o in store.cases["ap_PETCT_1_study"].objects] == ["lesion"]
    assert {o["kind"] for o in store.cases["pr_a"].objects} == {"lesion"}


def test_bad_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="cannot recognise"):
        prep.prepare([tmp_path / "empty"], tmp_path / "s")
    with pytest.raises(InputError, match="not a training store"):
        Store(tmp_path / "empty")


def test_cli_prepare(tmp_path: Path, phantom_dataset: Path, capsys) -> None:
    rc = main(["prepare", str(phantom_dataset), "-o", str(tmp_path / "s"), "--val", "ph01"])
    assert rc == 0
    assert "3 case(s) prepared" in capsys.readouterr().out
    assert Store(tmp_path / "s").split("val") == ["ph01"]
    assert main(["prepare", str(tmp_path / "nope"), "-o", str(tmp_path / "s2")]) == 2


def test_ibsi_sts(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "pet-real" / "ibsi-sts"
    cases = prep.discover(src)
    assert len(cases) == 20 and cases[0].case_id == "STS_001"
    meta = prep.prepare_case(cases[0], tmp_path, "train")
    assert [o["kind"] for o in meta["objects"]] == ["lesion"]
    assert meta["objects"][0]["voxels"] > 1000
