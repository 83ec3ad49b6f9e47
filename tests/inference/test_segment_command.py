"""``seganypet segment`` through seganypet.cli.main with a tiny model saved to tmp_path."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from seganypet.cli import main


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    import torch

    from seganypet.build import build_model, save_model

    torch.manual_seed(0)
    model = build_model("tiny")
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(model, path, {"note": "random weights for tests"})
    return path


@pytest.fixture(scope="module")
def pet_path(tmp_path_factory):
    aff = np.diag([-4.0, -4.0, 3.0, 1.0])
    aff[:3, 3] = (100.0, 120.0, -50.0)
    arr = np.full((40, 36, 50), 1.0, np.float32)
    arr[15:25, 14:22, 20:30] = 9.0
    path = tmp_path_factory.mktemp("pet") / "pet.nii.gz"
    img = nib.Nifti1Image(arr, aff)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_points_and_prompts_file(tmp_path, capsys, tiny_model_path, pet_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(
        json.dumps(
            {
                "objects": [
                    {
                        "name": "hot",
                        "prompts": [{"point": [20, 18, 25]}, {"point": [22, 18, 25], "positive": False}],
                    },
                    {"name": "other", "prompts": [{"point_mm": [100 - 4 * 5, 120 - 4 * 5, -50 + 3 * 5]}]},
                ]
            }
        )
    )
    out = tmp_path / "seg.nii.gz"
    stats = tmp_path / "stats.csv"
    code, stdout, err = _run(
        capsys,
        [
            "segment",
            "-i",
            str(pet_path),
            "-o",
            str(out),
            "--prompts",
            str(prompts),
            "--point",
            "30,10,40",
            "--point-mm=-24,80,70,neg",  # '=' form: the value starts with '-'
            "--name",
            "third",
            "--model",
            str(tiny_model_path),
            "--stats",
            str(stats),
            "--max-windows",
            "2",
        ],
    )
    assert code == 0, err
    lm = nib.load(out)
    ref = nib.load(pet_path)
    assert lm.shape == ref.shape
    np.testing.assert_allclose(lm.affine, ref.affine)
    side = json.loads(out.with_name("seg.json").read_text())
    assert "hot" in json.dumps(side)
    assert "hot:" in stdout and "other:" in stdout and "third:" in stdout and "mL" in stdout
    assert stats.exists()
    labels = set(np.unique(np.asarray(lm.dataobj)).tolist())
    assert labels <= {0, 1, 2, 3}


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--point", "40,1,1"], "outside the image"),
        (["--point", "1,2"], "malformed"),
        (["--point", "1,2,3,maybe"], "neg"),
        (["--point", "5,5,5,neg"], "positive"),
        (["--box", "1,1,1,5,5,5"], "not trained with boxes"),
        (["--point", "5,5,5", "--device", "tpu"], "not valid"),
        ([], "at least one"),
        (["--point", "5,5,5", "--output-type", "dicom-seg"], "DICOM"),
    ],
)
def test_bad_prompts_exit_2(tmp_path, capsys, tiny_model_path, pet_path, extra, message):
    out = tmp_path / "seg.nii.gz"
    code, _, err = _run(
        capsys, ["segment", "-i", str(pet_path), "-o", str(out), "--model", str(tiny_model_path), *extra]
    )
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_missing_default_model_and_bad_prompts_file(tmp_path, capsys, pet_path):
    from seganypet.build import DEFAULT_WEIGHTS

    out = tmp_path / "seg.nii.gz"
    if not DEFAULT_WEIGHTS.exists():
        code, _, err = _run(capsys, ["segment", "-i", str(pet_path), "-o", str(out), "--point", "5,5,5"])
        assert code == 2 and "--model" in err
    bad = tmp_path / "p.json"
    bad.write_text('{"objects": [{"name": "a", "prompts": [{"point": [1, 2]}]}]}')
    code, _, err = _run(capsys, ["segment", "-i", str(pet_path), "-o", str(out), "--prompts", str(bad)])
    assert code == 2 and "3 numbers" in err
    bad.write_text("{not json")
    code, _, err = _run(capsys, ["segment", "-i", str(pet_path), "-o", str(out), "--prompts", str(bad)])
    assert code == 2 and "not valid JSON" in err
    assert not out.exists()


def test_cuda_unavailable_is_clear(tmp_path, capsys, tiny_model_path, pet_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = _run(
        capsys,
        [
            "segment",
            "-i",
            str(pet_path),
            "-o",
            str(tmp_path / "s.nii.gz"),
            "--point",
            "5,5,5",
            "--model",
            str(tiny_model_path),
            "--device",
            "cuda",
        ],
    )
    assert code == 2 and "CUDA is not available" in err


def test_baseline_model(tmp_path, capsys, pet_path):
    pytest.importorskip("seganypet.evaluation.baselines")
    out = tmp_path / "seg.nii.gz"
    code, stdout, err = _run(
        capsys,
        ["segment", "-i", str(pet_path), "-o", str(out), "--point", "20,18,25", "--model", "threshold-41"],
    )
    assert code == 0, err
    lm = np.asarray(nib.load(out).dataobj)
    assert lm[20, 18, 25] == 1 and (lm == 1).sum() == 10 * 8 * 10


def test_dicom_seg_output_from_real_dicom(tmp_path, capsys, tiny_model_path, shared_data):
    """A real DICOM PT series in, a DICOM SEG referencing it out (folder output)."""
    import pydicom

    series = shared_data / "pet-real" / "ibsi-sts" / "dicom" / "STS_001" / "PET" / "image"
    from seganypet.io import read_pet

    img = read_pet(series)
    centre = ",".join(str(n // 2) for n in img.shape)
    out = tmp_path / "segfolder"
    code, stdout, err = _run(
        capsys,
        [
            "segment",
            "-i",
            str(series),
            "-o",
            str(out),
            "--point",
            centre,
            "--name",
            "lesion",
            "--model",
            str(tiny_model_path),
            "--max-windows",
            "1",
        ],
    )
    assert code == 0, err
    seg = pydicom.dcmread(out / "segmentation.dcm")
    assert seg.Modality == "SEG"
    assert seg.SegmentSequence[0].SegmentLabel == "lesion"
    assert "lesion:" in stdout


@pytest.mark.parametrize("strategy", ["zoom", "zoom-coarse", "none"])
def test_large_objects_option(tmp_path, capsys, tiny_model_path, pet_path, strategy, monkeypatch):
    import seganypet.inference as inference

    seen = []

    class Recording(inference.Session):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.large_objects)

    monkeypatch.setattr(inference, "Session", Recording)
    out = tmp_path / f"{strategy}.nii.gz"
    code, _, err = _run(
        capsys,
        ["--no-progress", "segment", "-i", str(pet_path), "-o", str(out), "--model", str(tiny_model_path),
         "--point", "20,18,25", "--large-objects", strategy],
    )  # fmt: skip
    assert code == 0, err
    assert nib.load(out).shape == (40, 36, 50)
    assert seen == [strategy]  # the option reaches the Session


def test_large_objects_bad_value_exits_2(tmp_path, capsys, tiny_model_path, pet_path):
    with pytest.raises(SystemExit) as exc:
        main(["segment", "-i", str(pet_path), "-o", str(tmp_path / "x.nii.gz"), "--model",
              str(tiny_model_path), "--point", "20,18,25", "--large-objects", "sideways"])  # fmt: skip
    assert exc.value.code == 2 and "sideways" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()
