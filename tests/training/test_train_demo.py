"""`seganypet demo` end to end, and the shipped default weights."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from seganypet.cli import main

WEIGHTS = Path(__file__).resolve().parents[2] / "src" / "seganypet" / "weights" / "default.pt"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from seganypet.build import build_model, save_model

    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(build_model("tiny"), path, {"note": "untrained, for tests"})
    return path


def test_demo_with_tiny_model(tiny_model: Path, phantom_dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--model",
            str(tiny_model),
            "--phantom",
            str(phantom_dataset / "ph00"),
            "-o",
            str(out),
            "--clicks",
            "2",
            "--organ",
            "liver",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "liver" in text and "lesion_1" in text and "per click" in text
    summary = json.loads((out / "demo.json").read_text())
    assert [o["kind"] for o in summary["objects"]] == ["organ", "lesion"]
    assert all(len(o["dice_per_click"]) == 2 for o in summary["objects"])
    assert all(0.0 <= d <= 1.0 for o in summary["objects"] for d in o["dice_per_click"])
    seg = nib.load(str(out / "segmentation.nii.gz"))
    pet = nib.load(str(out / "pet.nii.gz"))
    assert seg.shape == pet.shape and np.allclose(seg.affine, pet.affine)
    for name in ("stats.csv", "stats.json", "reference.nii.gz"):
        assert (out / name).is_file()
    # bad organ name: one clear error, exit status 2
    assert (
        main(
            [
                "demo",
                "--model",
                str(tiny_model),
                "--phantom",
                str(phantom_dataset / "ph00"),
                "-o",
                str(tmp_path / "d2"),
                "--organ",
                "brain",
            ]
        )
        == 2
    )


def test_default_weights_load() -> None:
    from seganypet.build import load_model

    assert WEIGHTS.is_file(), "the shipped default weights are missing"
    model = load_model("default")
    meta = model.metadata
    assert model.config.name == "small"
    training = meta["training"]
    assert training["steps"] > 0 and training["wall_time_s"] > 0 and "command" in meta
    assert WEIGHTS.stat().st_size < 20 * 2**20


@pytest.mark.slow
def test_demo_with_default_model(tmp_path: Path, capsys) -> None:
    if not WEIGHTS.is_file():
        pytest.fail("the shipped default weights are missing")
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out)]) == 0
    summary = json.loads((out / "demo.json").read_text())
    assert summary["model"].endswith("default.pt")
    assert summary["times_s"]["total_s"] < 120  # the budget on 2 CPU cores
    organ, lesion = summary["objects"]
    assert organ["name"] == "bladder" and lesion["kind"] == "lesion"
    # the shipped model segments the bladder on held-out phantoms at 3 clicks (0.83-0.91, model card)
    assert organ["dice_per_click"][-1] > 0.6


def test_demo_on_the_builtin_anatomy(tiny_model: Path, tmp_path: Path, capsys) -> None:
    """What a machine without the shared CT organ map runs (the fallback is tested in tests/phantoms)."""
    out = tmp_path / "demo"
    argv = [
        "--no-progress",
        "demo",
        "--model",
        str(tiny_model),
        "--anatomy",
        "builtin",
        "-o",
        str(out),
        "--clicks",
        "1",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "demo.json").read_text())
    assert "anatomy='builtin'" in summary["phantom"]
    assert summary["objects"][0]["name"] == "bladder"
    assert main([*argv[:-4], "--anatomy", str(tmp_path / "none"), "-o", str(tmp_path / "d3")]) == 2
    assert "anatomy not found" in capsys.readouterr().err
