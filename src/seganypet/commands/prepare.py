"""``seganypet prepare``: datasets -> training store."""

from __future__ import annotations

import argparse

HELP = "Turn datasets (nnU-Net raw, autoPET, image/label pairs, phantoms, ibsi-sts) into a training store."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", help="dataset folder(s)")
    parser.add_argument(
        "-o", "--out", required=True, help="store folder (finished cases are kept and skipped)"
    )
    parser.add_argument(
        "--layout", default="auto", choices=["auto", "nnunet", "autopet", "pairs", "phantoms", "ibsi-sts"]
    )
    parser.add_argument("--prefix", default="", help="prefix for the case ids of these sources")
    parser.add_argument(
        "--kind",
        default="organ",
        choices=["organ", "lesion"],
        help="object kind for layouts that do not name it (pairs)",
    )
    parser.add_argument(
        "--val",
        action="append",
        default=[],
        metavar="PATTERN",
        help="case ids (fnmatch pattern, repeatable) that form the validation split",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="without --val: this fraction of cases (fixed by a hash of the id) is validation",
    )


def run(args: argparse.Namespace) -> int:
    from seganypet.training.prepare import prepare

    res = prepare(
        args.sources,
        args.out,
        layout=args.layout,
        prefix=args.prefix,
        kind=args.kind,
        val=args.val,
        val_fraction=args.val_fraction,
    )
    m = res["manifest"]
    n_obj = sum(len(c["objects"]) for c in m["cases"].values())
    print(
        f"{args.out}: {len(res['prepared'])} case(s) prepared, {len(res['skipped'])} already done; "
        f"store holds {len(m['cases'])} cases ({len(m['split']['train'])} train, "
        f"{len(m['split']['val'])} val), "
        f"{n_obj} objects"
    )
    return 0
