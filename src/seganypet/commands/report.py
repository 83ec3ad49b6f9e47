"""``seganypet report``: MIP picture with object contours and a table, plus an optional HTML page."""

from __future__ import annotations

import argparse

from seganypet.commands.stats import add_read_options
from seganypet.errors import InputError

HELP = "coronal/sagittal MIPs of the PET with each object's contour and a statistics table (PNG, HTML)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--image", required=True, help="PET image (NIfTI, MHA/NRRD, DICOM folder/zip)")
    parser.add_argument(
        "-m", "--labels", required=True, help="label map on the PET's grid (NIfTI; names from <stem>.json)"
    )
    parser.add_argument("-o", "--output", required=True, metavar="PNG", help="report picture (.png)")
    parser.add_argument("--html", metavar="HTML", help="also write a self-contained HTML page")
    parser.add_argument(
        "--suv-max", type=float, default=None, help="display window 0..N in image units (default 5 for SUV)"
    )
    parser.add_argument("--components", action="store_true", help="table rows per connected component")
    parser.add_argument("--title", help="heading (default: the PET file name)")
    add_read_options(parser)


def run(args: argparse.Namespace) -> int:
    from seganypet.commands.stats import load_inputs
    from seganypet.quant import compute_stats
    from seganypet.report import write_report

    if not str(args.output).lower().endswith(".png"):
        raise InputError(f"the report picture {args.output} must end in .png")
    if args.suv_max is not None and not args.suv_max > 0:
        raise InputError(f"--suv-max must be positive, got {args.suv_max}")
    image, labels, names, kinds = load_inputs(args)
    stats = compute_stats(image, labels, names, components=args.components, kinds=kinds)
    write_report(image, labels, names, args.output, html=args.html, suv_max=args.suv_max, stats=stats,
                 title=args.title)  # fmt: skip
    print(f"report written to {args.output}" + (f" and {args.html}" if args.html else ""))
    return 0
