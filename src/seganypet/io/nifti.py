"""Volume files: NIfTI (nibabel), MHA/MHD/NRRD (SimpleITK), ECAT7 (nibabel); float32 writers.

Axis order and geometry:

- NIfTI: the array in nibabel's ``(i, j, k)`` order, the file's affine (sform if set, else qform),
  which NIfTI defines in RAS mm.
- ITK images (MHA/NRRD): SimpleITK stores direction and origin in LPS and hands arrays as
  ``(k, j, i)``; we transpose to ``(i, j, k)`` and flip the first two world axes to RAS.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from seganypet.errors import ImageContentError, ImageReadError, InputError
from seganypet.image import PETImage
from seganypet.utils import atomic_path

logger = logging.getLogger("seganypet.io.nifti")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
ECAT_SUFFIXES = (".v", ".v.gz")


def suffix_of(path: Path) -> str:
    """Lower-case suffix, with ``.gz`` kept together with the one before it (``.nii.gz``)."""
    name = path.name.lower()
    for suf in (*NIFTI_SUFFIXES[::-1], ".v.gz", *ITK_SUFFIXES, ".v", ".zip"):
        if name.endswith(suf):
            return suf
    return path.suffix.lower()


def squeeze_to_3d(data: np.ndarray, label: str) -> np.ndarray:
    """Drop trailing singleton axes beyond 3; refuse 2D and true 4D+ data (ImageContentError)."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 3:
        raise ImageContentError(
            f"{label} is a {data.ndim}D image (shape {data.shape}); a 3D PET volume is needed"
        )
    if data.ndim > 3:
        raise ImageContentError(
            f"{label} is a {data.ndim}D image (shape {data.shape}); pass a single 3D frame, not a time series"
        )
    if 0 in data.shape:
        raise ImageContentError(f"{label} is empty (shape {data.shape})")
    return data


def read_nifti(path: Path, label: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """NIfTI -> (array float32 (I, J, K), affine RAS mm, metadata)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = img.shape
        if len(shape) < 3:
            raise ImageContentError(
                f"{label} is a {len(shape)}D image (shape {shape}); a 3D PET volume is needed"
            )
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except ImageContentError:
        raise
    except Exception as err:  # nibabel raises many types for corrupt files
        raise ImageReadError(f"{label} cannot be read as NIfTI ({type(err).__name__}: {err})") from None
    data = squeeze_to_3d(data, label)
    meta: dict[str, Any] = {"format": "nifti", "warnings": []}
    if int(img.header["sform_code"]) == 0 and int(img.header["qform_code"]) == 0:
        msg = (
            f"{label} has no orientation (sform and qform codes are 0); the voxel sizes alone give the affine"
        )
        logger.warning(msg)
        meta["warnings"].append(msg)
    descrip = img.header.get("descrip")
    if descrip is not None:
        text = np.asarray(descrip).tobytes().decode("latin-1", errors="ignore").strip("\x00 ")
        m = re.search(r"units=(\S+)", text)
        if m:
            meta["file_units"] = m.group(1)
    return data, np.asarray(img.affine, dtype=np.float64), meta


def read_itk(path: Path, label: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """MHA/MHD/NRRD via SimpleITK -> (array float32 (I, J, K), affine RAS mm, metadata)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except Exception as err:
        raise ImageReadError(
            f"{label} cannot be read as an ITK image ({str(err).strip().splitlines()[-1]})"
        ) from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageContentError(
            f"{label} has {img.GetNumberOfComponentsPerPixel()} components per voxel; one is needed"
        )
    dim = img.GetDimension()
    if dim < 3:
        raise ImageContentError(
            f"{label} is a {dim}D image (size {img.GetSize()}); a 3D PET volume is needed"
        )
    if dim > 3:
        raise ImageContentError(f"{label} is a {dim}D image; pass a single 3D frame")
    data = sitk.GetArrayFromImage(img).astype(np.float32).transpose(2, 1, 0)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    meta: dict[str, Any] = {"format": path.suffix.lower().lstrip(".")}
    for key in img.GetMetaDataKeys():
        if key.lower() in ("units", "seganypet_units"):
            meta["file_units"] = img.GetMetaData(key).strip()
    return squeeze_to_3d(data, label), LPS_TO_RAS @ lps, meta


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI or MHA/MHD/NRRD volume as it is (no SUV, no unit handling), e.g. a label map.

    Returns ``(array float32 (I, J, K), affine 4x4 RAS mm)``; errors are :class:`InputError` subclasses.
    """
    path = Path(path)
    label = str(path)
    if not path.is_file():
        raise ImageReadError(f"{label} does not exist or is not a file")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        data, affine, _ = read_nifti(path, label)
    else:
        data, affine, _ = read_itk(path, label)
    return data, affine


def read_ecat(path: Path, label: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """ECAT7 via nibabel (first frame when there is one frame only) -> (array, affine, metadata)."""
    import nibabel as nib

    try:
        img = nib.ecat.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
        affine = np.asarray(img.affine, dtype=np.float64)
        units = img.header["data_units"].tobytes().decode("latin-1", errors="ignore").strip("\x00 ")
    except Exception as err:
        raise ImageReadError(f"{label} cannot be read as ECAT7 ({type(err).__name__}: {err})") from None
    meta: dict[str, Any] = {"format": "ecat7"}
    if units:
        meta["file_units"] = units
    return squeeze_to_3d(data, label), affine, meta


def _nifti_image(array: np.ndarray, affine: np.ndarray, units: str | None) -> Any:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    if units:
        img.header["descrip"] = f"seganypet units={units}"[:79].encode()
    return img


def write_image(image: PETImage, path: str | Path) -> Path:
    """Write ``image`` as float32 NIfTI (.nii/.nii.gz) or MHA/NRRD, atomically.

    The array keeps its ``(i, j, k)`` order; NIfTI gets ``image.affine`` (RAS mm) as sform and qform
    (code 1, scanner) and ``units=<units>`` in the description; ITK formats get the affine converted
    back to LPS direction/origin. Returns the written path.
    """
    path = Path(path)
    suffix = suffix_of(path)
    array = np.ascontiguousarray(image.array, dtype=np.float32)
    if suffix in NIFTI_SUFFIXES:
        img = _nifti_image(array, image.affine, image.units)
        with atomic_path(path) as tmp:
            import nibabel as nib

            nib.save(img, str(tmp))
        return path
    if suffix in (".mha", ".nrrd"):
        import SimpleITK as sitk

        lps = LPS_TO_RAS @ image.affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        out = sitk.GetImageFromArray(array.transpose(2, 1, 0))
        out.SetSpacing([float(s) for s in spacing])
        out.SetOrigin([float(v) for v in lps[:3, 3]])
        out.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
        out.SetMetaData("seganypet_units", image.units)
        with atomic_path(path) as tmp:
            sitk.WriteImage(out, str(tmp), True)
        return path
    raise InputError(f"cannot write {path.name}: use a .nii.gz, .nii, .mha or .nrrd file name")
