"""Command-line entry point: ``seganypet <command> ...``.

Each sub-command lives in ``seganypet.commands.<name>`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; ``run`` calls one typed Python function of the
library (TotalSegmentator style). Errors a user can cause (:class:`SegAnyPETError`) become one line
on stderr and exit status 2; nothing else is printed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from seganypet import __version__
from seganypet.errors import SegAnyPETError
from seganypet.utils import set_progress, tune_allocator

# name -> module under seganypet.commands (order = order in --help)
COMMANDS = [
    "demo",
    "convert",
    "segment",
    "stats",
    "report",
    "phantom",
    "prepare",
    "train",
    "evaluate",
    "serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seganypet",
        description="Promptable 3D segmentation of whole-body PET.",
    )
    parser.add_argument("--version", action="version", version=f"seganypet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("--no-progress", action="store_true", help="turn progress bars off")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"seganypet.commands.{name}")
        except ModuleNotFoundError as err:  # a command whose module is absent from this build
            if err.name != f"seganypet.commands.{name}":
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.no_progress:
        set_progress(False)
    tune_allocator()
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except SegAnyPETError as err:
        print(f"seganypet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seganypet: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: one line unless --debug
        if args.debug:
            raise
        print(
            f"seganypet {args.command}: internal error: {type(err).__name__}: {err} "
            "(run with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
