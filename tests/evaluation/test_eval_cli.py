"""``seganypet evaluate`` end to end: synthetic phantom-layout cases, baselines and a tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from seganypet.cli import main
from seganypet.evaluation.baselines import segment_at_click
from seganypet.evaluation.metrics import dice

SPACING = 3.0
PNG = b"\x89PNG\r\n\x1a\n"


def _ball(shape, centre, radius_vox):
    g = np.indices(shape).astype(np.float32)
    return sum((g[a] - centre[a]) ** 2 for a in range(3)) <= radius_vox**2


def _write_case(folder: Path, seed: int, liver: bool = True) -> None:
    """A phantom-layout case: pet.nii.gz (SUV), labels.nii.gz, labels.json (names and kinds)."""
    rng = np.random.default_rng(seed)
    shape = (36, 36, 30)
    suv = rng.normal(1.0, 0.08, shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.int16)
    info = {}
    if liver:
        liv = _ball(shape, (10, 24, 15), 7)
        suv[liv] = rng.normal(2.0, 0.15, int(liv.sum()))
        labels[liv] = 1
        info["1"] = {"name": "liver", "kind": "organ"}
    for lab, (centre, r, val) in enumerate(
        [((25, 10, 10 + seed % 3), 3, 9.0), ((26, 26, 22), 2, 5.0)], start=2
    ):
        les = _ball(shape, centre, r)
        suv[les] = val * (1 - 0.3 * rng.random(int(les.sum())))
        labels[les] = lab
        info[str(lab)] = {"name": f"lesion_{lab - 1}", "kind": "lesion"}
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(suv, affine), str(folder / "pet.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(folder / "labels.nii.gz"))
    (folder / "labels.json").write_text(json.dumps({"labels": info}))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    _write_case(root / "case_a", 1)
    _write_case(root / "case_b", 2)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_evaluate_baselines_outputs_and_resume(dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["--no-progress", "evaluate", "--data", str(dataset), "--model", "threshold-41",
            "--model", "percist", "--clicks", "3", "-o", str(out), "--seed", "5"]  # fmt: skip
    assert main(argv) == 0
    assert "Dice mean" in capsys.readouterr().out
    for name in ["objects.csv", "cases.csv", "summary.md", "run.json", "plots/dice_vs_clicks.png",
                 "plots/dice_by_kind.png", "overlays/case_a.png", "overlays/case_b.png"]:  # fmt: skip
        assert (out / name).is_file(), name
    for png in [*(out / "plots").glob("*.png"), *(out / "overlays").glob("*.png")]:
        assert png.read_bytes()[:8] == PNG
    rows = _rows(out / "objects.csv")
    assert len(rows) == 2 * 2 * 3 * 3  # methods x cases x objects x clicks
    assert {r["kind"] for r in rows} == {"organ", "lesion"}
    # the first click of every object is the same for both methods, and inside the object
    first = {}
    for r in rows:
        if r["n"] == "1":
            first.setdefault((r["case"], r["object"]), set()).add((r["i"], r["j"], r["k"]))
    assert len(first) == 6 and all(len(v) == 1 for v in first.values())
    # the recorded metrics are those of the baseline on the recorded clicks
    suv = _read(dataset / "case_a" / "pet.nii.gz")
    lab = _read(dataset / "case_a" / "labels.nii.gz")
    sel = [r for r in rows if r["case"] == "case_a" and r["method"] == "threshold-41" and r["object"] == "2"]
    clicks = [((int(r["i"]), int(r["j"]), int(r["k"])), r["positive"] == "True") for r in sel if r["i"]]
    assert lab[clicks[0][0]] == 2 and clicks[0][1]
    for n, r in enumerate(sel, start=1):  # no click recorded: the mask was already perfect
        pred = segment_at_click(suv, (SPACING,) * 3, clicks[:n], "41pct")
        assert float(r["dice"]) == pytest.approx(dice(pred, lab == 2), abs=1e-6)
        assert r["i"] or float(r["dice"]) == 1.0
    cases = _rows(out / "cases.csv")
    assert len(cases) == 2 * 2 * 3 and {"fpv_ml", "fnv_ml", "tp", "fp", "fn"} <= set(cases[0])
    summary = (out / "summary.md").read_text()
    assert "threshold-41" in summary and "percist" in summary and "95% CI" in summary
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["seed"] == 5 and run["methods"] == ["threshold-41", "percist"]
    assert set(run["files"]) >= {"objects.csv", "summary.md", "plots/dice_vs_clicks.png"}

    # resume: a second run reuses every cached case and gives the same tables
    caches = sorted((out / "cache").rglob("*.json"))
    assert len(caches) == 4
    stamps = [p.stat().st_mtime_ns for p in caches]
    before = (out / "objects.csv").read_text()
    assert main(argv) == 0
    assert [p.stat().st_mtime_ns for p in caches] == stamps
    assert (out / "objects.csv").read_text() == before
    # another seed invalidates the cache: new first clicks
    assert main([*argv[:-1], "6"]) == 0
    assert [p.stat().st_mtime_ns for p in caches] != stamps
    assert (out / "objects.csv").read_text() != before


def test_evaluate_autopet_protocol(dataset, tmp_path):
    out = tmp_path / "ap"
    argv = ["--no-progress", "evaluate", "--data", str(dataset), "--model", "threshold-2.5",
            "--protocol", "autopet", "-o", str(out), "--cases", "case_a"]  # fmt: skip
    assert main(argv) == 0
    ap = _rows(out / "autopet.csv")
    assert len(ap) == 1 and ap[0]["case"] == "case_a"
    steps = _rows(out / "cases.csv")
    assert [int(r["n"]) for r in steps] == list(range(11))
    assert float(steps[0]["dice"]) == 0.0  # step 0: no click, empty prediction
    dices = [float(r["dice"]) for r in steps]
    auc = sum((a + b) / 2 for a, b in zip(dices[:-1], dices[1:]))
    assert float(ap[0]["dice_auc"]) == pytest.approx(auc, abs=1e-5)
    assert float(ap[0]["dice_final"]) == pytest.approx(dices[-1])
    assert dices[-1] > 0.5  # both hot lesions are found with their centre clicks
    for name in ["summary.md", "plots/dice_vs_clicks.png", "plots/dice_by_kind.png", "overlays/case_a.png"]:
        assert (out / name).is_file(), name
    assert "autoPET IV" in (out / "summary.md").read_text()


def test_evaluate_user_errors(dataset, tmp_path, capsys):
    nolive = tmp_path / "nolive"
    _write_case(nolive / "case_c", 3, liver=False)
    rc = main(
        ["--no-progress", "evaluate", "--data", str(nolive), "--model", "percist", "-o", str(tmp_path / "x")]
    )
    assert rc == 2 and "liver" in capsys.readouterr().err
    rc = main(
        [
            "evaluate",
            "--data",
            str(tmp_path / "missing"),
            "--model",
            "threshold-41",
            "-o",
            str(tmp_path / "y"),
        ]
    )
    assert rc == 2 and "missing" in capsys.readouterr().err
    rc = main(["evaluate", "--data", str(dataset), "--model", "nothing.pt", "-o", str(tmp_path / "z")])
    assert rc == 2 and "nothing.pt" in capsys.readouterr().err
    rc = main(
        [
            "evaluate",
            "--data",
            str(dataset),
            "--model",
            "threshold-41",
            "--cases",
            "zzz",
            "-o",
            str(tmp_path / "w"),
        ]
    )
    assert rc == 2 and "zzz" in capsys.readouterr().err
    assert not (tmp_path / "x" / "summary.md").exists()


def test_evaluate_tiny_model_against_a_baseline(dataset, tmp_path):
    build = pytest.importorskip(
        "seganypet.build", reason="seganypet.build (modeling) is not in this tree yet"
    )
    model = build.build_model("tiny")
    ckpt = tmp_path / "tiny.pt"
    build.save_model(model, ckpt, {"note": "random weights, plumbing test"})
    out = tmp_path / "model"
    argv = ["--no-progress", "evaluate", "--data", str(dataset), "--model", str(ckpt), "--model",
            "threshold-41", "--clicks", "2", "--labels", "lesions", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = _rows(out / "objects.csv")
    assert {r["method"] for r in rows} == {"tiny", "threshold-41"}
    assert len(rows) == 2 * 2 * 2 * 2
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    firsts = {}
    for r in rows:
        if r["n"] == "1":
            firsts.setdefault((r["case"], r["object"]), set()).add((r["i"], r["j"], r["k"], r["positive"]))
    assert all(len(v) == 1 for v in firsts.values())
    for name in ["objects.csv", "cases.csv", "summary.md", "run.json", "plots/dice_vs_clicks.png",
                 "plots/dice_by_kind.png", "overlays/case_a.png", "overlays/case_b.png"]:  # fmt: skip
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert len(run["fingerprints"]["tiny"]) == 64  # sha256 of the checkpoint: a retrained model is re-run
    assert "| tiny | 2 |" in (out / "summary.md").read_text()


@pytest.mark.realdata
def test_evaluate_ibsi_sts_case(shared_data, tmp_path):
    sts = shared_data / "pet-real" / "ibsi-sts"
    out = tmp_path / "sts"
    argv = ["--no-progress", "evaluate", "--data", str(sts), "--cases", "STS_016", "--model",
            "threshold-2.5", "--clicks", "1", "-o", str(out), "--overlays", "1"]  # fmt: skip
    assert main(argv) == 0
    (row,) = _rows(out / "objects.csv")
    img = nib.load(str(sts / "nifti" / "STS_016" / "PET_image.nii.gz"))
    ref = _read(sts / "nifti" / "STS_016" / "PET_mask.nii.gz") > 0
    click = (int(row["i"]), int(row["j"]), int(row["k"]))
    assert ref[click]
    pred = segment_at_click(img.get_fdata(), img.header.get_zooms()[:3], [(click, True)], "suv2.5")
    assert float(row["dice"]) == pytest.approx(dice(pred, ref), abs=1e-6)


def test_evaluate_manifest_and_label_selection(dataset, tmp_path):
    from seganypet.errors import InputError
    from seganypet.evaluation.runner import EvalConfig, evaluate

    manifest = tmp_path / "cases.json"
    entry = {
        "case": "m1",
        "image": str(dataset / "case_b" / "pet.nii.gz"),
        "labels": str(dataset / "case_b" / "labels.nii.gz"),
        "label_info": {"2": {"name": "big lesion", "kind": "lesion"}},
    }
    manifest.write_text(json.dumps([entry]))
    out = tmp_path / "man"
    result = evaluate([manifest], ["threshold-2.5"], out, EvalConfig(clicks=1, labels="2,3"), overlays=0)
    rows = result["objects"]
    assert [(r["case"], r["label"], r["name"], r["kind"]) for r in rows] == [
        ("m1", 2, "big lesion", "lesion"),
        ("m1", 3, "label_3", "organ"),  # not in label_info: the manifest's default kind
    ]
    assert (out / "objects.csv").is_file() and not (out / "overlays").exists()
    with pytest.raises(InputError, match="--labels"):
        EvalConfig(labels="liver")
    with pytest.raises(InputError, match="protocol"):
        EvalConfig(protocol="nnunet")


def test_evaluate_large_object_strategies_side_by_side(dataset, tmp_path, capsys):
    build = pytest.importorskip("seganypet.build")
    ckpt = tmp_path / "tiny.pt"
    build.save_model(build.build_model("tiny"), ckpt, {"note": "random weights, plumbing test"})
    out = tmp_path / "lo"
    argv = ["--no-progress", "evaluate", "--data", str(dataset), "--cases", "case_a", "--model", str(ckpt),
            "--model", "threshold-41", "--clicks", "1", "--labels", "lesions", "--overlays", "0",
            "--large-objects", "extend", "zoom", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = _rows(out / "objects.csv")
    assert {r["method"] for r in rows} == {"tiny", "tiny+zoom", "threshold-41"}  # baselines run once
    run = json.loads((out / "run.json").read_text())
    assert run["fingerprints"]["tiny+zoom"] == run["fingerprints"]["tiny"] + "+zoom"  # cached apart
    from seganypet.evaluation.engines import make_engine

    assert make_engine(str(ckpt), large_objects="zoom").session.large_objects == "zoom"
    with pytest.raises(SystemExit) as exc:
        main([*argv[:-5], "--large-objects", "sideways", "-o", str(tmp_path / "bad")])
    assert exc.value.code == 2 and "sideways" in capsys.readouterr().err
