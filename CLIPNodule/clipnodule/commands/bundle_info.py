"""`clipnodule bundle-info`: verify a model bundle's checksums and describe it."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bundle-info` subcommand."""
    parser = subparsers.add_parser("bundle-info", help="verify a model bundle and print its manifest summary")
    parser.add_argument("--bundle", help="model bundle folder (default: the shipped demo model)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `clipnodule bundle-info`."""
    from ..bundle import describe_bundle
    from ..predictor import default_bundle_path

    print(describe_bundle(args.bundle or default_bundle_path()))
    return 0
