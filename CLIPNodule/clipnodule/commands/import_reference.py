"""`clipnodule import-reference`: convert the authors' published CLIP_nodule checkpoints into a bundle.

Reads weights with torch.load(weights_only=True); reads the calibrator pickles only with
`--calibrators trusted`, through an unpickler restricted to betacal, scikit-learn and numpy.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `import-reference` subcommand."""
    parser = subparsers.add_parser(
        "import-reference",
        help="convert the published CLIP_nodule checkpoints (args.txt, fold_<k>/best_both.pt) into a bundle",
        description=(
            "Convert the authors' checkpoint folder (args.txt and fold_<k>/best_both.pt, optionally "
            "fold_<k>/cal_<k>.pkl) into a model bundle. Calibrator pickles are read only with "
            "--calibrators trusted."
        ),
    )
    parser.add_argument("--checkpoint-dir", required=True, help="folder with args.txt and fold_<k>/best_both.pt")
    parser.add_argument("--output", required=True, help="new bundle folder to write")
    parser.add_argument(
        "--calibrators",
        choices=("skip", "trusted"),
        default="skip",
        help=(
            "skip: import without calibration (default); trusted: read fold_<k>/cal_<k>.pkl with a "
            "restricted unpickler (only for files from a source you trust)"
        ),
    )
    parser.add_argument("--name", default="clip-nodule-published", help="bundle name in the manifest")
    parser.add_argument("--version", dest="bundle_version", default="1.0", help="bundle version in the manifest")
    parser.add_argument("--overwrite", action="store_true", help="replace the bundle files in a non-empty --output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `clipnodule import-reference`."""
    from ..reference_import import convert_reference_checkpoints, write_reference_bundle

    trusted = args.calibrators == "trusted"
    imported = convert_reference_checkpoints(args.checkpoint_dir, trust_calibrators=trusted)
    path = write_reference_bundle(
        imported, args.output, name=args.name, version=args.bundle_version, overwrite=args.overwrite
    )

    calibration = "with Beta calibration" if trusted else "without calibration (pass --calibrators trusted to import it)"
    print(
        f"Imported {len(imported.folds)} folds (backbone {imported.config.backbone}, tuning "
        f"{imported.config.tuning}) {calibration} into {path}"
    )
    return 0
