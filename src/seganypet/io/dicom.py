"""Reading a DICOM PT series (folder, single file or .zip) into a :class:`PETImage`.

Geometry: slices are sorted by their position along the slice normal
``n = row_direction x column_direction`` (``ImageOrientationPatient``), never by file name or
InstanceNumber. Voxel ``(i, j, k)`` = (column, row, slice in ascending position). The affine is
built in LPS from ``ImageOrientationPatient``, ``PixelSpacing`` and ``ImagePositionPatient`` of the
first slice and turned into RAS by negating the first two rows. Oblique orientations are kept in
the affine; gantry tilt (slice positions not along the normal) and non-orthogonal directions are
refused.
"""

from __future__ import annotations

import logging
import zipfile
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from seganypet.errors import DicomError, SUVError
from seganypet.image import PETImage
from seganypet.io import suv as suvmod
from seganypet.io.archive import MAX_ZIP_BYTES, extracted_zip
from seganypet.utils import progress

logger = logging.getLogger("seganypet.io.dicom")

PET_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.128",  # PET Image Storage
    "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
}
# Relative deviation of a slice gap from the median gap: above WARN -> warning, above ERROR -> error.
SPACING_WARN = 0.01
SPACING_ERROR = 0.2


def is_dicom_file(path: Path) -> bool:
    """True when the file has the DICOM preamble ('DICM' at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


# --- finding series -----------------------------------------------------------------------------


def _scan_folder(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """SeriesInstanceUID -> [(file, header dataset)] for every DICOM image file below ``folder``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for f in progress(files, desc="scanning DICOM", unit="file"):
        if f.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=f.suffix.lower() in (".dcm", ".ima"))
        except Exception:  # not DICOM: skip
            continue
        if "SOPClassUID" not in ds and "Modality" not in ds:
            continue
        uid = str(ds.get("SeriesInstanceUID", "")) or f"(no SeriesInstanceUID: {f.parent})"
        series[uid].append((f, ds))
    return series


def _describe(uid: str, items: list[tuple[Path, Dataset]]) -> str:
    ds = items[0][1]
    desc = str(ds.get("SeriesDescription", "")).strip()
    text = f"{ds.get('Modality', '?')} series {uid}"
    if desc:
        text += f" '{desc}'"
    return text + f" ({len(items)} files)"


def _listing(series: dict[str, list[tuple[Path, Dataset]]], limit: int = 8) -> str:
    items = sorted(series.items())
    text = "; ".join(_describe(u, it) for u, it in items[:limit])
    return text + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _is_pet(items: list[tuple[Path, Dataset]]) -> bool:
    ds = items[0][1]
    sop = str(ds.get("SOPClassUID", ""))
    if sop:  # a PT secondary capture (MIP, screenshot) is no PET volume
        return sop in PET_SOP_CLASSES
    return str(ds.get("Modality", "")) == "PT"


def select_series(folder: Path, series_uid: str | None, label: str) -> list[tuple[Path, Dataset]]:
    """Pick the PT series in ``folder`` (or the one named by ``series_uid``); clear errors otherwise."""
    series = _scan_folder(folder)
    if not series:
        if not any(folder.iterdir()):
            raise DicomError(f"{label} is an empty folder")
        raise DicomError(f"{label} holds no DICOM files")
    listing = _listing(series)
    if series_uid:
        if series_uid not in series:
            raise DicomError(
                f"{label} has no series with SeriesInstanceUID {series_uid}; it holds: {listing}"
            )
        items = series[series_uid]
        if not _is_pet(items):
            raise DicomError(
                f"series {series_uid} in {label} is not a PET series "
                f"(Modality {items[0][1].get('Modality', '?')})"
            )
        return items
    pets = {u: it for u, it in series.items() if _is_pet(it)}
    if not pets:
        raise DicomError(f"{label} holds no PET series, only: {listing}; this is not a PET series")
    if len(pets) > 1:
        pet_list = _listing(pets)
        raise DicomError(f"{label} holds {len(pets)} PET series: {pet_list}; name one with --series-uid UID")
    return next(iter(pets.values()))


# --- geometry -----------------------------------------------------------------------------------


def _floats(ds: Dataset, keyword: str, n: int, file: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (n,):
        raise DicomError(f"{file.name}: {keyword} is missing or malformed, so the slice cannot be placed")
    return arr


def series_geometry(
    headers: list[tuple[Path, Dataset]], warnings: list[str]
) -> tuple[list[tuple[Path, Dataset]], np.ndarray, dict[str, Any]]:
    """Sort slices along the normal and build the RAS affine.

    Returns ``(sorted headers, affine (4, 4) RAS mm, info)``; info holds the slice gaps.
    """
    ds0 = headers[0][1]
    f0 = headers[0][0]
    iop = _floats(ds0, "ImageOrientationPatient", 6, f0)
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3:
        raise DicomError(f"{f0.name}: ImageOrientationPatient {list(iop)} holds non-unit direction vectors")
    if abs(float(row @ col)) > 1e-3:
        raise DicomError(
            f"{f0.name}: ImageOrientationPatient row and column directions are not orthogonal "
            f"(cosine {float(row @ col):.3g}); such a series is not supported"
        )
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    ps = _floats(ds0, "PixelSpacing", 2, f0)  # [row spacing (between rows), column spacing]
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    positions = []
    for f, ds in headers:
        if "NumberOfFrames" in ds and int(ds.NumberOfFrames or 1) > 1:
            raise DicomError(f"{f.name} is a multi-frame image; multi-frame PET is not supported")
        o = _floats(ds, "ImageOrientationPatient", 6, f)
        if np.abs(o - iop).max() > 1e-3:
            raise DicomError(f"slices of the series have different ImageOrientationPatient ({f.name})")
        if int(ds.Rows) != rows or int(ds.Columns) != cols:
            raise DicomError(
                f"slices of the series have different sizes ({f.name} is {ds.Columns}x{ds.Rows})"
            )
        if np.abs(_floats(ds, "PixelSpacing", 2, f) - ps).max() > 1e-4:
            raise DicomError(f"slices of the series have different PixelSpacing ({f.name})")
        positions.append(_floats(ds, "ImagePositionPatient", 3, f))
    pos = np.asarray(positions)
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    headers = [headers[i] for i in order]
    pos, dist = pos[order], dist[order]
    info: dict[str, Any] = {}
    tilt = float(ds0.get("GantryDetectorTilt", 0) or 0)
    if len(headers) > 1:
        gaps = np.diff(dist)
        if np.any(gaps < 1e-3):
            k = int(np.argmin(gaps))
            raise DicomError(
                f"two slices share one position ({headers[k][0].name}, {headers[k + 1][0].name}): "
                "a dynamic or multi-bed series with repeated positions is not supported; pass one frame"
            )
        # in-plane drift of the slice origins = gantry tilt (or a sheared stack)
        drift = (pos - pos[0]) - np.outer(dist - dist[0], normal)
        shear = float(np.abs(drift).max())
        if shear > 0.01 * max(1.0, float(np.median(gaps))) or abs(tilt) > 0.01:
            angle = np.degrees(np.arctan2(np.linalg.norm(drift[-1]), dist[-1] - dist[0]))
            raise DicomError(
                f"the series has gantry tilt (slices shifted {shear:.3g} mm in plane, "
                f"about {angle:.3g} degrees"
                f"{', GantryDetectorTilt ' + str(tilt) if tilt else ''}); tilted series are not supported, "
                "resample it to an orthogonal grid first"
            )
        median = float(np.median(gaps))
        dev = float(np.abs(gaps - median).max() / median)
        step = float((dist[-1] - dist[0]) / (len(dist) - 1))
        info["slice_gaps_mm"] = [round(float(g), 4) for g in (gaps.min(), median, gaps.max())]
        if dev > SPACING_ERROR:
            raise DicomError(
                f"the slice spacing is irregular (gaps from {gaps.min():.3g} to {gaps.max():.3g} mm; missing "
                "slices?); such a series cannot be placed on one grid"
            )
        if dev > SPACING_WARN:
            suvmod.warn(
                warnings,
                f"the slice spacing is irregular (gaps from {gaps.min():.4g} to {gaps.max():.4g} mm); "
                f"using the mean {step:.4g} mm",
            )
    else:
        if abs(tilt) > 0.01:
            raise DicomError(f"the series has gantry tilt (GantryDetectorTilt {tilt}); it is not supported")
        step = (
            float(ds0.get("SpacingBetweenSlices", 0) or 0) or float(ds0.get("SliceThickness", 0) or 0) or 1.0
        )
    lps = np.eye(4)
    lps[:3, 0] = row * float(ps[1])
    lps[:3, 1] = col * float(ps[0])
    lps[:3, 2] = normal * step
    lps[:3, 3] = pos[0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return headers, ras, info


# --- pixels -------------------------------------------------------------------------------------


def _slice_values(f: Path, ds: Dataset) -> np.ndarray:
    """Rescaled values of one slice as float32, shape (Columns, Rows) = (i, j)."""
    try:
        px = ds.pixel_array
    except Exception as err:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise DicomError(
            f"{f.name}: the pixel data cannot be decoded (transfer syntax {ts}: {type(err).__name__}: {err})"
        ) from None
    if px.ndim != 2:
        raise DicomError(f"{f.name}: expected one 2D frame, got pixel data of shape {px.shape}")
    slope = np.float32(float(ds.get("RescaleSlope", 1) or 1) if "RescaleSlope" in ds else 1.0)
    inter = np.float32(float(ds.get("RescaleIntercept", 0) or 0))
    # float32 arithmetic: stored integers are exact in float32 and this matches dcm2niix/ITK output
    values = px.astype(np.float32) * slope
    if inter != 0:
        values = values + inter
    return values.T


def _any_date(ds: Dataset) -> str:
    """The series' date for times given without one (SeriesDate, AcquisitionDate, StudyDate); when an
    anonymiser removed them all, a placeholder day: only time differences matter for the decay."""
    return str(ds.get("SeriesDate") or ds.get("AcquisitionDate") or ds.get("StudyDate") or "19000101")


def _scan_datetime(headers: list[tuple[Path, Dataset]], warnings: list[str]) -> datetime:
    """Scan reference time per QIBA: SeriesDateTime unless after the earliest acquisition."""
    ds0 = headers[0][1]
    series_dt = suvmod.parse_dicom_datetime(ds0.get("SeriesDate") or _any_date(ds0), ds0.get("SeriesTime"))
    acq = [
        suvmod.parse_dicom_datetime(ds.get("AcquisitionDate") or _any_date(ds), ds.get("AcquisitionTime"))
        for _, ds in headers
    ]
    acq_valid = [a for a in acq if a is not None]
    earliest = min(acq_valid) if acq_valid else None
    if series_dt is not None and (earliest is None or series_dt <= earliest):
        return series_dt
    ge = ds0.get((0x0009, 0x100D))
    if ge is not None and ge.value:
        ge_dt = suvmod.parse_dicom_dt(ge.value.decode() if isinstance(ge.value, bytes) else ge.value)
        if ge_dt is not None:
            return ge_dt
    if earliest is not None:
        if series_dt is not None:
            suvmod.warn(
                warnings,
                "SeriesTime lies after AcquisitionTime (a post-processed series?); using the earliest "
                "AcquisitionTime as the scan time, which may be slightly off",
            )
        return earliest
    raise SUVError(
        "SeriesDate/SeriesTime (0008,0021/0031) and AcquisitionTime (0008,0032) are missing, so the decay "
        "time is unknown; give --injection-time and check the series"
    )


def _patient(ds0: Dataset, opts: dict[str, Any], warnings: list[str]) -> suvmod.Patient:
    rp = None
    seq = ds0.get("RadiopharmaceuticalInformationSequence")
    if seq:
        rp = seq[0]

    def num(v: Any) -> float | None:
        try:
            return float(v) if v not in (None, "") else None
        except (TypeError, ValueError):
            return None

    p = suvmod.Patient(warnings=warnings)
    p.weight = num(ds0.get("PatientWeight"))
    p.height = num(ds0.get("PatientSize"))
    p.sex = suvmod.normalise_sex(ds0.get("PatientSex"))
    if rp is not None:
        p.dose = num(rp.get("RadionuclideTotalDose"))
        p.half_life = num(rp.get("RadionuclideHalfLife"))
        p.tracer = str(rp.get("Radiopharmaceutical", "") or "") or None
        if not p.tracer and rp.get("RadiopharmaceuticalCodeSequence"):
            p.tracer = str(rp.RadiopharmaceuticalCodeSequence[0].get("CodeMeaning", "")) or None
        p.injection = suvmod.parse_dicom_dt(rp.get("RadiopharmaceuticalStartDateTime"))
        if p.injection is None and rp.get("RadiopharmaceuticalStartTime"):
            p.injection = suvmod.parse_dicom_datetime(
                _any_date(ds0),
                rp.get("RadiopharmaceuticalStartTime"),
            )
    # user overrides
    for key in ("weight", "height", "dose", "half_life"):
        if opts.get(key) is not None:
            setattr(p, key, float(opts[key]))
    if opts.get("sex") is not None:
        p.sex = suvmod.normalise_sex(opts["sex"])
        if p.sex is None:
            raise SUVError(f"sex {opts['sex']!r} is not understood; use M or F")
    return p


def _compute_suv(
    headers: list[tuple[Path, Dataset]], array: np.ndarray, opts: dict[str, Any], warnings: list[str]
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Apply the QIBA SUV recipe; returns (array, units, metadata)."""
    ds0 = headers[0][1]
    kind = suvmod.check_kind(opts.get("suv", "bw"))
    p = _patient(ds0, opts, warnings)
    units_tag = str(ds0.get("Units", "") or "").upper()
    raw_corrected = ds0.get("CorrectedImage") or []
    if isinstance(raw_corrected, str):  # a single value is a str, not a list
        raw_corrected = [raw_corrected]
    corrected = [str(c).upper() for c in raw_corrected]
    decay_corr = str(ds0.get("DecayCorrection", "") or "").upper()
    meta: dict[str, Any] = {"dicom_units": units_tag or None, "decay_correction": decay_corr or None}
    base_units = {"BQML": "Bq/mL", "GML": "SUVbw", "CNTS": "CNTS"}.get(units_tag, "unknown")
    if units_tag == "CNTS":
        suv_scale = ds0.get((0x7053, 0x1000))
        act_scale = ds0.get((0x7053, 0x1009))

        def _f(el: Any) -> float | None:
            if el is None:
                return None
            v = el.value
            if isinstance(v, bytes):
                v = v.decode(errors="ignore").strip("\x00 ")
            try:
                return float(v)
            except (TypeError, ValueError):
                return None

        fs, fa = _f(suv_scale), _f(act_scale)
        if kind == "none":
            if fa:
                array, base_units = array * fa, "Bq/mL"
                meta["philips_activity_scale"] = fa
        else:
            if not fs:
                raise SUVError(
                    "Units are CNTS and the Philips SUV scale factor (7053,1000) is missing, so counts "
                    "cannot be turned into SUV; use --suv none to read the counts"
                )
            array, base_units = array * fs, "SUVbw"
            meta["philips_suv_scale"] = fs
    factor = 1.0
    if kind == "none":
        units = base_units
    elif base_units == "SUVbw":
        if kind != "bw":
            suvmod.check_patient(p, kind, need_dose=False)
        factor = suvmod.factor_from_suvbw(kind, p)
        units = suvmod.UNITS_OF_KIND[kind]
    elif base_units == "Bq/mL":
        if not decay_corr:
            raise SUVError(
                "DecayCorrection (0054,1102) is missing, so the decay reference time is unknown; "
                "use --suv none to read Bq/mL"
            )
        if decay_corr == "NONE":
            raise SUVError(
                "the image is not decay corrected (DecayCorrection (0054,1102) NONE), which this SUV "
                "recipe does not support; use --suv none to read Bq/mL"
            )
        if corrected and "DECY" not in corrected:
            raise SUVError(
                f"CorrectedImage (0028,0051) lacks DECY but DecayCorrection (0054,1102) is {decay_corr}: "
                "contradictory tags; use --suv none to read Bq/mL"
            )
        if not corrected:
            suvmod.warn(
                warnings, f"CorrectedImage (0028,0051) is missing; trusting DecayCorrection {decay_corr}"
            )
        suvmod.check_patient(p, kind, need_dose=True)
        if decay_corr == "ADMIN":
            decay = 1.0
        elif decay_corr == "START":
            scan = _scan_datetime(headers, warnings)
            if opts.get("injection_time") is not None:
                p.injection = suvmod.parse_user_time(opts["injection_time"], scan)
            decay = suvmod.decay_factor(p, scan)
            meta["scan_time"] = scan.isoformat()
            meta["uptake_time_s"] = round((scan - p.injection).total_seconds(), 3)  # type: ignore[operator]
        else:
            raise SUVError(
                f"DecayCorrection (0054,1102) {decay_corr} is not supported (START or ADMIN); use --suv none"
            )
        meta["decay_factor"] = decay
        factor = suvmod.factor_from_activity(kind, p, p.dose * decay)  # type: ignore[operator]
        units = suvmod.UNITS_OF_KIND[kind]
    else:
        raise SUVError(
            f"Units (0054,1001) {units_tag or 'missing'} cannot be turned into SUV "
            "(BQML, GML or CNTS needed); use --suv none to read the stored values"
        )
    if factor != 1.0:
        array = array * factor
    meta.update(
        {
            "suv_factor": factor,
            "weight_kg": p.weight,
            "height_m": p.height,
            "sex": p.sex,
            "dose_bq": p.dose,
            "half_life_s": p.half_life,
            "injection_time": p.injection.isoformat() if p.injection else None,
            "tracer": p.tracer,
        }
    )
    return array, units, meta


def _warn_if_part_of_series(path: Path, ds: Dataset, warnings: list[str]) -> None:
    """A single file given: warn when its folder holds more slices of the same series."""
    uid = str(ds.get("SeriesInstanceUID", ""))
    siblings = 0
    for f in path.parent.iterdir():
        if f == path or not f.is_file():
            continue
        try:
            other = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:
            continue
        siblings += str(other.get("SeriesInstanceUID", "")) == uid
    if siblings:
        suvmod.warn(
            warnings,
            f"{path.name} is one slice of a series with {siblings + 1} files in {path.parent}; only this "
            "slice was read (give the folder to read the whole series)",
        )


def read_dicom(path: Path, opts: dict[str, Any], label: str | None = None) -> PETImage:
    """Read a PT series from a folder (recursive), a single DICOM file or a .zip (see module doc).

    Returns a PETImage: array float32 (I, J, K) = (Columns, Rows, slices), affine RAS mm, SUV units
    per ``opts['suv']`` ("bw" default), metadata with patient/tracer facts and UIDs.
    """
    label = label or str(path)
    if path.is_file() and (path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)):
        with extracted_zip(path, int(opts.get("max_zip_bytes") or MAX_ZIP_BYTES)) as folder:
            return read_dicom(folder, opts, label=label)
    if path.is_dir():
        headers = select_series(path, opts.get("series_uid"), label)
    else:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception as err:
            raise DicomError(f"{label} cannot be read as DICOM ({type(err).__name__}: {err})") from None
        if "Modality" not in ds and "SOPClassUID" not in ds:
            raise DicomError(f"{label} is not a DICOM image file")
        headers = [(path, ds)]
        if not _is_pet(headers):
            raise DicomError(f"{label} is not a PET series (Modality {ds.get('Modality', '?')})")
        uid = opts.get("series_uid")
        if uid and str(ds.get("SeriesInstanceUID", "")) != uid:
            raise DicomError(f"{label} belongs to series {ds.get('SeriesInstanceUID')}, not {uid}")
    warnings: list[str] = []
    if not path.is_dir():
        _warn_if_part_of_series(path, headers[0][1], warnings)
    headers, affine, geo = series_geometry(headers, warnings)
    datasets = []
    slices = []
    for f, _ in progress(headers, desc="reading slices", unit="slice"):
        try:
            ds = pydicom.dcmread(f, force=True)
        except Exception as err:
            raise DicomError(f"{f.name} cannot be read ({type(err).__name__}: {err})") from None
        slices.append(_slice_values(f, ds))
        datasets.append(ds)
    array = np.stack(slices, axis=-1)
    array, units, meta = _compute_suv(list(zip([f for f, _ in headers], datasets)), array, opts, warnings)
    ds0 = datasets[0]
    meta.update(geo)
    meta.update(
        {
            "format": "dicom",
            "modality": str(ds0.get("Modality", "")),
            "manufacturer": str(ds0.get("Manufacturer", "") or "") or None,
            "series_instance_uid": str(ds0.get("SeriesInstanceUID", "")),
            "study_instance_uid": str(ds0.get("StudyInstanceUID", "")),
            "frame_of_reference_uid": str(ds0.get("FrameOfReferenceUID", "")) or None,
            "series_description": str(ds0.get("SeriesDescription", "") or "") or None,
            "n_files": len(datasets),
        }
    )
    for ds in datasets:  # keep headers only for DICOM SEG export, not the pixels
        if "PixelData" in ds:
            del ds.PixelData
    meta["warnings"] = warnings
    return PETImage(
        array=array, affine=affine, units=units, metadata=meta, source_datasets=datasets, path=label
    )


def looks_like_dicom(path: Path) -> bool:
    """A file we should try as DICOM (preamble or .dcm/.ima suffix)."""
    return path.suffix.lower() in (".dcm", ".ima", ".dicom") or is_dicom_file(path)
