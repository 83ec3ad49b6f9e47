"""Synthetic DICOM PT/CT series written with pydicom for the IO tests.

``write_series(folder, values, ...)`` writes one file per slice k of ``values`` (I, J, K) =
(column, row, slice), in shuffled order with random file names and reversed InstanceNumbers, so
that a reader relying on names or instance numbers fails. It returns the values the reader must
produce (the stored integers times each slice's RescaleSlope, in float32) and the file list.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PET_SOP = "1.2.840.10008.5.1.4.1.1.128"
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Written:
    """What write_series produced: expected rescaled values (I, J, K) float32, files, UIDs, geometry."""

    values: np.ndarray
    files: list[Path]
    series_uid: str
    positions: np.ndarray  # (K, 3) ImagePositionPatient (LPS mm) of slice k
    row_dir: np.ndarray
    col_dir: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns)


def pattern(shape: tuple[int, int, int] = (7, 5, 4), scale: float = 1000.0) -> np.ndarray:
    """A volume whose every voxel is distinct: value(i, j, k) = scale * (1 + i + 10 j + 100 k) / 1000."""
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (scale * (1 + i + 10 * j + 100 * k) / 1000.0).astype(np.float64)


def write_series(
    folder: Path,
    values: np.ndarray,
    *,
    modality: str = "PT",
    units: str = "BQML",
    decay_correction: str | None = "START",
    corrected: tuple[str, ...] = ("DECY", "ATTN"),
    weight: float | None = 70.0,
    height: float | None = 1.75,
    sex: str | None = "M",
    dose: float | None = 370e6,
    half_life: float | None = 6586.2,
    date: str = "20240105",
    series_time: str = "120000",
    acquisition_time: str | None = None,
    injection_time: str | None = "110000",
    injection_datetime: str | None = None,
    spacing: tuple[float, float, float] = (2.0, 3.0, 4.0),  # (column spacing, row spacing, slice gap)
    origin: tuple[float, float, float] = (-100.0, -120.0, -300.0),
    row_dir: tuple[float, float, float] = (1.0, 0.0, 0.0),
    col_dir: tuple[float, float, float] = (0.0, 1.0, 0.0),
    per_slice_slope: bool = True,
    tilt_shift_mm: float = 0.0,  # in-plane shift of each next slice along col_dir (gantry tilt)
    gantry_tilt_tag: float | None = None,
    philips_suv_factor: float | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    seed: int = 0,
) -> Written:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    values = np.asarray(values, dtype=np.float64)
    n_i, n_j, n_k = values.shape
    row = np.asarray(row_dir, float)
    col = np.asarray(col_dir, float)
    normal = np.cross(row, col)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    expected = np.zeros(values.shape, np.float32)
    positions = np.zeros((n_k, 3))
    files = []
    order = list(range(n_k))
    rng.shuffle(order)
    global_slope = max(float(np.abs(values).max()) / 30000.0, 1e-6)
    for k in order:
        plane = values[:, :, k]
        slope = max(float(np.abs(plane).max()) / 30000.0, 1e-6) if per_slice_slope else global_slope
        stored = np.round(plane / slope).astype(np.int16)
        expected[:, :, k] = stored.astype(np.float32) * np.float32(slope)
        pos = np.asarray(origin) + normal * spacing[2] * k + col * tilt_shift_mm * k
        positions[k] = pos
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sop_class = PET_SOP if modality == "PT" else CT_SOP
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.PatientName = "Synthetic^Patient"
        ds.PatientID = "SYN001"
        ds.PatientBirthDate = "19700101"
        ds.StudyDate = date
        ds.StudyTime = series_time
        ds.StudyID = "1"
        ds.AccessionNumber = "A1"
        ds.ReferringPhysicianName = "Ref^Doc"
        ds.Manufacturer = "Philips" if philips_suv_factor else "SYNTH"
        ds.SeriesNumber = 3
        ds.SeriesDescription = f"synthetic {modality}"
        ds.SeriesDate = date
        ds.SeriesTime = series_time
        ds.AcquisitionDate = date
        ds.AcquisitionTime = acquisition_time or series_time
        ds.InstanceNumber = n_k - k  # reversed on purpose
        if sex is not None:
            ds.PatientSex = sex
        if weight is not None:
            ds.PatientWeight = weight
        if height is not None:
            ds.PatientSize = height
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows = n_j
        ds.Columns = n_i
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = 0
        # the file holds the exact slope string; recompute expected from it
        slope_exact = float(ds.RescaleSlope)
        expected[:, :, k] = stored.astype(np.float32) * np.float32(slope_exact)
        if gantry_tilt_tag is not None:
            ds.GantryDetectorTilt = gantry_tilt_tag
        if modality == "PT":
            ds.Units = units
            if decay_correction is not None:
                ds.DecayCorrection = decay_correction
            ds.CorrectedImage = list(corrected)
            rp = Dataset()
            rp.Radiopharmaceutical = "Fluorodeoxyglucose"
            if dose is not None:
                rp.RadionuclideTotalDose = dose
            if half_life is not None:
                rp.RadionuclideHalfLife = half_life
            if injection_time is not None:
                rp.RadiopharmaceuticalStartTime = injection_time
            if injection_datetime is not None:
                rp.RadiopharmaceuticalStartDateTime = injection_datetime
            ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
            if philips_suv_factor is not None:
                ds.add_new((0x7053, 0x0010), "LO", "Philips PET Private Group")
                ds.add_new((0x7053, 0x1000), "DS", f"{philips_suv_factor:.10g}")
        # pixel rows = j, columns = i
        ds.PixelData = np.ascontiguousarray(stored.T).tobytes()
        name = folder / f"{rng.getrandbits(40):010x}.dcm"
        ds.save_as(name, enforce_file_format=True)
        files.append(name)
    return Written(expected, files, series_uid, positions, row, col, (spacing[1], spacing[0]))


def expected_ras_affine(w: Written) -> np.ndarray:
    """RAS affine a correct reader must return, built from the written tags independently."""
    normal = np.cross(w.row_dir, w.col_dir)
    k_step = (w.positions[-1] - w.positions[0]) / max(len(w.positions) - 1, 1)
    lps = np.eye(4)
    lps[:3, 0] = w.row_dir * w.pixel_spacing[1]
    lps[:3, 1] = w.col_dir * w.pixel_spacing[0]
    lps[:3, 2] = k_step if len(w.positions) > 1 else normal
    lps[:3, 3] = w.positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
