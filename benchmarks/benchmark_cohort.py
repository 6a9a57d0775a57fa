"""Benchmark nodules per second of the ViT-B/32 five-fold ensemble: cohort pipeline against one call per nodule.

A timing script, not a test. Needs the clipnodule package with torch and open_clip, and a
folder of LIDC nodule volumes (metadata.csv and images/), by default the shared one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmark_single_nodule import FOLD_COUNT, VIT_BACKBONE, build_random_vit_predictor, machine_info, peak_rss_mib

logger = logging.getLogger("benchmark_cohort")

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LIDC_DIR = REPOSITORY_ROOT.parent / "shared" / "data" / "lidc-voi"


def lidc_table(lidc_dir: Path, count: int):
    """Return the first `count` nodules of the LIDC folder's data set table (indeterminate ones included)."""
    from clipnodule.training.lidc import lidc_dataset_table

    table = lidc_dataset_table(lidc_dir, keep_indeterminate=True)
    if len(table) < count:
        raise SystemExit(f"benchmark_cohort: {lidc_dir} has {len(table)} nodules, fewer than --nodules {count}")
    return table.head(count).reset_index(drop=True)


def time_cohort(table, predictor, workers: int, batch_size: int) -> dict[str, Any]:
    """Run the cohort pipeline on `table` into a temporary folder; return its timing and risks."""
    import pandas as pd

    from clipnodule.cohort import NODULES_FILE, run_cohort

    with tempfile.TemporaryDirectory(prefix="clipnodule-benchmark-") as folder:
        summary = run_cohort(table, folder, predictor=predictor, workers=workers, batch_size=batch_size, progress=False)
        rows = pd.read_csv(Path(folder) / NODULES_FILE, dtype={"pid": str, "nodule_id": str})
    risks = {(row.pid, row.nodule_id): float(row.calibrated_ensemble) for row in rows.itertuples(index=False)}
    return {
        "workers": workers,
        "batch_size": batch_size,
        "scored": summary.scored,
        "failed": summary.failed,
        "elapsed_s": summary.elapsed_s,
        "nodules_per_second": summary.nodules_per_second,
        "seconds_per_nodule": summary.elapsed_s / max(summary.scored, 1),
        "_risks": risks,
    }


def time_single_calls(table, predictor) -> dict[str, Any]:
    """Score each nodule with Predictor.predict (read, checksum, preprocess, model); return timing and risks."""
    risks = {}
    started = time.perf_counter()
    for row in table.itertuples(index=False):
        result = predictor.predict(row.image_path, (row.coordX, row.coordY, row.coordZ))
        risks[(str(row.pid), str(row.nodule_id))] = result.risk
    elapsed = time.perf_counter() - started
    return {
        "scored": len(risks),
        "elapsed_s": elapsed,
        "nodules_per_second": len(risks) / elapsed,
        "seconds_per_nodule": elapsed / len(risks),
        "_risks": risks,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="JSON file for the results")
    parser.add_argument("--lidc-dir", type=Path, default=DEFAULT_LIDC_DIR, help="LIDC volume folder (default: %(default)s)")
    parser.add_argument("--nodules", type=int, default=32, help="number of LIDC nodules, first in metadata.csv order (default: 32)")
    parser.add_argument("--workers", type=int, default=1, help="cohort worker processes (default: 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="cohort batch size (default: 16)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device (default: auto)")
    parser.add_argument("--skip-single", action="store_true", help="time the cohort pipeline only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from clipnodule.devices import resolve_device

    device = resolve_device(args.device)
    table = lidc_table(args.lidc_dir, args.nodules)
    results: dict[str, Any] = {
        "script": "benchmarks/benchmark_cohort.py",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input": {
            "lidc_dir": str(args.lidc_dir),
            "nodules": len(table),
            "scans": int(table["image_path"].nunique()),
            "patients": int(table["pid"].nunique()),
        },
        "machine": machine_info(device),
        "model": {"backbone": VIT_BACKBONE, "folds": FOLD_COUNT, "weights": "random (no bundle written)"},
    }

    started = time.perf_counter()
    predictor = build_random_vit_predictor(device)
    results["model"]["build_s"] = time.perf_counter() - started

    # One call before timing, so neither path pays for torch's lazy initialisation.
    first = table.iloc[0]
    predictor.predict(first["image_path"], (first["coordX"], first["coordY"], first["coordZ"]))

    logger.info("Timing the cohort pipeline on %d nodules (%d worker(s), batch %d)", len(table), args.workers, args.batch_size)
    cohort = time_cohort(table, predictor, args.workers, args.batch_size)
    results["cohort"] = cohort

    if not args.skip_single:
        logger.info("Timing Predictor.predict on the same %d nodules", len(table))
        single = time_single_calls(table, predictor)
        results["single_calls"] = single
        results["cohort_speedup"] = cohort["nodules_per_second"] / single["nodules_per_second"]
        shared = sorted(set(cohort["_risks"]) & set(single["_risks"]))
        differences = [abs(cohort["_risks"][key] - single["_risks"][key]) for key in shared]
        results["max_abs_risk_difference_cohort_vs_single"] = float(np.max(differences)) if differences else None

    for section in ("cohort", "single_calls"):
        results.get(section, {}).pop("_risks", None)
    results["peak_rss_mib"] = peak_rss_mib()
    results["load_average_at_end_1_5_15min"] = [round(value, 2) for value in os.getloadavg()]

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    logger.info("Wrote %s", args.output)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
