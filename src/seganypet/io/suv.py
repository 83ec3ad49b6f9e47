"""Standardised uptake values (SUV) following the QIBA/UPICT recipe.

The recipe (QIBA FDG-PET/CT profile, "SUV calculation" vendor-neutral pseudo-code):

- ``Units`` (0054,1001) ``BQML`` with ``CorrectedImage`` (0028,0051) containing ``DECY`` and
  ``DecayCorrection`` (0054,1102) ``START``: the image is activity concentration (Bq/mL) decay
  corrected to the scan start. The scan reference time is ``SeriesDate``/``SeriesTime`` unless it lies
  after the earliest ``AcquisitionDate``/``AcquisitionTime`` of the series (a post-processed series):
  then the GE private scan date-time (0009,100D) is used when present, else the earliest acquisition
  time (with a warning). The injected dose ``RadionuclideTotalDose`` (0018,1074) [Bq] is decayed from
  ``RadiopharmaceuticalStartDateTime`` (0018,1078) (or ``RadiopharmaceuticalStartTime`` (0018,1072)
  on the series date) to the scan reference time with ``RadionuclideHalfLife`` (0018,1075) [s]::

      decayed_dose = dose * 2 ** (-(t_scan - t_inj) / half_life)
      SUVbw = C [Bq/mL] * weight [g] / decayed_dose [Bq]

- ``DecayCorrection`` ``ADMIN``: already decay corrected to the administration time, no decay step.
- ``Units`` ``GML``: already SUVbw (g/mL); only the factor to SUL/SUVbsa is applied.
- ``Units`` ``CNTS``: Philips; the private SUV scale factor (7053,1000) gives SUVbw, the
  activity concentration scale factor (7053,1009) gives Bq/mL.

SUL (lean body mass, Janmahasatian 2005), height in m, weight in kg, BMI = weight / height^2::

    LBM_male   = 9270 * weight / (6680 + 216 * BMI)
    LBM_female = 9270 * weight / (8780 + 244 * BMI)
    SUVlbm = C * LBM [g] / decayed_dose

SUVbsa (body surface area, DuBois & DuBois, in cm^2)::

    BSA = 0.007184 * weight^0.425 * (100 * height)^0.725 [m^2];  SUVbsa = C * BSA [cm^2] / decayed_dose
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from seganypet.errors import SUVError

logger = logging.getLogger("seganypet.io.suv")

SUV_KINDS = ("bw", "lbm", "bsa", "none")
UNITS_OF_KIND = {"bw": "SUVbw", "lbm": "SUVlbm", "bsa": "SUVbsa"}
# flags named in error messages (CLI flag, Python option)
FLAG = {
    "weight": "--weight KG (weight= in Python)",
    "height": "--height M (height= in Python)",
    "sex": "--sex M|F (sex= in Python)",
    "dose": "--dose MBQ (dose= in Bq in Python)",
    "injection_time": "--injection-time HH:MM[:SS] (injection_time= in Python)",
    "half_life": "--half-life S (half_life= in Python)",
}


@dataclass
class Patient:
    """Patient and tracer facts for SUV; every value may come from tags or from the user.

    Units: weight kg, height m, dose Bq (injected, at injection time), half_life s.
    """

    weight: float | None = None
    height: float | None = None
    sex: str | None = None
    dose: float | None = None
    half_life: float | None = None
    injection: datetime | None = None
    tracer: str | None = None
    warnings: list[str] = field(default_factory=list)


def warn(warnings: list[str], message: str) -> None:
    """Log ``message`` as a warning and keep it in ``warnings`` (shown to the user)."""
    logger.warning(message)
    warnings.append(message)


def check_kind(suv: str) -> str:
    kind = str(suv).lower().replace("suv", "") or "bw"
    if kind not in SUV_KINDS:
        raise SUVError(f"unknown SUV kind {suv!r}; use one of bw, lbm, bsa, none")
    return kind


def normalise_sex(sex: Any) -> str | None:
    """'M'/'F' from DICOM PatientSex or user text ('male', 'f', ...); None when unknown ('O', '')."""
    if sex is None:
        return None
    s = str(sex).strip().upper()
    if s in ("M", "MALE"):
        return "M"
    if s in ("F", "FEMALE"):
        return "F"
    return None


def lean_body_mass_kg(weight: float, height: float, sex: str) -> float:
    """Janmahasatian lean body mass in kg; weight kg, height m, sex 'M'/'F'."""
    bmi = weight / (height * height)
    if sex == "M":
        return 9270.0 * weight / (6680.0 + 216.0 * bmi)
    return 9270.0 * weight / (8780.0 + 244.0 * bmi)


def body_surface_area_m2(weight: float, height: float) -> float:
    """DuBois body surface area in m^2; weight kg, height m."""
    return 0.007184 * weight**0.425 * (100.0 * height) ** 0.725


def check_patient(p: Patient, kind: str, need_dose: bool, dicom: bool = True) -> None:
    """Raise :class:`SUVError` naming the missing value; record warnings for suspicious ones.

    ``dicom=False`` (NIfTI/MHA input): messages say "the patient weight is unknown" instead of naming
    the DICOM tag.
    """
    if not dicom:
        for key, what in (("weight", "patient weight"), ("dose", "injected dose")):
            if getattr(p, key) is None and (key == "weight" or need_dose):
                raise SUVError(
                    f"the {what} is unknown (the file has no DICOM tags) and SUV needs it; "
                    f"give it with {FLAG[key]}"
                )
        if kind in ("lbm", "bsa") and p.height is None:
            raise SUVError(
                f"the patient height is unknown and SUV{kind} needs it; give it with {FLAG['height']}"
            )
        if kind == "lbm" and p.sex is None:
            raise SUVError(f"the patient sex is unknown and SUVlbm needs it; give it with {FLAG['sex']}")
    if p.weight is None:
        raise SUVError(f"PatientWeight (0010,1030) is missing; give it with {FLAG['weight']}")
    if not math.isfinite(p.weight) or p.weight < 0:
        raise SUVError(f"patient weight {p.weight} kg is not a valid weight; give it with {FLAG['weight']}")
    if p.weight == 0:
        raise SUVError(f"PatientWeight (0010,1030) is 0 kg; give the real weight with {FLAG['weight']}")
    if p.weight > 300 or p.weight < 2:
        warn(p.warnings, f"patient weight {p.weight:g} kg is implausible; check it or give --weight KG")
    if kind in ("lbm", "bsa"):
        if p.height is None:
            raise SUVError(
                f"PatientSize (0010,1020) (height) is missing and SUV{kind} needs it; "
                f"give it with {FLAG['height']}"
            )
        if p.height > 3.0 and p.height < 300:
            raise SUVError(
                f"patient height {p.height:g} looks like centimetres, but it must be in metres; "
                f"give it with {FLAG['height']}"
            )
        if not (0.3 <= p.height <= 3.0):
            raise SUVError(f"patient height {p.height:g} m is not plausible; give it with {FLAG['height']}")
    if kind == "lbm" and p.sex is None:
        raise SUVError(
            f"PatientSex (0010,0040) is missing or not M/F and SUVlbm needs it; give it with {FLAG['sex']}"
        )
    if need_dose:
        if p.dose is None:
            raise SUVError(
                f"RadionuclideTotalDose (0018,1074) is missing; give the injected dose with {FLAG['dose']}"
            )
        if not math.isfinite(p.dose) or p.dose < 0:
            raise SUVError(f"injected dose {p.dose} Bq is not valid; give it with {FLAG['dose']}")
        if p.dose == 0:
            raise SUVError(
                f"RadionuclideTotalDose (0018,1074) is 0 Bq; give the injected dose with {FLAG['dose']}"
            )
        if p.dose < 1e6 or p.dose > 5e10:
            warn(
                p.warnings,
                f"injected dose {p.dose:.4g} Bq ({p.dose / 1e6:.4g} MBq) is implausible; "
                "check it (--dose takes MBq)",
            )


def factor_from_activity(kind: str, p: Patient, decayed_dose: float) -> float:
    """Multiplier turning Bq/mL into SUV of ``kind`` (g/mL or cm^2/mL) given the decayed dose in Bq."""
    if kind == "bw":
        return p.weight * 1000.0 / decayed_dose  # type: ignore[operator]
    if kind == "lbm":
        return lean_body_mass_kg(p.weight, p.height, p.sex) * 1000.0 / decayed_dose  # type: ignore[arg-type]
    return body_surface_area_m2(p.weight, p.height) * 1e4 / decayed_dose  # type: ignore[arg-type]


def factor_from_suvbw(kind: str, p: Patient) -> float:
    """Multiplier turning SUVbw into SUV of ``kind`` (1 for bw); needs weight (+ height, sex)."""
    if kind == "bw":
        return 1.0
    if kind == "lbm":
        return lean_body_mass_kg(p.weight, p.height, p.sex) / p.weight  # type: ignore[arg-type,operator]
    return body_surface_area_m2(p.weight, p.height) * 1e4 / (p.weight * 1000.0)  # type: ignore[arg-type,operator]


def decay_factor(p: Patient, scan: datetime) -> float:
    """``2 ** (-(scan - injection) / half_life)``; raises :class:`SUVError` on missing/contradictory times."""
    if p.injection is None:
        raise SUVError(
            "RadiopharmaceuticalStartTime (0018,1072) / StartDateTime (0018,1078) is missing; "
            f"give the injection time with {FLAG['injection_time']}"
        )
    if p.half_life is None or not (p.half_life > 0):
        raise SUVError(
            f"RadionuclideHalfLife (0018,1075) is missing or not positive; give it with {FLAG['half_life']}"
        )
    dt = (scan - p.injection).total_seconds()
    if dt < 0:
        raise SUVError(
            f"the injection time {p.injection:%Y-%m-%d %H:%M:%S} (RadiopharmaceuticalStartTime (0018,1072)) "
            f"lies after the scan time {scan:%Y-%m-%d %H:%M:%S}; give the right one with "
            f"{FLAG['injection_time']}"
        )
    if dt < 60:
        warn(
            p.warnings,
            f"the injection time equals the scan time (only {dt:.3g} s apart), which is implausible "
            "(often an anonymisation artefact); SUV assumes no decay between them",
        )
    elif dt > 12 * 3600:
        warn(p.warnings, f"the injection was {dt / 3600:.3g} h before the scan; check the times")
    return 2.0 ** (-dt / p.half_life)


# --- DICOM date/time helpers -----------------------------------------------------------------


def parse_dicom_datetime(date: Any, time: Any) -> datetime | None:
    """DA + TM (e.g. '20200131', '101500.123') -> datetime; None when either is missing."""
    if not date or not time:
        return None
    d = str(date).strip()
    t = str(time).strip().replace(":", "")
    if not d or not t:
        return None
    try:
        base = datetime.strptime(d[:8], "%Y%m%d")
        hh = int(t[0:2])
        mm = int(t[2:4]) if len(t) >= 4 else 0
        ss = float(t[4:]) if len(t) > 4 else 0.0
    except ValueError:
        return None
    return base + timedelta(hours=hh, minutes=mm, seconds=ss)


def parse_dicom_dt(value: Any) -> datetime | None:
    """DICOM DT ('YYYYMMDDHHMMSS.FFFFFF&ZZXX') -> naive datetime (the offset is dropped)."""
    if not value:
        return None
    s = str(value).strip()
    for sign in ("+", "-"):
        if sign in s[8:]:
            s = s[: 8 + s[8:].index(sign)]
    if len(s) < 8:
        return None
    return parse_dicom_datetime(s[:8], s[8:] or "000000")


def parse_user_time(value: Any, scan_date: datetime | None) -> datetime:
    """User injection time: a datetime, 'YYYY-MM-DD HH:MM[:SS]', ISO, or 'HH:MM[:SS]' on the scan date."""
    if isinstance(value, datetime):
        return value
    s = str(value).strip()
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"):
        try:
            return datetime.strptime(s, fmt)
        except ValueError:
            pass
    for fmt in ("%H:%M:%S", "%H:%M", "%H%M%S"):
        try:
            t = datetime.strptime(s, fmt)
        except ValueError:
            continue
        if scan_date is None:
            raise SUVError(
                f"injection time {s!r} has no date and the series has none; give 'YYYY-MM-DD HH:MM:SS'"
            )
        return scan_date.replace(hour=t.hour, minute=t.minute, second=t.second, microsecond=0)
    raise SUVError(f"injection time {s!r} is not understood; use HH:MM[:SS] or 'YYYY-MM-DD HH:MM:SS'")
