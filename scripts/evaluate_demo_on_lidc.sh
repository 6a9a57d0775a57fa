#!/usr/bin/env bash
# Score the held-out LIDC-IDRI test patients of the demo model's training run with
# `clipnodule predict-cohort`, then write the evaluation report with `clipnodule evaluate`.
# Needs the training run folder of scripts/train_demo_model.sh (its split.json names the
# held-out patients) and the LIDC-IDRI volume folder.
set -euo pipefail

REPOSITORY="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
WORK_DIR="${WORK_DIR:-${TMPDIR:-/tmp}/clipnodule-demo-train}"
BUNDLE_DIR="${BUNDLE_DIR:-$REPOSITORY/Resources/models/clipnodule-demo-lidc}"
REPORT_DIR="${REPORT_DIR:-$REPOSITORY/docs/reports/lidc-demo-test}"

LIDC_ARGUMENTS=()
if [[ -n "${LIDC_DIR:-}" ]]; then
    LIDC_ARGUMENTS=(--lidc-dir "$LIDC_DIR")
fi
"$PYTHON" "$REPOSITORY/scripts/make_lidc_dataset.py" "${LIDC_ARGUMENTS[@]}" --output "$WORK_DIR/lidc_dataset.csv"

# Keep only the patients that the training run held out from all five folds.
"$PYTHON" - "$WORK_DIR" <<'PYTHON'
import json
import sys
from pathlib import Path

import pandas as pd

work_dir = Path(sys.argv[1])
test_patients = set(json.loads((work_dir / "run" / "split.json").read_text())["test_patients"])
table = pd.read_csv(work_dir / "lidc_dataset.csv", dtype={"pid": str, "nodule_id": str})
table[table["pid"].isin(test_patients)].to_csv(work_dir / "lidc_test.csv", index=False)
PYTHON

"$PYTHON" -m clipnodule predict-cohort \
    --dataset "$WORK_DIR/lidc_test.csv" \
    --bundle "$BUNDLE_DIR" \
    --output "$WORK_DIR/cohort-test" \
    --workers 1 \
    --device cpu

"$PYTHON" -m clipnodule evaluate \
    --predictions "$WORK_DIR/cohort-test/nodules.csv" \
    --labels "$WORK_DIR/lidc_test.csv" \
    --semantic-labels "$WORK_DIR/lidc_test.csv" \
    --names clipnodule-demo-lidc \
    --output "$REPORT_DIR"
