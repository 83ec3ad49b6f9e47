"""The in-memory PET image: :class:`PETImage`.

Conventions (see docs/conventions.md):

- ``array`` is float32 in ``(i, j, k)`` order of the source file (nibabel order for NIfTI; for a
  DICOM series: column, row, slice with slices in ascending position along the slice normal).
- ``affine`` maps voxel indices ``(i, j, k, 1)`` to world millimetres in RAS (NIfTI convention).
- ``units`` names the intensity units: ``"SUVbw"``, ``"SUVlbm"``, ``"SUVbsa"``, ``"Bq/mL"``,
  ``"CNTS"`` or ``"unknown"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SUV_UNITS = ("SUVbw", "SUVlbm", "SUVbsa")


@dataclass
class PETImage:
    """A PET volume with its geometry and the metadata later steps need.

    Attributes:
        array: float32 array, shape ``(I, J, K)``, voxel ``(i, j, k)`` order of the source.
        affine: ``(4, 4)`` float64 voxel-to-world matrix, world in RAS millimetres.
        units: intensity units, e.g. ``"SUVbw"`` or ``"Bq/mL"``.
        metadata: free-form facts (patient weight in kg, height in m, sex, tracer, series UIDs,
            injected dose in Bq, SUV factor used, warnings ...). JSON-serialisable values only.
        source_datasets: the pydicom datasets of a DICOM series in slice (k) order, kept for DICOM
            SEG export; ``None`` for other formats.
        path: where it was read from, for messages.
    """

    array: np.ndarray
    affine: np.ndarray
    units: str = "unknown"
    metadata: dict[str, Any] = field(default_factory=dict)
    source_datasets: list[Any] | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array, dtype=np.float32)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"PETImage needs a 3D array, got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"PETImage needs a 4x4 affine, got shape {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(I, J, K)`` in voxels."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along ``i``, ``j``, ``k`` in millimetres (column norms of the affine)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (|det| of the affine's 3x3 part, mm^3 / 1000)."""
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    @property
    def is_suv(self) -> bool:
        return self.units in SUV_UNITS

    def ijk_to_mm(self, ijk: np.ndarray) -> np.ndarray:
        """Voxel indices ``(..., 3)`` -> RAS millimetres ``(..., 3)``."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def mm_to_ijk(self, xyz: np.ndarray) -> np.ndarray:
        """RAS millimetres ``(..., 3)`` -> (fractional) voxel indices ``(..., 3)``."""
        xyz = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def summary(self) -> str:
        """One line: shape, spacing, units, max."""
        sp = "x".join(f"{s:.3g}" for s in self.spacing)
        finite = self.array[np.isfinite(self.array)]
        vmax = float(finite.max()) if finite.size else float("nan")
        return f"shape {'x'.join(map(str, self.shape))}, spacing {sp} mm, units {self.units}, max {vmax:.4g}"
