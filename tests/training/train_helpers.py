"""Synthetic data for the training tests (tiny NIfTI volumes with an organ and a lesion)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_case(seed: int, shape: tuple[int, int, int] = (36, 34, 32), spacing: float = 3.0):
    """(suv float32, labels uint8, affine): a warm ellipsoid 'organ' (1) and a hot small 'lesion' (2)."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = np.array(shape) / 2 + rng.uniform(-3, 3, 3)
    organ = ((ii - c[0]) / 9) ** 2 + ((jj - c[1]) / 7) ** 2 + ((kk - c[2]) / 6) ** 2 <= 1
    lc = c + np.array([11, -8, 5])
    lesion = (ii - lc[0]) ** 2 + (jj - lc[1]) ** 2 + (kk - lc[2]) ** 2 <= 2.2**2
    suv = 0.5 + 0.1 * rng.standard_normal(shape)
    suv[organ] += 2.0
    suv[lesion] += 6.0
    labels = np.zeros(shape, np.uint8)
    labels[organ] = 1
    labels[lesion] = 2
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-50, -40, 10]
    return suv.astype(np.float32).clip(0, None), labels, affine


def write_phantom_dataset(root: Path, n: int = 3) -> Path:
    import nibabel as nib

    for i in range(n):
        suv, labels, affine = make_case(i)
        d = root / f"ph{i:02d}"
        d.mkdir(parents=True)
        nib.save(nib.Nifti1Image(suv, affine), d / "pet.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), d / "labels.nii.gz")
        (d / "labels.json").write_text(
            json.dumps({"1": {"name": "liver", "kind": "organ"}, "2": {"name": "lesion_1", "kind": "lesion"}})
        )
    return root
