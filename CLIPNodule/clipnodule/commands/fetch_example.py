"""`clipnodule fetch-example`: download and cache the example chest CT through pip."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `fetch-example` subcommand."""
    parser = subparsers.add_parser(
        "fetch-example",
        help="fetch the example chest CT (pyradiomics 3.0.1 source archive) and print its nodule centre",
    )
    parser.add_argument("--cache-dir", help="folder for the CT and label (default: ~/.cache/clipnodule/example-lung1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `clipnodule fetch-example`."""
    from ..example_data import fetch_example_ct

    example = fetch_example_ct(args.cache_dir)
    x, y, z = example.nodule_center_lps
    print(f"image: {example.image_path}")
    print(f"label: {example.label_path}")
    print(f"nodule centre (LPS mm): {x:.2f} {y:.2f} {z:.2f}")
    return 0
