"""Writing label maps: NIfTI on the reference grid (+ JSON side-car) and DICOM SEG (highdicom).

A label map is an integer array ``(I, J, K)`` on the grid of the PET it was drawn on: 0 is
background, each positive value one object. For a DICOM reference ``(i, j, k)`` is
(column, row, slice in ascending position), i.e. ``source_datasets[k]`` holds plane ``k``.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from seganypet.errors import InputError
from seganypet.image import PETImage
from seganypet.utils import atomic_path

logger = logging.getLogger("seganypet.io.seg")


def _check_label_map(label_map: np.ndarray, reference: PETImage) -> np.ndarray:
    """Validate shape and values; returns the label map as a non-negative integer array."""
    lm = np.asarray(label_map)
    if lm.shape != reference.shape:
        raise InputError(
            f"the label map has shape {lm.shape} but the reference image has {reference.shape}; "
            "label maps are written on the image's own grid"
        )
    if lm.dtype == bool:
        lm = lm.astype(np.uint8)
    elif not np.issubdtype(lm.dtype, np.integer):
        if not np.all(np.isfinite(lm)) or not np.array_equal(lm, np.round(lm)):
            raise InputError("the label map holds non-integer values; labels must be whole numbers")
        lm = lm.astype(np.int64)
    if lm.size and int(lm.min()) < 0:
        raise InputError(f"the label map holds negative labels (min {int(lm.min())}); labels must be >= 0")
    return lm


def _label_dtype(lm: np.ndarray) -> type:
    top = int(lm.max()) if lm.size else 0
    if top < 256:
        return np.uint8
    if top < 65536:
        return np.uint16
    return np.uint32


def sidecar_path(path: str | Path) -> Path:
    """``labels.nii.gz`` -> ``labels.json`` (beside it)."""
    path = Path(path)
    name = path.name
    for suf in (".nii.gz", ".nii", ".mha", ".nrrd"):
        if name.lower().endswith(suf):
            return path.with_name(name[: -len(suf)] + ".json")
    return path.with_name(name + ".json")


def write_label_map(
    label_map: np.ndarray,
    reference: PETImage,
    path: str | Path,
    names: dict[int, str] | None = None,
) -> Path:
    """Write an integer label map as NIfTI on ``reference``'s grid plus a JSON side-car, atomically.

    Args:
        label_map: integer (or bool) array ``(I, J, K)``, same shape as ``reference.array``; 0 = background.
        reference: the PETImage it was drawn on; its affine (RAS mm) is written unchanged.
        path: ``.nii.gz`` or ``.nii`` file name.
        names: label -> name; the side-car ``<stem>.json`` holds ``{"labels": {"1": "liver", ...}}``
            for every label present (unnamed ones get ``"object <n>"``).

    Returns:
        the NIfTI path. Integer dtype: uint8 when labels < 256, else uint16 (uint32 beyond).
    """
    import nibabel as nib

    path = Path(path)
    if not path.name.lower().endswith((".nii.gz", ".nii")):
        raise InputError(f"label maps are written as NIfTI; {path.name} must end in .nii.gz or .nii")
    lm = _check_label_map(label_map, reference)
    dtype = _label_dtype(lm)
    present = [int(v) for v in np.unique(lm) if v != 0]
    names = {int(k): str(v) for k, v in (names or {}).items()}
    labels = {str(v): names.get(v, f"object {v}") for v in present}
    for k, v in names.items():  # named but empty objects are kept in the side-car
        labels.setdefault(str(k), v)
    labels = dict(sorted(labels.items(), key=lambda kv: int(kv[0])))
    img = nib.Nifti1Image(np.ascontiguousarray(lm.astype(dtype)), reference.affine)
    img.header.set_qform(reference.affine, code=1)
    img.header.set_sform(reference.affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"seganypet label map"
    side: dict[str, Any] = {
        "labels": labels,
        "voxels": {str(v): int((lm == v).sum()) for v in present},
        "shape": list(reference.shape),
        "affine": np.asarray(reference.affine).round(6).tolist(),
        "reference": reference.path,
        "series_instance_uid": reference.metadata.get("series_instance_uid"),
    }
    json_path = sidecar_path(path)
    with atomic_path(path) as tmp_nii, atomic_path(json_path) as tmp_json:
        nib.save(img, str(tmp_nii))
        tmp_json.write_text(json.dumps(side, indent=2))
    logger.info("wrote label map %s (%d objects) and %s", path, len(present), json_path.name)
    return path


def _codes_for(name: str) -> tuple[Any, Any]:
    """(segmented property category, type) for an object name: lesions vs. organs/tissue."""
    from pydicom.sr.codedict import codes

    low = name.lower()
    if any(w in low for w in ("lesion", "tumo", "gtv", "metast", "node", "nodule", "mass")):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
    return codes.SCT.Tissue, codes.SCT.Tissue


def write_dicom_seg(
    label_map: np.ndarray,
    reference: PETImage,
    out_path: str | Path,
    names: dict[int, str] | None = None,
) -> Path:
    """Write a binary DICOM Segmentation (highdicom) referencing the source PT series, atomically.

    Args:
        label_map: integer array ``(I, J, K)`` = (column, row, slice) on the reference grid.
        reference: a PETImage read from DICOM (``reference.source_datasets`` in slice order k).
        out_path: the .dcm file to write.
        names: label -> name; becomes each segment's SegmentLabel.

    One segment per label present, in increasing label order; segment numbers are 1..n (DICOM needs
    them consecutive), so label ``v`` may get another segment number (the SegmentLabel carries the
    name, unnamed labels get ``"object <v>"``). Algorithm identification: name "seganypet", version
    = package version, family Artificial Intelligence; algorithm type SEMIAUTOMATIC.

    Returns:
        ``out_path``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from seganypet import __version__

    datasets = reference.source_datasets
    if not datasets:
        raise InputError(
            "DICOM SEG needs a reference image read from a DICOM series (it has no source datasets)"
        )
    lm = _check_label_map(label_map, reference)
    if len(datasets) != lm.shape[2]:
        raise InputError(
            f"the reference has {len(datasets)} DICOM slices but the label map {lm.shape[2]} planes along k"
        )
    present = [int(v) for v in np.unique(lm) if v != 0]
    if not present:
        raise InputError("the label map is empty (all 0): there is no segment to write as DICOM SEG")
    names = {int(k): str(v) for k, v in (names or {}).items()}
    algorithm = hd.AlgorithmIdentificationSequence(
        name="seganypet", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = []
    remapped = np.zeros(lm.shape, dtype=np.uint16 if len(present) > 255 else np.uint8)
    for number, value in enumerate(present, start=1):
        name = names.get(value, f"object {value}")
        category, prop = _codes_for(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name[:64],
                segmented_property_category=category,
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=f"label {value}",
                tracking_uid=hd.UID(),
            )
        )
        remapped[lm == value] = number
    # (I, J, K) = (column, row, slice) -> frames (K, rows J, columns I), frame k <-> datasets[k]
    frames = np.ascontiguousarray(remapped.transpose(2, 1, 0))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seg = _build_segmentation(hd, datasets, frames, descriptions, __version__)
        for w in caught:  # pydicom/highdicom notes about the source headers (long SH, names, ...)
            logger.debug("DICOM SEG: %s", w.message)
    except (ValueError, AttributeError, TypeError) as err:
        raise InputError(f"DICOM SEG cannot be built from this series ({err})") from None
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        seg.save_as(str(tmp))
    logger.info("wrote DICOM SEG %s (%d segments)", out_path, len(descriptions))
    return out_path


def _build_segmentation(
    hd: Any, datasets: list[Any], frames: np.ndarray, descriptions: list[Any], version: str
) -> Any:
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(datasets[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="seganypet",
        manufacturer_model_name="seganypet",
        software_versions=version,
        device_serial_number="0",
        series_description="seganypet segmentation",
        content_label="SEGANYPET",
        content_description="promptable PET segmentation",
    )
