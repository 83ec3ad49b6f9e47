"""``seganypet convert INPUT -o OUT.nii.gz``: read a PET (DICOM folder/zip/file, NIfTI, MHA/NRRD, ECAT7),
convert it to SUV and write it as float32 NIfTI; prints one summary line."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from seganypet.errors import InputError

HELP = "convert a PET (DICOM series, NIfTI, MHA/NRRD) to an SUV NIfTI"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="DICOM folder, .zip, DICOM file, .nii/.nii.gz, .mha/.nrrd or .v file")
    parser.add_argument("-o", "--output", required=True, help="output .nii.gz (or .nii) file")
    parser.add_argument(
        "--suv",
        default="bw",
        choices=["bw", "lbm", "bsa", "none"],
        help="SUV by body weight (default), lean body mass (SUL, Janmahasatian), body surface area, "
        "or none (keep Bq/mL or the stored units)",
    )
    parser.add_argument("--weight", type=float, metavar="KG", help="patient weight in kg (overrides the tag)")
    parser.add_argument(
        "--height", type=float, metavar="M", help="patient height in metres (overrides the tag)"
    )
    parser.add_argument("--sex", choices=["M", "F", "m", "f"], help="patient sex (for SUL)")
    parser.add_argument(
        "--dose",
        type=float,
        metavar="MBQ",
        help="injected dose in MBq at the injection time (overrides the tag)",
    )
    parser.add_argument(
        "--injection-time",
        metavar="TIME",
        help="injection time HH:MM[:SS] (scan date) or 'YYYY-MM-DD HH:MM:SS'",
    )
    parser.add_argument("--half-life", type=float, metavar="S", help="radionuclide half-life in seconds")
    parser.add_argument(
        "--series-uid", metavar="UID", help="SeriesInstanceUID to read when a folder has several"
    )
    parser.add_argument(
        "--units",
        metavar="UNITS",
        help="what a NIfTI/MHA input holds: SUVbw (assumed), SUVlbm, SUVbsa or Bq/mL",
    )
    parser.add_argument(
        "--nan",
        default="error",
        choices=["error", "zero"],
        help="NaN/Inf voxels: refuse the input (default) or replace them with 0",
    )


def run(args: argparse.Namespace) -> int:
    from seganypet.io import read_pet, write_image

    out = Path(args.output)
    if not out.name.lower().endswith((".nii.gz", ".nii")):
        raise InputError(f"the output {out} must be a .nii.gz or .nii file")
    if out.exists() and out.is_dir():
        raise InputError(f"the output {out} is a folder; give a file name ending in .nii.gz")
    if args.dose is not None and args.dose <= 0:
        raise InputError(f"--dose must be positive (MBq), not {args.dose:g}")
    image = read_pet(
        args.input,
        suv=args.suv,
        weight=args.weight,
        height=args.height,
        sex=args.sex.upper() if args.sex else None,
        dose=args.dose * 1e6 if args.dose is not None else None,
        injection_time=args.injection_time,
        half_life=args.half_life,
        series_uid=args.series_uid,
        units=args.units,
        nan_policy=args.nan,
    )
    write_image(image, out)
    sp = "x".join(f"{s:.4g}" for s in image.spacing)
    vmax = float(np.max(image.array))
    label = "SUVmax" if image.is_suv else "max"
    warn = image.metadata.get("warnings") or []
    print(
        f"wrote {out}: shape {'x'.join(map(str, image.shape))}, spacing {sp} mm, units {image.units}, "
        f"{label} {vmax:.4g}" + (f" ({len(warn)} warning{'s' if len(warn) != 1 else ''})" if warn else "")
    )
    return 0
