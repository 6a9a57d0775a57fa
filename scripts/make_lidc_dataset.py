"""Write the data set CSV (published columns plus semantic features) for a folder of LIDC nodule volumes.

Thin wrapper around `clipnodule.training.lidc.lidc_dataset_table`; needs the clipnodule
package and pandas only (no torch, Qt or Slicer).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clipnodule.errors import CLIPNoduleError
from clipnodule.training.lidc import lidc_dataset_table

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LIDC_DIR = REPOSITORY_ROOT.parent / "shared" / "data" / "lidc-voi"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of this script."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lidc-dir",
        type=Path,
        default=DEFAULT_LIDC_DIR,
        help="folder with metadata.csv and images/<patient>_R_<nodule>.nii.gz (default: %(default)s)",
    )
    parser.add_argument("--output", type=Path, required=True, help="CSV file to write")
    parser.add_argument(
        "--relative-paths",
        action="store_true",
        help="write image_path relative to the output CSV's folder instead of absolute",
    )
    parser.add_argument(
        "--keep-indeterminate",
        action="store_true",
        help="keep nodules with malignancy rating 3, with an empty malignant label (default: leave them out)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the LIDC data set CSV and return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    output = args.output.expanduser().resolve()
    try:
        table = lidc_dataset_table(
            args.lidc_dir,
            keep_indeterminate=args.keep_indeterminate,
            relative_to=output.parent if args.relative_paths else None,
        )
    except CLIPNoduleError as error:
        print(f"make_lidc_dataset: error: {error}", file=sys.stderr)
        return 2

    output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    print(f"Wrote {len(table)} nodules of {table['pid'].nunique()} patients to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
