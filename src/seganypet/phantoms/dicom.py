"""Write a phantom's PET as a DICOM PET Image Storage series (one file per axial slice).

The pixel values are activity concentration in Bq/mL (``Units`` BQML, ``CorrectedImage`` includes DECY
and ATTN, ``DecayCorrection`` START) with the tags the QIBA SUV recipe needs: ``PatientWeight``,
``RadiopharmaceuticalInformationSequence`` (``RadionuclideTotalDose``, ``RadionuclideHalfLife``,
``RadiopharmaceuticalStartTime`` and ``...StartDateTime``), ``SeriesDate/Time`` and
``AcquisitionDate/Time``. So ``SUVbw = C * weight_g / (dose * 2^(-(t_series - t_injection) / T_half))``
gives back the phantom's SUV (up to the int16 quantisation with a per-slice ``RescaleSlope``).

Geometry: the standard orientation (``ImageOrientationPatient`` 1\\0\\0\\0\\1\\0): DICOM column index runs
towards the patient's left, row index towards posterior, slices ascend towards the head. The PET's
RAS array ``(i, j, k)`` is therefore flipped along ``i`` and ``j`` into each slice's pixel matrix.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np

from seganypet.image import PETImage
from seganypet.utils import atomic_path

PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
_LPS = np.array([-1.0, -1.0, 1.0])
_NUCLIDE_CODE = {
    "fdg": ("C-111A1", "^18^Fluorine", "C-B1031", "Fluorodeoxyglucose F^18^"),
    "psma": ("C-131A3", "^68^Gallium", "126513", "Ga-68 PSMA-11"),
}


def _time(t: dt.datetime) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def write_pet_dicom(pet: PETImage, out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write ``pet`` (SUVbw, with ``metadata`` patient_weight_kg, injected_dose_bq, half_life_s,
    uptake_time_s, tracer) as a PT series into the folder ``out_dir`` (replaced atomically).

    UIDs and dates are derived from ``seed`` so the same phantom gives the same files.

    Returns:
        The folder written.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    md = pet.metadata
    weight = float(md["patient_weight_kg"])
    dose = float(md["injected_dose_bq"])
    half_life = float(md["half_life_s"])
    uptake = float(md.get("uptake_time_s", 3600.0))
    tracer = str(md.get("tracer", "fdg"))
    code = _NUCLIDE_CODE.get(tracer, _NUCLIDE_CODE["fdg"])

    rng = np.random.default_rng([int(seed), 511])
    study_day = dt.datetime(2025, 1, 6) + dt.timedelta(days=int(rng.integers(0, 360)))
    injection = study_day + dt.timedelta(
        hours=8, minutes=int(rng.integers(0, 240)), seconds=int(rng.integers(60))
    )
    series_start = injection + dt.timedelta(seconds=uptake)
    decayed_dose = dose * 2.0 ** (-uptake / half_life)
    bqml = pet.array.astype(np.float64) * decayed_dose / (weight * 1000.0)

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=["seganypet-phantom", str(seed), *map(str, parts)])

    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    a = pet.affine
    nx, ny, nz = pet.shape
    sp = np.linalg.norm(a[:3, :3], axis=0)
    row_dir = _LPS * (-a[:3, 0]) / sp[0]  # DICOM column index c <-> i = nx - 1 - c
    col_dir = _LPS * (-a[:3, 1]) / sp[1]  # DICOM row index r <-> j = ny - 1 - r
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for k in range(nz):
            sl = bqml[::-1, ::-1, k].T  # (rows = j flipped, columns = i flipped)
            vmax = float(sl.max())
            slope = vmax / 32000.0 if vmax > 0 else 1.0
            pix = np.clip(np.round(sl / slope), -32768, 32767).astype(np.int16)
            pos = _LPS * (a[:3, :3] @ np.array([nx - 1, ny - 1, k], dtype=np.float64) + a[:3, 3])
            sop_uid = uid("sop", k)

            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = PET_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = generate_uid(entropy_srcs=["seganypet"])
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = PET_IMAGE_STORAGE
            ds.SOPInstanceUID = sop_uid
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.Modality = "PT"
            ds.Manufacturer = "seganypet phantom"
            ds.ManufacturerModelName = "synthetic 2D OSEM"
            ds.PatientName = f"Phantom^{seed}"
            ds.PatientID = f"PHANTOM-{seed}"
            ds.PatientBirthDate = ""
            ds.PatientSex = str(md.get("patient_sex", "O"))[:1]
            ds.PatientWeight = f"{weight:.1f}"
            if md.get("patient_height_m"):
                ds.PatientSize = f"{float(md['patient_height_m']):.2f}"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            ds.StudyID = str(seed)
            ds.AccessionNumber = ""
            ds.ReferringPhysicianName = ""
            ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_day.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _time(series_start)
            ds.SeriesNumber = 1
            ds.InstanceNumber = k + 1
            ds.ImageIndex = k + 1
            ds.SeriesDescription = f"synthetic {tracer.upper()} PET phantom (seed {seed})"
            ds.Units = "BQML"
            ds.CountsSource = "EMISSION"
            ds.SeriesType = ["WHOLE BODY", "IMAGE"]
            ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "RAN", "DTIM", "NORM"]
            ds.DecayCorrection = "START"
            ds.DecayFactor = "1.0"
            ds.RandomsCorrectionMethod = "DLYD"
            ds.ReconstructionMethod = "OSEM 2D PSF"
            ds.NumberOfSlices = nz
            ds.FrameReferenceTime = "0"
            ds.ActualFrameDuration = 120000
            ds.PatientOrientation = ""
            ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = [f"{sp[1]:.4f}", f"{sp[0]:.4f}"]  # row spacing (between rows), column spacing
            ds.SliceThickness = f"{sp[2]:.4f}"
            ds.SliceLocation = f"{pos[2]:.4f}"
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = pix.shape
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleSlope = f"{slope:.8g}"
            ds.RescaleIntercept = "0"
            ds.RescaleType = "BQML"
            nuclide = Dataset()
            nuclide.CodeValue, nuclide.CodingSchemeDesignator, nuclide.CodeMeaning = code[0], "SRT", code[1]
            pharm = Dataset()
            pharm.CodeValue, pharm.CodingSchemeDesignator, pharm.CodeMeaning = code[2], "SRT", code[3]
            rp = Dataset()
            rp.Radiopharmaceutical = str(md.get("radiopharmaceutical", code[3]))
            rp.RadiopharmaceuticalStartTime = _time(injection)
            rp.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d") + _time(injection)
            rp.RadionuclideTotalDose = f"{dose:.6g}"
            rp.RadionuclideHalfLife = f"{half_life:.6g}"
            rp.RadionuclidePositronFraction = "0.9686" if tracer == "fdg" else "0.8911"
            rp.RadionuclideCodeSequence = Sequence([nuclide])
            rp.RadiopharmaceuticalCodeSequence = Sequence([pharm])
            ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
            ds.PixelData = pix.tobytes()
            pydicom.dcmwrite(str(tmp / f"PT{k + 1:04d}.dcm"), ds, enforce_file_format=True)
    return out
