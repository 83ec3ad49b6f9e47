"""``seganypet phantom``: write synthetic PET phantoms with ground truth."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from seganypet.errors import InputError

HELP = "make synthetic whole-body PET phantoms (PET in SUV, organ + lesion labels, truth, optional DICOM)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed (default 0); same seed, same phantom"
    )
    parser.add_argument(
        "-n",
        "--number",
        type=int,
        default=1,
        help="make N phantoms with seeds SEED..SEED+N-1, each in OUTPUT/phantom_<seed>",
    )
    parser.add_argument(
        "--kind",
        choices=["torso", "wholebody"],
        default="torso",
        help="torso (lower thorax to hips) or wholebody (mid-thigh to vertex)",
    )
    parser.add_argument(
        "--tracer", choices=["fdg", "psma"], default="fdg", help="uptake profile (default fdg)"
    )
    parser.add_argument("--spacing", type=float, default=3.0, help="isotropic voxel size in mm (default 3)")
    parser.add_argument(
        "--counts",
        type=float,
        default=None,
        help="true coincidences per mm of axial length (default: 2e5 varied per subject; lower = noisier)",
    )
    parser.add_argument("--lesions", type=int, default=None, help="number of lesions (default: random 1-15)")
    parser.add_argument("--iterations", type=int, default=3, help="OSEM iterations (default 3)")
    parser.add_argument("--subsets", type=int, default=24, help="OSEM subsets (default 24)")
    parser.add_argument(
        "--anatomy",
        default=None,
        help="folder with organs.nii.gz and ct.nii.gz, or 'builtin' for the built-in parametric torso "
        "(default: $SEGANYPET_ANATOMY, else ../shared/data/anatomy when found, else builtin)",
    )
    parser.add_argument(
        "--dicom", action="store_true", help="also write the PET as a DICOM PT series (Bq/mL)"
    )


def run(args: argparse.Namespace) -> int:
    from seganypet.phantoms import make_phantom, save_phantom

    if args.number < 1:
        raise InputError(f"--number must be at least 1, got {args.number}")
    if args.iterations < 1 or args.subsets < 1:
        raise InputError("--iterations and --subsets must be at least 1")
    for n in range(args.number):
        seed = args.seed + n
        out = args.output if args.number == 1 else args.output / f"phantom_{seed:05d}"
        t0 = time.perf_counter()
        ph = make_phantom(
            seed,
            kind=args.kind,
            tracer=args.tracer,
            spacing=args.spacing,
            anatomy=args.anatomy,
            counts=args.counts,
            n_lesions=args.lesions,
            iterations=args.iterations,
            subsets=args.subsets,
        )
        written = save_phantom(ph, out, dicom=args.dicom)
        organs = sum(1 for v in ph.label_info.values() if v["kind"] == "organ")
        lesions = len(ph.label_info) - organs
        shape = "x".join(map(str, ph.pet.shape))
        print(
            f"phantom seed {seed} ({args.kind}, {args.tracer.upper()}): {shape} voxels "
            f"at {args.spacing:g} mm, "
            f"{organs} organs, {lesions} lesions, {time.perf_counter() - t0:.1f} s -> {out}"
        )
        print("  wrote " + ", ".join(sorted(p.name for p in written.values())))
    return 0
