"""``seganypet evaluate``: compare models and baselines under a simulated-user click protocol."""

from __future__ import annotations

import argparse
import sys

HELP = "Evaluate models and baselines with simulated clicks (Dice, NSD, HD95, autoPET measures)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="DIR_OR_MANIFEST",
        help="dataset folder(s) (nnU-Net raw, autoPET, phantoms, ibsi-sts, images/+labels/) or "
        "manifest .json/.csv; images must be in SUV",
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME|PATH",
        help="model to evaluate; repeat to compare side by side. 'default', a checkpoint path, or a "
        "baseline: threshold-2.5, threshold-41, percist",
    )
    parser.add_argument(
        "--protocol",
        choices=("sammed3d", "autopet"),
        default="sammed3d",
        help="simulated user: SAM-Med3D (each object alone, corrective clicks) or autoPET IV "
        "(pre-simulated tumour + background clicks, steps 0..N, AUC) (default sammed3d)",
    )
    parser.add_argument(
        "--clicks",
        type=int,
        default=None,
        help="clicks per object (sammed3d, default 5) or click budget (autopet, default 10: steps 0..10)",
    )
    parser.add_argument(
        "--labels", default="all", help="objects to evaluate: all, organs, lesions, or label ids like 1,4"
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated user (default 0)")
    parser.add_argument("--cases", nargs="+", metavar="PATTERN", help="case ids to keep (shell patterns)")
    parser.add_argument(
        "--click-mode",
        choices=("random", "center"),
        default="random",
        help="sammed3d corrective clicks: uniform in the error region (SAM-Med3D) or at the centre "
        "of the largest error component",
    )
    parser.add_argument(
        "--nsd-tolerance", type=float, default=5.0, metavar="MM", help="NSD tolerance in mm (5)"
    )
    parser.add_argument(
        "--radius", type=float, default=None, metavar="MM", help="baselines' local-max radius in mm (20)"
    )
    parser.add_argument("--device", default="cpu", help="torch device of the models (cpu, cuda)")
    parser.add_argument("--overlays", type=int, default=3, help="number of cases with an overlay figure (3)")
    parser.add_argument(
        "--large-objects",
        nargs="+",
        choices=("extend", "zoom", "zoom-coarse", "none"),
        default=["extend"],
        help="strategies for objects larger than one crop; models are evaluated with each, named "
        "e.g. default+zoom (default: extend)",
    )


def run(args: argparse.Namespace) -> int:
    from seganypet.evaluation.runner import EvalConfig, evaluate

    clicks = args.clicks if args.clicks is not None else (10 if args.protocol == "autopet" else 5)
    cfg = EvalConfig(
        protocol=args.protocol,
        clicks=clicks,
        labels=args.labels,
        seed=args.seed,
        click_mode=args.click_mode,
        tolerance_mm=args.nsd_tolerance,
    )
    result = evaluate(
        args.data,
        args.model,
        args.output,
        cfg,
        cases=args.cases,
        device=args.device,
        radius_mm=args.radius,
        overlays=max(0, args.overlays),
        large_objects=args.large_objects,
    )
    summary = result["files"]["summary.md"]
    print(summary.read_text(), file=sys.stdout)
    print(f"wrote {len(result['files'])} files to {args.output}", file=sys.stderr)
    return 0
