"""Training side of the Slicer extension: command line, progress parsing, epoch log, process control, loss chart.

The command line is parsed with the real `clipnodule` argument parser, and the epoch log
is written by the trainer's own `write_epoch_log`, so a renamed flag or column fails here.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CLIPNoduleTraining"))

from CLIPNoduleTrainingLib import training_process  # noqa: E402
from CLIPNoduleTrainingLib.training_process import (  # noqa: E402
    BundleWritten,
    EpochProgress,
    FoldStarted,
    TrainingOptions,
)


@pytest.fixture()
def dataset_csv(tmp_path) -> Path:
    path = tmp_path / "cases.csv"
    path.write_text("pid,nodule_id,image_path,coordX,coordY,coordZ,malignant\n")
    return path


def test_command_accepted_by_cli(dataset_csv, tmp_path):
    from clipnodule.cli import build_parser

    options = TrainingOptions(
        dataset=str(dataset_csv), output=str(tmp_path / "run"), backbone="tiny-vit", pretrained="none",
        tuning="probe", vision_only=True, epochs=7, patience=2, batch_size=4, lr=3e-5, weight_decay=0.05,
        folds=3, test_fraction=0.25, seed=11, device="cpu", resume=True, name="my-model", model_version="0.2",
        max_steps_per_epoch=2,
    )
    command = training_process.build_command(options, python="/opt/python")

    assert command[:4] == ["/opt/python", "-m", "clipnodule", "train"]
    args = build_parser().parse_args(command[3:])
    assert args.dataset == str(dataset_csv)
    assert args.output == str(tmp_path / "run")
    assert args.backbone == "tiny-vit"
    assert args.pretrained is None
    assert args.tuning == "probe"
    assert args.vision_only is True
    assert (args.epochs, args.patience, args.batch_size, args.folds, args.seed) == (7, 2, 4, 3, 11)
    assert args.lr == pytest.approx(3e-5)
    assert args.weight_decay == pytest.approx(0.05)
    assert args.test_fraction == pytest.approx(0.25)
    assert args.device == "cpu"
    assert args.resume is True
    assert (args.name, args.model_version, args.max_steps_per_epoch) == ("my-model", "0.2", 2)


def test_command_defaults_accepted_by_cli(dataset_csv, tmp_path):
    from clipnodule.cli import build_parser

    options = TrainingOptions(dataset=str(dataset_csv), output=str(tmp_path / "run"))
    command = training_process.build_command(options)
    args = build_parser().parse_args(command[3:])
    assert "--pretrained" not in command
    assert "--resume" not in command
    assert args.backbone == "ViT-B-32-quickgelu"
    assert args.tuning == "lora"
    assert args.epochs == 100


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dataset": ""}, "Choose the data set CSV"),
        ({"dataset": "/nonexistent/cases.csv"}, "does not exist"),
        ({"output": ""}, "Choose the output folder"),
        ({"tuning": "adapter"}, "Unknown tuning 'adapter'"),
        ({"device": "tpu"}, "Unknown device 'tpu'"),
        ({"folds": 1}, "at least 2 folds"),
        ({"test_fraction": 1.0}, "must be in \\[0, 1\\)"),
        ({"lr": 0.0}, "learning rate 0.0"),
        ({"epochs": 0}, "at least 1"),
        ({"weights_path": "/nonexistent/clip.pt"}, "weights file"),
    ],
)
def test_options_validation(dataset_csv, tmp_path, changes, message):
    values = {"dataset": str(dataset_csv), "output": str(tmp_path / "run")}
    values.update(changes)
    valid, reason = TrainingOptions(**values).isValid()
    assert valid is False
    assert re.search(message, reason), reason


def test_options_valid(dataset_csv, tmp_path):
    options = TrainingOptions(dataset=str(dataset_csv), output=str(tmp_path / "run"))
    assert options.isValid() == (True, "")
    assert options.bundle_path == tmp_path / "run" / "bundle"
    assert options.epoch_log_path == tmp_path / "run" / "training_log.csv"


def test_parse_epoch_line():
    line = (
        "INFO clipnodule.training.trainer: Fold 2 epoch 7/100: training loss 0.5123, "
        "validation loss 0.6234, validation AUROC 0.812 (3.4 s)"
    )
    event = training_process.parse_progress_line(line)
    assert event == EpochProgress(fold=2, epoch=7, epochs=100, train_loss=0.5123, val_loss=0.6234, val_auroc=0.812)


def test_parse_epoch_line_without_auroc():
    line = "Fold 0 epoch 1/3: training loss 1.2, validation loss nan, validation AUROC n/a (0.5 s)"
    event = training_process.parse_progress_line(line)
    assert isinstance(event, EpochProgress)
    assert event.val_auroc is None
    assert math.isnan(event.val_loss)


def test_parse_fold_start_and_bundle_lines():
    assert training_process.parse_progress_line(
        "INFO clipnodule.training.trainer: Fold 1: 80 training nodules (20 malignant), 20 validation nodules, 80 draws per epoch."
    ) == FoldStarted(fold=1, training_nodules=80)
    assert training_process.parse_progress_line("bundle written to /data/run/bundle") == BundleWritten("/data/run/bundle")
    assert training_process.parse_progress_line(
        "INFO clipnodule.training.trainer: Cross-validated AUROC 0.700. Bundle: /data/run/bundle"
    ) == BundleWritten("/data/run/bundle")
    assert training_process.parse_progress_line("Reading 120 CT files") is None


def test_progress_fraction():
    event = EpochProgress(fold=1, epoch=5, epochs=10, train_loss=0.1, val_loss=0.2, val_auroc=None)
    assert training_process.progress_fraction(event, folds=5) == pytest.approx(0.3)
    last = EpochProgress(fold=4, epoch=10, epochs=10, train_loss=0.1, val_loss=0.2, val_auroc=None)
    assert training_process.progress_fraction(last, folds=5) == pytest.approx(1.0)


def test_read_epoch_log_from_trainer_writer(tmp_path):
    from clipnodule.training.summary import write_epoch_log

    path = tmp_path / "training_log.csv"
    rows = [
        {"fold": 1, "epoch": 2, "train_loss": 0.7, "val_loss": 0.8, "val_auroc": None, "lr": 1e-4, "seconds": 2.0},
        {"fold": 0, "epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_auroc": 0.6, "lr": 1e-4, "seconds": 2.0},
        {"fold": 0, "epoch": 2, "train_loss": 0.9, "val_loss": 1.0, "val_auroc": 0.7, "lr": 1e-4, "seconds": 2.0},
        {"fold": 1, "epoch": 1, "train_loss": 0.95, "val_loss": 0.99, "val_auroc": 0.5, "lr": 1e-4, "seconds": 2.0},
    ]
    write_epoch_log(path, rows)

    by_fold = training_process.read_epoch_log(path)

    assert sorted(by_fold) == [0, 1]
    assert [row["epoch"] for row in by_fold[0]] == [1.0, 2.0]
    assert [row["val_loss"] for row in by_fold[0]] == [1.1, 1.0]
    assert [row["train_loss"] for row in by_fold[1]] == [0.95, 0.7]
    assert math.isnan(by_fold[1][1]["val_auroc"])


def test_read_epoch_log_tolerant(tmp_path):
    assert training_process.read_epoch_log(tmp_path / "missing.csv") == {}

    path = tmp_path / "training_log.csv"
    # No fold column, no val_loss column, a blank epoch and a half-written last line.
    path.write_text("epoch,train_loss,extra\n1,0.5,x\n,0.4,y\n2,abc,z\n3,0.3")
    by_fold = training_process.read_epoch_log(path)

    assert list(by_fold) == [0]
    rows = by_fold[0]
    assert [row["epoch"] for row in rows] == [1.0, 2.0, 3.0]
    assert rows[0]["train_loss"] == 0.5
    assert math.isnan(rows[1]["train_loss"])
    assert all(math.isnan(row["val_loss"]) for row in rows)


def test_process_streams_lines_and_exit_status(tmp_path):
    script = "import sys\nprint('Fold 0 epoch 1/2: training loss 1.0, validation loss 1.5', flush=True)\n" \
             "print('to stderr', file=sys.stderr, flush=True)\nsys.exit(3)\n"
    process = training_process.TrainingProcess([sys.executable, "-c", script])
    process.start()
    assert process.wait(timeout_s=60) == 3
    lines = process.poll_lines()
    assert "Fold 0 epoch 1/2: training loss 1.0, validation loss 1.5" in lines
    assert "to stderr" in lines
    assert process.returncode == 3
    assert not process.running


def test_process_stop_terminates(tmp_path):
    process = training_process.TrainingProcess([sys.executable, "-c", "import time\nprint('started', flush=True)\ntime.sleep(60)"])
    process.start()
    deadline = time.monotonic() + 30
    while "started" not in process.poll_lines() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    process.stop()
    assert not process.running
    assert time.monotonic() - started < training_process.STOP_TIMEOUT_S
    assert process.returncode != 0


def test_loss_chart_nodes(tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML wheel) is not installed")
    from CLIPNoduleTrainingLib import loss_plot

    scene = slicer.vtkMRMLScene()
    rows = {
        0: [{"epoch": 1.0, "train_loss": 1.0, "val_loss": 1.2}, {"epoch": 2.0, "train_loss": 0.8, "val_loss": 1.1}],
        1: [{"epoch": 1.0, "train_loss": 0.9, "val_loss": math.nan}],
    }
    chart = loss_plot.update_loss_chart(scene, rows)

    assert chart.GetNumberOfPlotSeriesNodes() == 4
    table = scene.GetFirstNodeByName(f"{loss_plot.CHART_NAME} fold 0")
    assert list(slicer.util.arrayFromTableColumn(table, "val_loss")) == [1.2, 1.1]
    series = scene.GetFirstNodeByName("fold 1 validation")
    assert series.GetYColumnName() == "val_loss"
    assert series.GetTableNodeID() == scene.GetFirstNodeByName(f"{loss_plot.CHART_NAME} fold 1").GetID()

    # Updating with more epochs reuses the nodes.
    rows[1].append({"epoch": 2.0, "train_loss": 0.7, "val_loss": 0.9})
    loss_plot.update_loss_chart(scene, rows)
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 4
    assert scene.GetFirstNodeByName(f"{loss_plot.CHART_NAME} fold 1").GetNumberOfRows() == 2


def test_loss_chart_line_styles():
    slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML wheel) is not installed")
    from CLIPNoduleTrainingLib import loss_plot

    scene = slicer.vtkMRMLScene()
    loss_plot.update_loss_chart(scene, {0: [{"epoch": 1.0, "train_loss": 1.0, "val_loss": 1.2}]})

    train = scene.GetFirstNodeByName("fold 0 train")
    validation = scene.GetFirstNodeByName("fold 0 validation")
    assert train.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleSolid
    assert validation.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleDash
    assert train.GetLineStyleAsString(train.GetLineStyle()) == "solid"
    assert validation.GetLineStyleAsString(validation.GetLineStyle()) == "dash"


def test_loss_chart_ignores_same_name_other_class():
    slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML wheel) is not installed")
    from CLIPNoduleTrainingLib import loss_plot

    scene = slicer.vtkMRMLScene()
    user_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "fold 0 train")
    chart = loss_plot.update_loss_chart(scene, {0: [{"epoch": 1.0, "train_loss": 1.0, "val_loss": 1.2}]})

    series_ids = [chart.GetNthPlotSeriesNodeID(index) for index in range(chart.GetNumberOfPlotSeriesNodes())]
    assert user_table.GetID() not in series_ids
    assert len(series_ids) == 2
    for series_id in series_ids:
        assert scene.GetNodeByID(series_id).IsA("vtkMRMLPlotSeriesNode")
