"""Reading PET (NIfTI, MHA/NRRD, ECAT7, DICOM PT series from a folder, file or .zip) and writing
images, label maps and DICOM SEG.

Public API:

- :func:`read_pet` -> :class:`~seganypet.image.PETImage`
- :func:`write_image`, :func:`write_label_map`, :func:`write_dicom_seg`

See docs/io.md for formats, the SUV recipe, options and errors.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from seganypet.errors import ImageContentError, ImageReadError, InputError, SUVError
from seganypet.image import PETImage
from seganypet.io import suv as suvmod
from seganypet.io.nifti import (
    ECAT_SUFFIXES,
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    read_ecat,
    read_itk,
    read_nifti,
    suffix_of,
    write_image,
)
from seganypet.io.seg import write_dicom_seg, write_label_map

__all__ = ["read_pet", "write_image", "write_label_map", "write_dicom_seg", "READ_OPTIONS"]

logger = logging.getLogger("seganypet.io")

# option -> meaning (units); also the list of accepted keyword arguments of read_pet
READ_OPTIONS = {
    "suv": 'target units: "bw" (default), "lbm" (SUL, Janmahasatian), "bsa", or "none" (stored units)',
    "weight": "patient weight in kg (overrides PatientWeight)",
    "height": "patient height in m (overrides PatientSize)",
    "sex": '"M" or "F" (overrides PatientSex)',
    "dose": "injected dose in Bq at the injection time (overrides RadionuclideTotalDose)",
    "injection_time": 'injection time, "HH:MM[:SS]" on the scan date or "YYYY-MM-DD HH:MM:SS"',
    "half_life": "radionuclide half-life in s (overrides RadionuclideHalfLife)",
    "series_uid": "SeriesInstanceUID to read when a folder holds several series",
    "nan_policy": '"error" (default): refuse NaN/Inf voxels; "zero": replace them with 0',
    "units": 'what a NIfTI/MHA/ECAT file holds: "SUVbw" (assumed by default), "SUVlbm", "SUVbsa", "Bq/mL"',
    "max_zip_bytes": "largest total uncompressed size of a .zip input (bytes)",
}

_UNIT_ALIASES = {
    "suvbw": "SUVbw",
    "suv": "SUVbw",
    "bw": "SUVbw",
    "gml": "SUVbw",
    "g/ml": "SUVbw",
    "suvlbm": "SUVlbm",
    "sul": "SUVlbm",
    "lbm": "SUVlbm",
    "suvbsa": "SUVbsa",
    "bsa": "SUVbsa",
    "bq/ml": "Bq/mL",
    "bqml": "Bq/mL",
    "bq/cc": "Bq/mL",
}


def _normalise_units(units: str) -> str | None:
    return _UNIT_ALIASES.get(str(units).strip().lower().replace(" ", ""))


def _apply_volume_units(
    array: np.ndarray, meta: dict[str, Any], opts: dict[str, Any], label: str, warnings: list[str]
) -> tuple[np.ndarray, str]:
    """Units of a NIfTI/MHA/ECAT volume and, when asked, conversion between SUV kinds.

    The file's units come from ``units=``, else from a ``units=`` note seganypet wrote, else SUVbw is
    assumed (with a warning when the values look like Bq/mL).
    """
    kind = suvmod.check_kind(opts.get("suv", "bw"))
    given = opts.get("units") or meta.get("file_units")
    if given is not None:
        file_units = _normalise_units(given)
        if file_units is None:
            if kind == "none":
                return array, str(given)
            raise SUVError(
                f"{label} holds values in {given!r}, which cannot be turned into SUV; say what it holds "
                "with --units SUVbw|SUVlbm|SUVbsa|Bq/mL (units= in Python) or use --suv none"
            )
    else:
        file_units = "SUVbw"
        meta["units_assumed"] = True
        finite = array[np.isfinite(array)]
        if finite.size and float(np.percentile(finite, 99.9)) > 500:
            suvmod.warn(
                warnings,
                f"{label} has no unit information and values up to {float(finite.max()):.4g}, "
                "which look like Bq/mL rather than SUV; give --units Bq/mL with --weight and --dose "
                "to get SUV",
            )
        logger.info("%s: no unit information, assuming SUVbw", label)
    if kind == "none":
        return array, file_units
    p = suvmod.Patient(warnings=warnings)
    for key in ("weight", "height", "dose"):
        if opts.get(key) is not None:
            setattr(p, key, float(opts[key]))
    p.sex = suvmod.normalise_sex(opts.get("sex"))
    target = suvmod.UNITS_OF_KIND[kind]
    meta.update({"weight_kg": p.weight, "height_m": p.height, "sex": p.sex, "dose_bq": p.dose})
    if file_units == target:
        meta["suv_factor"] = 1.0
        return array, target
    if file_units == "Bq/mL":
        suvmod.check_patient(p, kind, need_dose=True, dicom=False)
        factor = suvmod.factor_from_activity(kind, p, p.dose)  # type: ignore[arg-type]
    else:
        src_kind = {"SUVbw": "bw", "SUVlbm": "lbm", "SUVbsa": "bsa"}[file_units]
        need = kind if kind != "bw" else src_kind
        suvmod.check_patient(p, need, need_dose=False, dicom=False)
        if src_kind != "bw":
            suvmod.check_patient(p, src_kind, need_dose=False, dicom=False)
        factor = suvmod.factor_from_suvbw(kind, p) / suvmod.factor_from_suvbw(src_kind, p)
    meta["suv_factor"] = factor
    return array * factor, target


def _check_finite(array: np.ndarray, label: str, policy: str, warnings: list[str]) -> np.ndarray:
    """Count NaN/Inf voxels; refuse (policy "error") or replace them with 0 (policy "zero")."""
    bad = ~np.isfinite(array)
    n_bad = int(bad.sum())
    if not n_bad:
        return array
    n_nan = int(np.isnan(array).sum())
    n_inf = n_bad - n_nan
    what = f"{n_nan} NaN and {n_inf} infinite voxel{'s' if n_inf != 1 else ''}"
    if policy == "zero":
        suvmod.warn(warnings, f"{label} held {what}; they were replaced with 0")
        array = array.copy()
        array[bad] = 0
        return array
    raise ImageContentError(
        f"{label} holds {what} (of {array.size}); pass --nan zero (nan_policy='zero') to replace them with 0"
    )


def _resolve(path: str | os.PathLike[str]) -> tuple[Path, str]:
    if isinstance(path, PETImage):
        raise InputError("read_pet needs a path, not a PETImage")
    try:
        p = Path(os.fspath(path)).expanduser()
    except TypeError:
        raise InputError(f"read_pet needs a file or folder path, got {type(path).__name__}") from None
    label = str(path)
    if not p.exists():
        raise ImageReadError(f"{label} does not exist")
    if not os.access(p, os.R_OK) or (p.is_dir() and not os.access(p, os.X_OK)):
        raise ImageReadError(f"{label} cannot be read (permission denied)")
    if not p.is_dir() and not p.is_file():
        raise ImageReadError(f"{label} is neither a regular file nor a folder")
    return p, label


def read_pet(path: str | os.PathLike[str], **options: Any) -> PETImage:
    """Read a PET volume and convert it to SUV.

    Args:
        path: a NIfTI (.nii/.nii.gz), MHA/MHD/NRRD, ECAT7 (.v) file, a DICOM file, a folder holding a
            DICOM PT series (searched recursively), or a .zip of such a folder.
        **options: see :data:`READ_OPTIONS` (``suv``, ``weight`` kg, ``height`` m, ``sex``, ``dose`` Bq,
            ``injection_time``, ``half_life`` s, ``series_uid``, ``nan_policy``, ``units``,
            ``max_zip_bytes``).

    Returns:
        :class:`PETImage` with ``array`` float32 ``(I, J, K)`` in the file's voxel order (DICOM: column,
        row, slice by ascending position along the slice normal), ``affine`` voxel -> RAS mm,
        ``units`` ("SUVbw" by default), ``metadata`` (patient, tracer, UIDs, ``suv_factor``,
        ``warnings``: list of sentences also logged), ``source_datasets`` (DICOM headers, k order).

    Raises:
        ImageReadError / DicomError / SUVError / ImageContentError with one sentence naming the problem.
    """
    unknown = sorted(set(options) - set(READ_OPTIONS))
    if unknown:
        raise InputError(f"unknown read_pet option(s) {', '.join(unknown)}; known: {', '.join(READ_OPTIONS)}")
    opts = {k: v for k, v in options.items() if v is not None}
    policy = str(opts.get("nan_policy", "error")).lower()
    if policy not in ("error", "zero"):
        raise InputError(f"nan_policy must be 'error' or 'zero', not {policy!r}")
    suvmod.check_kind(opts.get("suv", "bw"))
    for key in ("weight", "height", "dose", "half_life"):
        if key in opts:
            try:
                opts[key] = float(opts[key])
            except (TypeError, ValueError):
                raise InputError(f"{key} must be a number, not {opts[key]!r}") from None
    p, label = _resolve(path)
    suffix = suffix_of(p)
    if (
        p.is_dir()
        or suffix == ".zip"
        or (p.is_file() and zipfile.is_zipfile(p) and suffix not in NIFTI_SUFFIXES)
    ):
        from seganypet.io.dicom import read_dicom

        image = read_dicom(p, opts, label)
        warnings = image.metadata.setdefault("warnings", [])
        image.array = _check_finite(image.array, label, policy, warnings)
        return image
    if suffix in NIFTI_SUFFIXES:
        array, affine, meta = read_nifti(p, label)
    elif suffix in ITK_SUFFIXES:
        array, affine, meta = read_itk(p, label)
    elif suffix in ECAT_SUFFIXES:
        array, affine, meta = read_ecat(p, label)
    else:
        from seganypet.io.dicom import looks_like_dicom, read_dicom

        if looks_like_dicom(p):
            image = read_dicom(p, opts, label)
            warnings = image.metadata.setdefault("warnings", [])
            image.array = _check_finite(image.array, label, policy, warnings)
            return image
        raise ImageReadError(
            f"{label} has an unknown format; give a .nii/.nii.gz, .mha/.mhd/.nrrd, .v (ECAT7), DICOM file, "
            "a DICOM folder or a .zip"
        )
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ImageContentError(
            f"{label} has a degenerate voxel-to-world affine (zero or non-finite voxel size)"
        )
    warnings: list[str] = meta.pop("warnings", [])
    array = _check_finite(array, label, policy, warnings)
    array, units = _apply_volume_units(array, meta, opts, label, warnings)
    meta["warnings"] = warnings
    return PETImage(array=array, affine=affine, units=units, metadata=meta, source_datasets=None, path=label)
