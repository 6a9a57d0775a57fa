"""Command-line options shared by the commands that take one CT and one nodule point.

`--image PATH --point X Y Z [--coordinate-system LPS|RAS]`, or `--example` for the
bundled example CT with the nodule centre taken from its label.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..coordinates import CoordinateSystem
from ..errors import InputError

logger = logging.getLogger(__name__)


def add_nodule_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the image, point and coordinate-system options to `parser`."""
    parser.add_argument("--image", help="CT file (NIfTI, NRRD, MHA/MHD) or DICOM series folder, in HU")
    parser.add_argument(
        "--point", nargs=3, type=float, metavar=("X", "Y", "Z"),
        help="nodule centre in mm, in the system given by --coordinate-system",
    )
    parser.add_argument(
        "--coordinate-system", default="LPS", type=str.upper, choices=[system.value for system in CoordinateSystem],
        help="system of --point: LPS (ITK, DICOM, published CSV; default) or RAS (3D Slicer markups)",
    )
    parser.add_argument(
        "--example", action="store_true",
        help="use the example chest CT (fetched once through pip) and its labelled nodule centre",
    )


def resolve_nodule_arguments(args: argparse.Namespace) -> tuple[str, list[float], str]:
    """Return (image path, point, coordinate system) from the parsed options."""
    if args.example:
        from ..example_data import fetch_example_ct

        if args.image or args.point:
            raise InputError("--example cannot be combined with --image or --point; use one or the other.")
        example = fetch_example_ct()
        return str(example.image_path), list(example.nodule_center_lps), "LPS"

    if not args.image and args.point is None:
        raise InputError("Give --image PATH and --point X Y Z (or --example for the bundled example CT).")
    if not args.image:
        raise InputError("--image is missing: give the CT file or DICOM folder of the point (or use --example).")
    if args.point is None:
        raise InputError("--point X Y Z is missing: give the nodule centre in mm (or use --example).")
    return args.image, list(args.point), args.coordinate_system


def prepare_output_dir(path: str) -> Path:
    """Create the --output folder before any slow work, so a bad path fails at once."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--output {path} is an existing file; give the path of a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"Cannot create the output folder {path}: {error.strerror}; choose another --output.") from None
    return folder
