"""Tests of the offline template report writer, the report files and the `clipnodule text` command.

Pure Python and pandas; the LIDC case reads the shared LIDC metadata when present.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from clipnodule.cli import main as cli_main
from clipnodule.errors import InputError
from clipnodule.training.report_text import (
    NO_FINDINGS_LINE,
    TemplateReportWriter,
    feature_table,
    report_file_name,
    write_reports,
)

KNOWN_ROW = {
    "pid": "P1",
    "nodule_id": "3",
    "image_path": "/data/P1.nii.gz",
    "malignant": 1,
    "longest_diameter_mm": 17.0,
    "short_diameter_mm": 5.1,
    "margin": "spiculated;ill-defined",
    "shape": "irregular",
    "consistency": "part-solid",
    "margin_conspicuity": "poorly marginated",
    "reticulation": "present",
    "cyst_like_spaces": "absent",
    "necrosis": None,
    "pleural_attachment": "present",
    "vascular_convergence": "present",
    "septal_stretching": "absent",
    "suspicion": "moderately high",
}

KNOWN_TEXT_SEED_0 = (
    "Findings:\n"
    "- Longest axial diameter (mm): 17.0\n"
    "- Nodule shape: Irregular\n"
    "- Short diameter (mm): 5.1\n"
    "- Pleural attachment: Present\n"
    "- Septal stretching: Absent\n"
    "- Nodule margins: Spiculated, Ill-defined\n"
    "- Cyst-like spaces: Absent\n"
    "- Nodule margin conspicuity: Poorly marginated\n"
    "- Vascular convergence: Present\n"
    "- Nodule reticulation: Present\n"
    "- Nodule consistency: Part-solid\n"
    "\n"
    "Impression:\n"
    "A 17.0 × 5.1 mm, part-solid, irregular nodule is identified. "
    "It is poorly marginated with spiculated and ill-defined margins. "
    "It shows reticulation. "
    "It is associated with vascular convergence and pleural attachment. "
    "The level of suspicion for lung cancer is moderately high."
)


def test_template_known_row_exact_text() -> None:
    report = TemplateReportWriter(seed=0).write(KNOWN_ROW)

    assert report.text == KNOWN_TEXT_SEED_0
    assert len(report.findings) == 11
    assert report.impression == KNOWN_TEXT_SEED_0.split("Impression:\n")[1]


def test_template_same_seed_same_text() -> None:
    first = TemplateReportWriter(seed=7).write(KNOWN_ROW)
    second = TemplateReportWriter(seed=7).write(dict(KNOWN_ROW))

    assert first == second


def test_template_seed_changes_order_only() -> None:
    reports = [TemplateReportWriter(seed=seed).write(KNOWN_ROW) for seed in range(6)]
    orders = {tuple(report.findings) for report in reports}

    assert len(orders) > 1
    assert all(sorted(report.findings) == sorted(reports[0].findings) for report in reports)
    assert all(report.impression == reports[0].impression for report in reports)


def test_template_order_ignores_identifiers() -> None:
    other_nodule = dict(KNOWN_ROW, pid="P2", nodule_id="9", image_path="/elsewhere.nii.gz")

    assert TemplateReportWriter(seed=0).write(other_nodule).text == KNOWN_TEXT_SEED_0


def test_template_leaves_missing_values_out() -> None:
    row = {
        "longest_diameter_mm": 8.0,
        "short_diameter_mm": math.nan,
        "margin": "",
        "shape": "N/A",
        "consistency": "solid",
        "necrosis": None,
        "cavitation": float("nan"),
        "airway_cutoff": pd.NA,
        "suspicion": None,
    }
    report = TemplateReportWriter(seed=0).write(row)

    assert sorted(report.findings) == ["Longest axial diameter (mm): 8.0", "Nodule consistency: Solid"]
    assert report.impression == "An 8.0 mm, solid nodule is identified."
    assert "nan" not in report.text.lower()
    assert "suspicion" not in report.text


def test_template_absences_only_in_findings() -> None:
    row = {"necrosis": "absent", "cavitation": "absent", "pleural_attachment": "absent", "shape": "ovoid"}
    report = TemplateReportWriter(seed=1).write(row)

    assert "Necrosis: Absent" in report.findings
    assert "Pleural attachment: Absent" in report.findings
    assert report.impression == "An ovoid nodule is identified."


def test_template_empty_row_text() -> None:
    report = TemplateReportWriter(seed=0).write({"pid": "P1", "nodule_id": "1"})

    assert report.findings == []
    assert report.text == f"Findings:\n{NO_FINDINGS_LINE}\n\nImpression:\nA nodule is identified."


def test_template_short_diameter_only() -> None:
    report = TemplateReportWriter(seed=0).write({"short_diameter_mm": 4.25, "margin_conspicuity": "well marginated"})

    assert report.impression == "A nodule with a short diameter of 4.2 mm is identified. It is well marginated."


def test_template_margins_without_conspicuity() -> None:
    report = TemplateReportWriter(seed=0).write({"margin": "Lobulated, spiculated, notched"})

    assert report.findings == ["Nodule margins: Lobulated, Spiculated, Notched"]
    assert report.impression == "A nodule is identified. It has lobulated, spiculated, and notched margins."


def test_template_invalid_value_names_feature() -> None:
    with pytest.raises(InputError, match=r"Invalid value 'oval' for semantic feature 'shape'.*'ovoid'"):
        TemplateReportWriter(seed=0).write({"shape": "oval"})


def test_feature_table_has_no_identifiers() -> None:
    table = feature_table(KNOWN_ROW)

    assert table["Nodule margins"] == "Spiculated, Ill-defined"
    assert table["Level of suspicion for lung cancer"] == "Moderately high"
    assert "P1" not in str(table)
    assert "/data/P1.nii.gz" not in str(table)
    assert len(table) == 12


def test_write_reports_files_and_csv(tmp_path) -> None:
    table = pd.DataFrame([KNOWN_ROW, dict(KNOWN_ROW, pid="P/2", nodule_id="1", suspicion=None)])
    reports = write_reports(table, TemplateReportWriter(seed=0), tmp_path / "out")

    assert (tmp_path / "out" / "P1_3.txt").read_text(encoding="utf-8") == KNOWN_TEXT_SEED_0 + "\n"
    assert report_file_name("P/2", "1") == "P_2_1.txt"
    assert (tmp_path / "out" / "P_2_1.txt").is_file()

    saved = pd.read_csv(tmp_path / "out" / "reports.csv", dtype=str)
    assert list(saved.columns) == ["pid", "nodule_id", "findings", "impression", "text"]
    assert saved["text"].tolist() == reports["text"].tolist()
    assert saved.loc[0, "findings"].split("\n")[0] == "Longest axial diameter (mm): 17.0"
    assert "suspicion" not in saved.loc[1, "impression"]


def test_write_reports_rejects_file_name_clash(tmp_path) -> None:
    table = pd.DataFrame([dict(KNOWN_ROW, pid="a/b"), dict(KNOWN_ROW, pid="a b")])

    with pytest.raises(InputError, match="same report file a_b_3.txt"):
        write_reports(table, TemplateReportWriter(seed=0), tmp_path)


def _write_dataset_csv(path, rows) -> None:
    pd.DataFrame(rows).to_csv(path, index=False)


def test_text_command_template(tmp_path, capsys) -> None:
    csv_path = tmp_path / "nodules.csv"
    row = {key: value for key, value in KNOWN_ROW.items()}
    row.update({"coordX": 1.0, "coordY": 2.0, "coordZ": 3.0, "image_path": "missing-image.nii.gz"})
    _write_dataset_csv(csv_path, [row])

    status = cli_main(["text", "--dataset", str(csv_path), "--output", str(tmp_path / "text"), "--seed", "0"])

    assert status == 0
    assert (tmp_path / "text" / "P1_3.txt").read_text(encoding="utf-8") == KNOWN_TEXT_SEED_0 + "\n"
    assert "Wrote 1 reports" in capsys.readouterr().out


def test_text_command_gemini_without_key(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    csv_path = tmp_path / "nodules.csv"
    row = dict(KNOWN_ROW, coordX=1.0, coordY=2.0, coordZ=3.0)
    _write_dataset_csv(csv_path, [row])

    status = cli_main(["text", "--dataset", str(csv_path), "--output", str(tmp_path / "text"), "--writer", "gemini"])

    error = capsys.readouterr().err
    assert status == 2
    assert "No Gemini API key" in error
    assert "--writer template" in error
    assert not (tmp_path / "text" / "P1_3.txt").exists()


def test_template_on_lidc_rows(shared_dir) -> None:
    from clipnodule.training.lidc import lidc_dataset_table

    table = lidc_dataset_table(shared_dir / "data" / "lidc-voi")
    first = table[(table["pid"] == "LIDC-IDRI-0001") & (table["nodule_id"] == "1")].iloc[0].to_dict()
    report = TemplateReportWriter(seed=0).write(first)

    assert report.impression == (
        "A 23.4 mm, solid, ovoid nodule is identified. It is well marginated with lobulated and spiculated margins."
    )
    assert sorted(report.findings) == [
        "Cyst-like spaces: Absent",
        "Eccentric calcification: Absent",
        "Longest axial diameter (mm): 23.4",
        "Nodule consistency: Solid",
        "Nodule margin conspicuity: Well marginated",
        "Nodule margins: Lobulated, Spiculated",
        "Nodule shape: Ovoid",
    ]
