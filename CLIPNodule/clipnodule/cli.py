"""The `clipnodule` command line: one subcommand per job.

Each subcommand lives in `clipnodule.commands.<name>` with `register(subparsers)`.
Errors of the library print as one line on stderr (exit status 2) unless --debug is
given; no Qt or Slicer imports.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from . import __version__
from .errors import CLIPNoduleError

COMMAND_MODULES = (
    "predict",
    "planes",
    "fetch_example",
    "predict_cohort",
    "evaluate",
    "text",
    "train",
    "import_reference",
    "bundle_info",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="clipnodule",
        description="Lung-nodule malignancy risk from chest CT with a CLIP vision-language model.",
    )
    parser.add_argument("--version", action="version", version=f"clipnodule {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug log lines")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"clipnodule.commands.{name}")
        except ModuleNotFoundError as error:
            # A command whose optional dependency is missing is left out, not fatal.
            if error.name and error.name.startswith("clipnodule.commands"):
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)

    level = logging.INFO
    if args.quiet:
        level = logging.WARNING
    if args.debug:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    try:
        return int(args.func(args) or 0)
    except CLIPNoduleError as error:
        if args.debug:
            raise
        print(f"clipnodule {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError) as error:
        if args.debug:
            raise
        print(f"clipnodule {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipnodule {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
