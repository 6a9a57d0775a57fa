"""End-to-end tests of `clipnodule evaluate`: output files, report content and input error messages.

Runs the real command on small synthetic prediction and label CSV files written in tmp_path.
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from clipnodule.commands import evaluate
from clipnodule.errors import InputError

N_FOLDS = 5


def _parse(arguments: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clipnodule")
    evaluate.register(parser.add_subparsers())
    return parser.parse_args(["evaluate", *arguments])


def _write_inputs(folder, seed: int = 0, noise: float = 1.0) -> tuple[str, str, str]:
    """Write predictions (1-3 nodules per patient), labels and semantic labels, and return their paths."""
    rng = np.random.default_rng(seed)
    prediction_rows, label_rows, semantic_rows = [], [], []
    for patient in range(60):
        for nodule in range(int(rng.integers(1, 4))):
            malignant = int(rng.random() < 0.3)
            row = {"pid": f"P{patient:03d}", "nodule_id": str(nodule)}
            folds = 1 / (1 + np.exp(-(2.0 * malignant - 1.0 + rng.normal(0, noise, N_FOLDS))))
            for fold in range(N_FOLDS):
                row[f"raw_{fold}"] = folds[fold]
            row["ensemble"] = folds.mean()
            for fold in range(N_FOLDS):
                row[f"calibrated_{fold}"] = folds[fold] * 0.95
            row["calibrated_ensemble"] = folds.mean() * 0.95
            shape_probabilities = rng.dirichlet([1, 1, 1])
            row.update({"zeroshot_shape_round": shape_probabilities[0], "zeroshot_shape_ovoid": shape_probabilities[1],
                        "zeroshot_shape_irregular": shape_probabilities[2]})
            prediction_rows.append(row)
            label_rows.append({"pid": row["pid"], "nodule_id": row["nodule_id"], "malignant": malignant})
            semantic_rows.append({"pid": row["pid"], "nodule_id": row["nodule_id"],
                                  "shape": rng.choice(["Round", "Ovoid", "Irregular"])})

    predictions = folder / f"model_{seed}.csv"
    labels = folder / "labels.csv"
    semantic = folder / "semantic.csv"
    pd.DataFrame(prediction_rows).to_csv(predictions, index=False)
    pd.DataFrame(label_rows).to_csv(labels, index=False)
    pd.DataFrame(semantic_rows).to_csv(semantic, index=False)
    return str(predictions), str(labels), str(semantic)


@pytest.fixture()
def two_models(tmp_path):
    first, labels, semantic = _write_inputs(tmp_path, seed=0, noise=0.8)
    second, _, _ = _write_inputs(tmp_path, seed=1, noise=2.0)
    # Both files must share the same patients and labels: rebuild the second from the first.
    first_frame = pd.read_csv(first, dtype={"pid": str, "nodule_id": str})
    second_frame = first_frame.copy()
    rng = np.random.default_rng(9)
    score_columns = [column for column in first_frame.columns if column.startswith(("raw_", "calibrated_"))]
    for column in [*score_columns, "ensemble", "calibrated_ensemble"]:
        second_frame[column] = np.clip(first_frame[column] + rng.normal(0, 0.25, len(first_frame)), 0, 1)
    second_frame.to_csv(second, index=False)
    return first, second, labels, semantic


def test_evaluate_writes_all_outputs(tmp_path, two_models):
    first, second, labels, semantic = two_models
    output = tmp_path / "out"
    args = _parse(["--predictions", first, second, "--labels", labels, "--output", str(output),
                   "--bootstraps", "400", "--names", "CLIP", "Other", "--semantic-labels", semantic])

    assert args.func(args) == 0
    for name in ("metrics.json", "comparison.csv", "recall_table.csv", "roc.png", "pr.png", "reliability.png",
                 "report.md", "report.html"):
        assert (output / name).is_file(), name
    for name in ("roc.png", "pr.png", "reliability.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_metrics_match_sklearn(tmp_path, two_models):
    first, second, labels, semantic = two_models
    output = tmp_path / "out"
    args = _parse(["--predictions", first, second, "--labels", labels, "--output", str(output),
                   "--bootstraps", "400", "--names", "CLIP", "Other"])
    args.func(args)

    predictions = pd.read_csv(first, dtype={"pid": str})
    truth = pd.read_csv(labels, dtype={"pid": str})
    patients = predictions.groupby("pid")["calibrated_ensemble"].max()
    patient_labels = truth.groupby("pid")["malignant"].max().loc[patients.index]

    metrics = json.loads((output / "metrics.json").read_text())
    model = metrics["models"][0]
    assert model["name"] == "CLIP"
    assert model["counts"]["evaluated"] == 60
    assert model["auroc"]["estimate"] == pytest.approx(roc_auc_score(patient_labels, patients))
    assert model["auprc"]["estimate"] == pytest.approx(average_precision_score(patient_labels, patients))
    assert model["auroc"]["ci_lower"] <= model["auroc"]["estimate"] <= model["auroc"]["ci_upper"]
    assert model["folds"]["columns"] == [f"calibrated_{fold}" for fold in range(N_FOLDS)]
    assert len(model["recall_table"]) == 4
    assert metrics["settings"]["bootstrap"]["resamples"] == 400
    assert metrics["comparison"]["auroc"]["test"] == "wilcoxon signed-rank"
    difference = metrics["bootstrap_differences"][0]
    assert difference["models"] == ["CLIP", "Other"]
    expected_difference = model["auroc"]["estimate"] - metrics["models"][1]["auroc"]["estimate"]
    assert difference["auroc"]["estimate"] == pytest.approx(expected_difference)

    comparison = pd.read_csv(output / "comparison.csv")
    assert comparison["model"].tolist() == ["CLIP", "Other"]
    assert {"auroc_with_ci", "auprc_with_ci", "brier", "ece"} <= set(comparison.columns)
    recall = pd.read_csv(output / "recall_table.csv")
    assert recall["target_recall"].tolist() == [0.6, 0.7, 0.8, 0.9] * 2


def test_html_report_is_self_contained(tmp_path, two_models):
    first, second, labels, semantic = two_models
    output = tmp_path / "out"
    args = _parse(["--predictions", first, second, "--labels", labels, "--output", str(output),
                   "--bootstraps", "300", "--names", "CLIP", "Other", "--semantic-labels", semantic])
    args.func(args)

    html = (output / "report.html").read_text()
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,[A-Za-z0-9+/=]+">', html)) == 3
    assert "http" not in html
    assert "<td>CLIP</td>" in html
    assert "<td>Other</td>" in html
    assert "<td>Shape</td>" in html
    assert "Recall ≈ 0.9: FPR ↓" in html

    markdown = (output / "report.md").read_text()
    metrics = json.loads((output / "metrics.json").read_text())
    auroc = metrics["models"][0]["auroc"]
    second_line = f"{auroc['estimate']:.3f}<br>[{auroc['ci_lower']:.3f}, {auroc['ci_upper']:.3f}]"
    assert second_line in markdown
    assert "![ROC curve](roc.png)" in markdown


def test_nodule_level_and_excluded_labels(tmp_path):
    predictions, labels, _ = _write_inputs(tmp_path)
    label_frame = pd.read_csv(labels, dtype={"pid": str, "nodule_id": str})
    label_frame["malignant"] = label_frame["malignant"].astype(object)
    label_frame.loc[0, "malignant"] = "indeterminate"
    label_frame.loc[1, "malignant"] = None
    label_frame.to_csv(labels, index=False)
    output = tmp_path / "nodules"
    args = _parse(["--predictions", predictions, "--labels", labels, "--output", str(output), "--level", "nodule",
                   "--bootstraps", "200"])
    args.func(args)

    model = json.loads((output / "metrics.json").read_text())["models"][0]
    assert model["counts"]["excluded_label_rows"] == 2
    assert model["counts"]["unlabelled_predictions"] == 2
    assert model["counts"]["evaluated"] == len(label_frame) - 2
    assert not (output / "comparison.csv").exists()


def test_missing_column_message(tmp_path):
    predictions, labels, _ = _write_inputs(tmp_path)
    pd.read_csv(predictions).drop(columns="pid").to_csv(predictions, index=False)
    args = _parse(["--predictions", predictions, "--labels", labels, "--output", str(tmp_path / "out")])

    with pytest.raises(InputError, match=r"missing column 'pid' in model_0\.csv"):
        args.func(args)


def test_missing_score_column_message(tmp_path):
    predictions, labels, _ = _write_inputs(tmp_path)
    args = _parse(["--predictions", predictions, "--labels", labels, "--output", str(tmp_path / "out"),
                   "--score-column", "risk"])

    with pytest.raises(InputError, match=r"missing column 'risk' in model_0\.csv.*--score-column"):
        args.func(args)


def test_nan_scores_message(tmp_path):
    predictions, labels, _ = _write_inputs(tmp_path)
    frame = pd.read_csv(predictions)
    frame.loc[3, "calibrated_ensemble"] = np.nan
    frame.to_csv(predictions, index=False)
    args = _parse(["--predictions", predictions, "--labels", labels, "--output", str(tmp_path / "out")])

    with pytest.raises(InputError, match=r"column 'calibrated_ensemble' in model_0\.csv contains 1 NaN"):
        args.func(args)


def test_invalid_label_message(tmp_path):
    predictions, labels, _ = _write_inputs(tmp_path)
    frame = pd.read_csv(labels)
    frame.loc[0, "malignant"] = 2
    frame.to_csv(labels, index=False)
    args = _parse(["--predictions", predictions, "--labels", labels, "--output", str(tmp_path / "out")])

    with pytest.raises(InputError, match=r"column 'malignant' in labels\.csv must be 0 or 1, found '?2"):
        args.func(args)


def test_no_matching_labels_message(tmp_path):
    predictions, labels, _ = _write_inputs(tmp_path)
    frame = pd.read_csv(labels)
    frame["pid"] = "X" + frame["pid"]
    frame.to_csv(labels, index=False)
    args = _parse(["--predictions", predictions, "--labels", labels, "--output", str(tmp_path / "out")])

    with pytest.raises(InputError, match=r"no patients in model_0\.csv have a label in labels\.csv"):
        args.func(args)


def test_name_count_message(tmp_path):
    predictions, labels, _ = _write_inputs(tmp_path)
    args = _parse(["--predictions", predictions, "--labels", labels, "--output", str(tmp_path / "out"),
                   "--names", "a", "b"])

    with pytest.raises(InputError, match="2 names given for 1 prediction files"):
        args.func(args)


def test_three_models_use_friedman(tmp_path, two_models):
    first, second, labels, _ = two_models
    third = tmp_path / "third.csv"
    frame = pd.read_csv(second)
    for column in [column for column in frame.columns if column.startswith("calibrated_")]:
        frame[column] = frame[column] * 0.5
    frame.to_csv(third, index=False)
    output = tmp_path / "three"
    args = _parse(["--predictions", first, second, str(third), "--labels", labels, "--output", str(output),
                   "--bootstraps", "200"])
    args.func(args)

    comparison = json.loads((output / "metrics.json").read_text())["comparison"]
    assert comparison["auroc"]["test"] == "friedman + nemenyi"
    assert len(comparison["auroc"]["pairs"]) == 3
    assert 0.0 <= comparison["auroc"]["overall"]["p_value"] <= 1.0
    assert "Hypothesis testing p-values" in (output / "report.md").read_text()


def test_empty_patient_id_message(tmp_path):
    predictions, labels, _ = _write_inputs(tmp_path)
    frame = pd.read_csv(labels, dtype={"pid": str})
    frame.loc[4, "pid"] = None
    frame.to_csv(labels, index=False)
    args = _parse(["--predictions", predictions, "--labels", labels, "--output", str(tmp_path / "out")])

    with pytest.raises(InputError, match=r"column 'pid' in labels\.csv is empty in 1 rows \(first at line 6\)"):
        args.func(args)
