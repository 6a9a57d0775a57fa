"""`clipnodule predict`: score one nodule and write result.json, result.csv and planes.png."""

from __future__ import annotations

import argparse
import logging

from ..devices import DEVICE_CHOICES
from .nodule_input import add_nodule_arguments, prepare_output_dir, resolve_nodule_arguments

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `predict` subcommand."""
    parser = subparsers.add_parser(
        "predict",
        help="score one nodule: calibrated risk, per-fold values, attention, zero-shot report",
        description="Score the nodule at --point and write result.json, result.csv and planes.png.",
    )
    add_nodule_arguments(parser)
    parser.add_argument("--bundle", help="model bundle folder (default: the shipped demo model)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="torch device (default: auto)")
    parser.add_argument("--pid", help="patient id written to result.csv (never sent anywhere)")
    parser.add_argument("--nodule-id", help="nodule id written to result.csv")
    parser.add_argument("--output", required=True, help="folder for result.json, result.csv and planes.png")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `clipnodule predict`."""
    from ..coordinates import to_lps
    from ..image_io import load_ct
    from ..outputs import write_result_files
    from ..predictor import Predictor, input_checksum
    from ..preprocess import extract_planes

    # Read the CT and cut the planes before the model loads, so that a wrong path, image
    # or point fails within a second. load_ct runs the CT checks and extract_planes the
    # point check, so the predictor gets planes and repeats neither.
    image_path, point, system = resolve_nodule_arguments(args)
    output = prepare_output_dir(args.output)
    nodule = extract_planes(load_ct(image_path), to_lps(point, system))

    predictor = Predictor.from_bundle(args.bundle, device=args.device)
    result = predictor.predict_planes([nodule], pids=[args.pid], nodule_ids=[args.nodule_id])[0]
    result.image_path = image_path
    result.input_sha256 = input_checksum(image_path)
    write_result_files(result, output)

    calibration = "calibrated" if result.calibrated else "uncalibrated"
    print(f"{calibration} risk {result.risk:.4f} ({result.model_name} {result.model_version}, "
          f"{len(result.folds)} folds, {result.device}, {result.run_time_s:.2f} s); results in {args.output}")
    return 0
