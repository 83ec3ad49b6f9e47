"""Synthetic whole-body PET phantoms with ground truth (see docs/phantoms.md).

- :func:`make_phantom` (seed, kind="torso"|"wholebody", tracer="fdg"|"psma", spacing=3.0, ...)
  -> :class:`Phantom`
- :func:`save_phantom` (phantom, out_dir, dicom=False) -> dict of written paths
"""

from __future__ import annotations

from seganypet.phantoms.anatomy import LESION_BASE, ORGANS, AnatomyError, find_anatomy
from seganypet.phantoms.generator import KINDS, Phantom, make_phantom, save_phantom
from seganypet.phantoms.tracers import TRACERS

__all__ = [
    "KINDS",
    "LESION_BASE",
    "ORGANS",
    "TRACERS",
    "AnatomyError",
    "Phantom",
    "find_anatomy",
    "make_phantom",
    "save_phantom",
]
