#!/usr/bin/env bash
# Train the shipped demo bundle Resources/models/clipnodule-demo-lidc on the LIDC-IDRI nodule volumes.
# These are the exact commands that produced it; rerunning the script resumes an interrupted run.
# Needs the clipnodule package (pip install -e .) and the LIDC-IDRI volume folder (LIDC_DIR).
set -euo pipefail

REPOSITORY="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
WORK_DIR="${WORK_DIR:-${TMPDIR:-/tmp}/clipnodule-demo-train}"
BUNDLE_DIR="$REPOSITORY/Resources/models/clipnodule-demo-lidc"

# Nodules rated 4-5 are malignant, 1-2 benign; rating 3 is left out.
LIDC_ARGUMENTS=()
if [[ -n "${LIDC_DIR:-}" ]]; then
    LIDC_ARGUMENTS=(--lidc-dir "$LIDC_DIR")
fi
"$PYTHON" "$REPOSITORY/scripts/make_lidc_dataset.py" "${LIDC_ARGUMENTS[@]}" --output "$WORK_DIR/lidc_dataset.csv"

RESUME=()
if [[ -f "$WORK_DIR/run/training_state.json" ]]; then
    RESUME=(--resume)
fi

# A tiny random CLIP (no pretrained weights can be downloaded here) with LoRA tuning. One
# epoch of 21 steps took 50 to 100 s on 2 shared CPU cores, so at most 5 epochs per fold
# keep the five folds near 25 minutes. The learning rate is 10 times the published 1e-4
# because the heads start from random weights and train for few steps.
"$PYTHON" -m clipnodule train \
    --dataset "$WORK_DIR/lidc_dataset.csv" \
    --output "$WORK_DIR/run" \
    --cache-dir "$WORK_DIR/crop_cache" \
    --bundle-dir "$BUNDLE_DIR" \
    --backbone tiny-vit \
    --pretrained none \
    --tuning lora \
    --epochs 5 \
    --patience 3 \
    --batch-size 16 \
    --lr 1e-3 \
    --weight-decay 0.1 \
    --folds 5 \
    --test-fraction 0.2 \
    --seed 0 \
    --workers 2 \
    --device cpu \
    --name clipnodule-demo-lidc \
    --model-version 0.1.0 \
    --description "Demonstration model: five folds of a tiny random-initialised CLIP with LoRA, trained on LIDC-IDRI nodule volumes. Shows the workflow; not the published model." \
    --intended-use "Research and software demonstration only. Not for diagnosis or patient management." \
    --licence "Apache-2.0 (model weights); trained on LIDC-IDRI (CC BY 3.0)" \
    "${RESUME[@]}"
