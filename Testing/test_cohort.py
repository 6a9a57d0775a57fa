"""Tests of cohort inference (`clipnodule.cohort`, `clipnodule predict-cohort`) on real LIDC volumes.

Uses a tiny randomly initialised two-fold bundle saved with real safetensors files and
real SimpleITK reads of the shared LIDC volumes; nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clipnodule.bundle import save_bundle
from clipnodule.calibration import BetaCalibration
from clipnodule.cli import main as cli_main
from clipnodule.cohort import (
    ERRORS_FILE,
    NODULES_FILE,
    PATIENTS_FILE,
    RUN_FILE,
    attention_column,
    patient_rows,
    read_complete_rows,
    run_cohort,
)
from clipnodule.errors import InputError
from clipnodule.model import ModelConfig, build_model
from clipnodule.planes import PLANE_NAMES
from clipnodule.predictor import Predictor
from clipnodule.training.lidc import lidc_dataset_table
from clipnodule.zeroshot import DEFAULT_PROMPT_SET

# Patients of the shared LIDC volumes used here; LIDC-IDRI-0005 has two nodules (two files).
LIDC_PIDS = ("LIDC-IDRI-0001", "LIDC-IDRI-0004", "LIDC-IDRI-0005")
PUBLISHED_COLUMNS = [
    "pid", "nodule_id", "raw_0", "raw_1", "ensemble", "calibrated_0", "calibrated_1", "calibrated_ensemble",
]
GOOD_ROWS = 5
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(7)
    config = ModelConfig(backbone="tiny-vit", pretrained=None)
    base = build_model(config)
    fold_states = []
    for fold in range(2):
        # Each fold gets its own heads and LoRA factors on the shared random backbone.
        state = {key: value + 0.05 * (fold + 1) * torch.randn_like(value) for key, value in base.trainable_state_dict().items()}
        fold_states.append(state)
    return save_bundle(
        tmp_path_factory.mktemp("bundle") / "tiny",
        config=config,
        fold_state_dicts=fold_states,
        calibrations=[BetaCalibration(a=1.3, b=0.7, c=0.2), BetaCalibration(a=0.8, b=1.2, c=-0.3)],
        backbone_state_dict=base.backbone_state_dict(),
        name="tiny-cohort-test",
        version="0.0.1",
        description="random tiny model for cohort tests",
        intended_use="tests only",
        licence="CC0-1.0",
    )


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path) -> Predictor:
    return Predictor.from_bundle(bundle_dir, device="cpu")


@pytest.fixture(scope="module")
def dataset_csv(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five real nodules (two on one scan, two of one patient in two files) and two bad rows."""
    lidc = lidc_dataset_table(shared_dir / "data" / "lidc-voi", keep_indeterminate=True)
    rows = lidc[lidc["pid"].isin(LIDC_PIDS)][["pid", "nodule_id", "image_path", "coordX", "coordY", "coordZ"]]
    rows = rows.reset_index(drop=True)
    assert len(rows) == 4

    first = rows.iloc[0]
    second_on_first_scan = {
        "pid": first["pid"], "nodule_id": "second", "image_path": first["image_path"],
        "coordX": first["coordX"] + 3.0, "coordY": first["coordY"] - 2.0, "coordZ": first["coordZ"],
    }
    missing_file = {
        "pid": "PATIENT-MISSING", "nodule_id": "1", "image_path": str(Path(first["image_path"]).with_name("absent.nii.gz")),
        "coordX": 0.0, "coordY": 0.0, "coordZ": 0.0,
    }
    outside = {
        "pid": first["pid"], "nodule_id": "outside", "image_path": first["image_path"],
        "coordX": first["coordX"] + 400.0, "coordY": first["coordY"], "coordZ": first["coordZ"],
    }
    table = pd.concat([rows, pd.DataFrame([second_on_first_scan, missing_file, outside])], ignore_index=True)
    path = tmp_path_factory.mktemp("dataset") / "cohort.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def first_run(dataset_csv: Path, predictor: Predictor, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("cohort") / "run"
    summary = run_cohort(dataset_csv, output, predictor=predictor, workers=0, batch_size=4, progress=False)
    return output, summary


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_cohort_records_bad_rows_in_errors(first_run) -> None:
    output, summary = first_run
    errors = {(row["pid"], row["nodule_id"]): row for row in read_rows(output / ERRORS_FILE)}

    assert summary.failed == 2
    assert set(errors) == {("PATIENT-MISSING", "1"), ("LIDC-IDRI-0001", "outside")}
    assert errors[("PATIENT-MISSING", "1")]["reason"].startswith("image not found: ")
    assert errors[("PATIENT-MISSING", "1")]["image_path"].endswith("absent.nii.gz")
    assert "lies outside the scan" in errors[("LIDC-IDRI-0001", "outside")]["reason"]
    assert all("\n" not in row["reason"] for row in errors.values())


def test_cohort_nodules_csv_columns(first_run) -> None:
    output, summary = first_run
    with open(output / NODULES_FILE, newline="", encoding="utf-8") as stream:
        header = next(csv.reader(stream))
    rows = read_rows(output / NODULES_FILE)

    assert summary.scored == GOOD_ROWS
    assert len(rows) == GOOD_ROWS
    assert header[: len(PUBLISHED_COLUMNS)] == PUBLISHED_COLUMNS
    attention_columns = [attention_column(index, name) for index, name in enumerate(PLANE_NAMES)]
    assert attention_columns[0] == "attention_0_axial"
    assert attention_columns[4] == "attention_4_oblique_z_minus_x"
    assert header[len(PUBLISHED_COLUMNS) : len(PUBLISHED_COLUMNS) + 9] == attention_columns

    for row in rows:
        assert math.isclose(sum(float(row[column]) for column in attention_columns), 1.0, abs_tol=TOLERANCE)
        calibrated = [float(row["calibrated_0"]), float(row["calibrated_1"])]
        assert math.isclose(float(row["calibrated_ensemble"]), np.mean(calibrated), abs_tol=1e-12)


def test_cohort_zeroshot_columns(first_run) -> None:
    output, _ = first_run
    rows = read_rows(output / NODULES_FILE)
    margin_values = ["smooth", "lobulated", "spiculated", "ill_defined", "notched"]

    assert len(DEFAULT_PROMPT_SET["features"]) == 16
    for row in rows:
        probabilities = [float(row[f"zeroshot_margin_{value}"]) for value in margin_values]
        assert math.isclose(sum(probabilities), 1.0, abs_tol=TOLERANCE)
        assert row["zeroshot_margin"].replace("-", "_") == margin_values[int(np.argmax(probabilities))]
        assert row["zeroshot_pleural_attachment"] in ("present", "absent")
        pleural = float(row["zeroshot_pleural_attachment_present"]) + float(row["zeroshot_pleural_attachment_absent"])
        assert math.isclose(pleural, 1.0, abs_tol=TOLERANCE)


def test_cohort_patients_take_maximum(first_run) -> None:
    output, summary = first_run
    nodules = read_rows(output / NODULES_FILE)
    patients = {row["pid"]: row for row in read_rows(output / PATIENTS_FILE)}

    assert summary.patients == 3
    assert set(patients) == set(LIDC_PIDS)
    for pid in ("LIDC-IDRI-0001", "LIDC-IDRI-0005"):
        own = [row for row in nodules if row["pid"] == pid]
        best = max(own, key=lambda row: float(row["calibrated_ensemble"]))
        assert len(own) == 2
        assert int(patients[pid]["nodule_count"]) == 2
        assert float(patients[pid]["calibrated_ensemble"]) == pytest.approx(float(best["calibrated_ensemble"]), abs=1e-12)
        assert patients[pid]["max_risk_nodule_id"] == best["nodule_id"]
        assert float(patients[pid]["ensemble"]) == pytest.approx(max(float(row["ensemble"]) for row in own), abs=1e-12)


def test_cohort_run_json_records_model(first_run) -> None:
    output, _ = first_run
    record = json.loads((output / RUN_FILE).read_text(encoding="utf-8"))

    assert record["status"] == "finished"
    assert record["bundle"]["name"] == "tiny-cohort-test"
    assert record["bundle"]["version"] == "0.0.1"
    assert record["bundle"]["folds"] == [0, 1]
    assert record["settings"]["workers"] == 0
    assert record["settings"]["batch_size"] == 4
    assert record["counts"] == {"rows": 7, "skipped": 0, "scored": 5, "failed": 2, "patients": 3}


def test_cohort_matches_single_nodule_predict(first_run, dataset_csv: Path, predictor: Predictor) -> None:
    output, _ = first_run
    table = pd.read_csv(dataset_csv, dtype={"pid": str, "nodule_id": str})
    rows = {(row["pid"], row["nodule_id"]): row for row in read_rows(output / NODULES_FILE)}

    for item in table.itertuples(index=False):
        if (item.pid, item.nodule_id) not in rows:
            continue
        row = rows[(item.pid, item.nodule_id)]
        single = predictor.predict(item.image_path, (item.coordX, item.coordY, item.coordZ))
        for fold in single.folds:
            assert float(row[f"raw_{fold.index}"]) == pytest.approx(fold.raw_probability, abs=TOLERANCE)
            assert float(row[f"calibrated_{fold.index}"]) == pytest.approx(fold.calibrated_probability, abs=TOLERANCE)
        assert float(row["calibrated_ensemble"]) == pytest.approx(single.risk, abs=TOLERANCE)
        for index, name in enumerate(PLANE_NAMES):
            assert float(row[attention_column(index, name)]) == pytest.approx(single.attention[index], abs=TOLERANCE)
        assert float(row["zeroshot_shape_round"]) == pytest.approx(
            single.semantic_report["shape"]["probabilities"]["round"], abs=TOLERANCE
        )


def test_cohort_rerun_skips_and_recomputes(first_run, dataset_csv: Path, predictor: Predictor, tmp_path: Path) -> None:
    source, _ = first_run
    output = tmp_path / "rerun"
    output.mkdir()
    for name in (NODULES_FILE, ERRORS_FILE, RUN_FILE):
        (output / name).write_bytes((source / name).read_bytes())
    original = (output / NODULES_FILE).read_text(encoding="utf-8")

    rerun = run_cohort(dataset_csv, output, predictor=predictor, workers=0, progress=False)
    assert (rerun.scored, rerun.skipped, rerun.failed) == (0, GOOD_ROWS, 2)
    assert (output / NODULES_FILE).read_text(encoding="utf-8") == original
    assert len(read_rows(output / ERRORS_FILE)) == 2

    # A run killed while writing leaves a cut-off last line: that nodule is scored again.
    lines = original.splitlines(keepends=True)
    (output / NODULES_FILE).write_text("".join(lines[:-1]) + lines[-1][:40], encoding="utf-8")
    resumed = run_cohort(dataset_csv, output, predictor=predictor, workers=0, progress=False)
    assert (resumed.scored, resumed.skipped) == (1, GOOD_ROWS - 1)
    assert len(read_rows(output / NODULES_FILE)) == GOOD_ROWS

    recomputed = run_cohort(dataset_csv, output, predictor=predictor, workers=0, recompute=True, progress=False)
    assert (recomputed.scored, recomputed.skipped, recomputed.failed) == (GOOD_ROWS, 0, 2)
    assert len(read_rows(output / NODULES_FILE)) == GOOD_ROWS
    assert len(read_rows(output / PATIENTS_FILE)) == 3


def test_cohort_rejects_results_of_other_model(first_run, dataset_csv: Path, predictor: Predictor, tmp_path: Path) -> None:
    source, _ = first_run
    output = tmp_path / "other-model"
    output.mkdir()
    (output / NODULES_FILE).write_bytes((source / NODULES_FILE).read_bytes())
    record = json.loads((source / RUN_FILE).read_text(encoding="utf-8"))
    record["bundle"]["version"] = "9.9"
    (output / RUN_FILE).write_text(json.dumps(record), encoding="utf-8")

    with pytest.raises(InputError, match="version '9.9'.*--recompute"):
        run_cohort(dataset_csv, output, predictor=predictor, workers=0, progress=False)


def test_cohort_worker_process_matches_in_process(first_run, dataset_csv: Path, predictor: Predictor, tmp_path: Path) -> None:
    source, _ = first_run
    summary = run_cohort(dataset_csv, tmp_path / "workers", predictor=predictor, workers=1, batch_size=4, progress=False)

    assert (summary.scored, summary.failed) == (GOOD_ROWS, 2)
    in_process = read_rows(source / NODULES_FILE)
    with_worker = read_rows(tmp_path / "workers" / NODULES_FILE)
    assert [(row["pid"], row["nodule_id"]) for row in with_worker] == [(row["pid"], row["nodule_id"]) for row in in_process]
    for expected, actual in zip(in_process, with_worker):
        for column in expected:
            if column.startswith(("raw_", "calibrated_", "attention_", "ensemble")):
                assert float(actual[column]) == pytest.approx(float(expected[column]), abs=1e-7), column
    assert read_rows(tmp_path / "workers" / ERRORS_FILE) == read_rows(source / ERRORS_FILE)


def test_predict_cohort_command(dataset_csv: Path, bundle_dir: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "cli"
    status = cli_main([
        "predict-cohort", "--dataset", str(dataset_csv), "--output", str(output), "--bundle", str(bundle_dir),
        "--workers", "0", "--device", "cpu", "--batch-size", "2",
    ])

    assert status == 1
    assert "5 scored, 0 already done, 2 failed, 3 patients" in capsys.readouterr().out
    assert len(read_rows(output / NODULES_FILE)) == GOOD_ROWS
    assert json.loads((output / RUN_FILE).read_text(encoding="utf-8"))["settings"]["batch_size"] == 2


def test_patient_rows_fall_back_to_raw_ensemble() -> None:
    rows = [
        {"pid": "A", "nodule_id": "1", "ensemble": "0.2", "calibrated_ensemble": ""},
        {"pid": "A", "nodule_id": "2", "ensemble": "0.7", "calibrated_ensemble": ""},
        {"pid": "B", "nodule_id": "1", "ensemble": "0.4", "calibrated_ensemble": "0.3"},
    ]

    summary = {row["pid"]: row for row in patient_rows(rows)}

    assert summary["A"] == {"pid": "A", "calibrated_ensemble": "", "ensemble": 0.7, "nodule_count": 2, "max_risk_nodule_id": "2"}
    assert summary["B"]["calibrated_ensemble"] == 0.3
    assert summary["B"]["nodule_count"] == 1


def test_read_rows_drops_unterminated_last_line(tmp_path: Path) -> None:
    """A crash inside the last field leaves every field in place, so the missing line end marks the cut."""
    path = tmp_path / NODULES_FILE
    path.write_text("pid,nodule_id,calibrated_ensemble\r\nA,1,0.25\r\nB,1,0.12", encoding="utf-8")

    header, rows = read_complete_rows(path)

    assert header == ["pid", "nodule_id", "calibrated_ensemble"]
    assert rows == [{"pid": "A", "nodule_id": "1", "calibrated_ensemble": "0.25"}]

    path.write_text("pid,nodule_id,calibrated_ensemble\r\nA,1,0.25\r\nB,1,0.125\r\n", encoding="utf-8")
    assert [row["pid"] for row in read_complete_rows(path)[1]] == ["A", "B"]


def test_cohort_rejects_invalid_batch_size(dataset_csv: Path, predictor: Predictor, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="batch size must be at least 1, got 0"):
        run_cohort(dataset_csv, tmp_path, predictor=predictor, batch_size=0, progress=False)


def test_cohort_output_feeds_evaluate(first_run, tmp_path: Path) -> None:
    """The nodules.csv of a cohort run is a valid input of `clipnodule evaluate`, zero-shot included."""
    output, _ = first_run
    nodules = pd.read_csv(output / NODULES_FILE, dtype={"pid": str, "nodule_id": str})
    labels = nodules[["pid", "nodule_id"]].copy()
    labels["malignant"] = [index % 2 for index in range(len(labels))]
    labels["margin_conspicuity"] = ["well marginated", "poorly marginated"] * (len(labels) // 2) + (
        ["well marginated"] if len(labels) % 2 else []
    )
    labels["airway_cutoff"] = ["present", "absent"] * (len(labels) // 2) + (["absent"] if len(labels) % 2 else [])
    labels_path = tmp_path / "labels.csv"
    labels.to_csv(labels_path, index=False)

    status = cli_main([
        "evaluate", "--predictions", str(output / NODULES_FILE), "--labels", str(labels_path),
        "--semantic-labels", str(labels_path), "--level", "nodule", "--bootstraps", "200",
        "--output", str(tmp_path / "report"),
    ])

    assert status == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Margin conspicuity" in report
    assert "Airway cutoff" in report
    zero_shot = {entry["feature"]: entry for entry in metrics["models"][0]["zero_shot"]}
    assert set(zero_shot) == {"margin_conspicuity", "airway_cutoff"}
    assert zero_shot["margin_conspicuity"]["auroc"] is not None
    assert zero_shot["airway_cutoff"]["auroc"] is not None
