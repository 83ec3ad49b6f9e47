"""Bad inputs of the error contract, shared by the API and CLI tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def _volume(shape=(6, 5, 4)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.gamma(2.0, 1.5, size=shape).astype(np.float32)


def make_bad_inputs(tmp: Path) -> dict[str, Path]:
    """Every bad input of the error contract, written into ``tmp`` (also used by the CLI tests)."""
    tmp.mkdir(parents=True, exist_ok=True)
    good = tmp / "good.nii.gz"
    nib.save(nib.Nifti1Image(_volume((20, 20, 20)), np.eye(4)), str(good))
    raw = good.read_bytes()
    (tmp / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    (tmp / "random.nii.gz").write_bytes(np.random.default_rng(1).bytes(4096))
    nan = _volume((6, 6, 6))
    nan[0, 0, 0] = np.nan
    nan[1, 1, 1] = np.nan
    nan[2, 2, 2] = np.inf
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp / "nan.nii.gz"))
    nib.save(nib.Nifti1Image(_volume((6, 6, 1))[..., 0], np.eye(4)), str(tmp / "flat.nii.gz"))
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "nodicom").mkdir(exist_ok=True)
    (tmp / "nodicom" / "readme.txt").write_text("not an image")
    return {
        "truncated": tmp / "truncated.nii.gz",
        "random": tmp / "random.nii.gz",
        "nan": tmp / "nan.nii.gz",
        "2d": tmp / "flat.nii.gz",
        "empty": tmp / "empty",
        "nodicom": tmp / "nodicom",
        "missing": tmp / "does-not-exist.nii.gz",
        "unknown": tmp / "nodicom" / "readme.txt",
    }
