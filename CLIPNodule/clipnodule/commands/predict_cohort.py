"""`clipnodule predict-cohort`: score every nodule of a data set CSV into nodules.csv, patients.csv and errors.csv.

Thin wrapper around `clipnodule.cohort.run_cohort`; no Qt or Slicer imports.
"""

from __future__ import annotations

import argparse
import logging

from ..devices import DEVICE_CHOICES

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `predict-cohort` subcommand."""
    parser = subparsers.add_parser(
        "predict-cohort",
        help="score every nodule of a data set CSV (headless cohort run, resumable)",
        description=(
            "Score every row of a data set CSV (pid, nodule_id, image_path, coordX, coordY, coordZ in "
            "LPS mm; malignant optional). Writes nodules.csv, patients.csv (maximum risk per patient), "
            "errors.csv (rows that failed and why) and run.json into --output. Rows already in "
            "nodules.csv are skipped on a rerun unless --recompute; failed rows are retried. "
            "Exit status 1 when some rows failed."
        ),
    )
    parser.add_argument("--dataset", required=True, help="data set CSV; relative image paths are resolved against its folder")
    parser.add_argument("--output", required=True, help="folder for nodules.csv, patients.csv, errors.csv and run.json")
    parser.add_argument("--bundle", help="model bundle folder (default: the shipped demo model)")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="worker processes that read and preprocess scans while the model runs (0: read in this process; default: 1)",
    )
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="torch device (default: auto)")
    parser.add_argument("--batch-size", type=int, default=16, help="nodules per model pass (default: 16)")
    parser.add_argument(
        "--recompute", action="store_true",
        help="score every row again, replacing nodules.csv, instead of skipping rows already scored",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `clipnodule predict-cohort`; return 0 when every row was scored, 1 when some failed."""
    from ..cohort import ERRORS_FILE, run_cohort

    summary = run_cohort(
        args.dataset,
        args.output,
        bundle=args.bundle,
        device=args.device,
        workers=args.workers,
        batch_size=args.batch_size,
        recompute=args.recompute,
    )
    print(
        f"{summary.scored} scored, {summary.skipped} already done, {summary.failed} failed, "
        f"{summary.patients} patients in {summary.elapsed_s:.1f} s; results in {summary.output_dir}"
        + (f" (reasons of failed rows in {ERRORS_FILE})" if summary.failed else "")
    )
    return 1 if summary.failed else 0
