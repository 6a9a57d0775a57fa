"""Training as a background process for the CLIPNoduleTraining module: command line, progress, log file.

No Qt and no MRML, so it is testable anywhere. The process is `python -m clipnodule train`,
the same command as on a terminal. Its log lines are parsed for progress, and the
per-epoch CSV log it writes (OUTPUT/training_log.csv) feeds the loss curves.

Expected log columns: fold, epoch, train_loss, val_loss; optional: train_clip_loss,
train_image_loss, train_text_loss, val_auroc, lr, seconds. Reading is tolerant: a
missing column or an empty or non-numeric cell reads as NaN, a row without a fold is
fold 0, and a missing or half-written file reads as no rows.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Sequence

EPOCH_LOG_NAME = "training_log.csv"
DEFAULT_BUNDLE_FOLDER = "bundle"
TUNING_CHOICES = ("lora", "probe", "full")
DEVICE_CHOICES = ("auto", "cuda", "cpu")
STOP_TIMEOUT_S = 15.0

_EPOCH_PATTERN = re.compile(
    r"Fold (?P<fold>\d+) epoch (?P<epoch>\d+)/(?P<epochs>\d+): training loss (?P<train_loss>[-+.\deE]+|nan), "
    r"validation loss (?P<val_loss>[-+.\deE]+|nan)(?:, validation AUROC (?P<val_auroc>[-+.\deE]+|n/a))?"
)
_FOLD_START_PATTERN = re.compile(r"Fold (?P<fold>\d+): (?P<train>\d+) training nodules")
_BUNDLE_PATTERNS = (re.compile(r"bundle written to (?P<path>.+)$"), re.compile(r"Bundle: (?P<path>.+)$"))


@dataclasses.dataclass
class TrainingOptions:
    """Options of one training run; the names follow `clipnodule train`'s flags.

    pretrained None means the backbone's own pretrained tag; "none" trains from random
    weights. extra_arguments are appended to the command unchanged.
    """

    dataset: str = ""
    output: str = ""
    backbone: str = "ViT-B-32-quickgelu"
    pretrained: str | None = None
    weights_path: str = ""
    tuning: str = "lora"
    vision_only: bool = False
    epochs: int = 100
    patience: int = 5
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.1
    folds: int = 5
    test_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    name: str = "clipnodule-model"
    model_version: str = "1.0.0"
    max_steps_per_epoch: int | None = None
    extra_arguments: tuple[str, ...] = ()

    def isValid(self) -> tuple[bool, str]:
        """Return (True, "") when the run can start, else (False, the reason and the fix)."""
        if not self.dataset:
            return False, "Choose the data set CSV (pid, nodule_id, image_path, coordX, coordY, coordZ, malignant)."
        if not Path(self.dataset).is_file():
            return False, f"The data set CSV {self.dataset!r} does not exist."
        if not self.output:
            return False, "Choose the output folder for checkpoints, logs and the bundle."
        if self.tuning not in TUNING_CHOICES:
            return False, f"Unknown tuning {self.tuning!r}; choose one of {', '.join(TUNING_CHOICES)}."
        if self.device not in DEVICE_CHOICES:
            return False, f"Unknown device {self.device!r}; choose one of {', '.join(DEVICE_CHOICES)}."
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            return False, "Epochs, batch size and patience must be at least 1."
        if self.folds < 2:
            return False, f"Cross-validation needs at least 2 folds, got {self.folds}."
        if not 0.0 <= self.test_fraction < 1.0:
            return False, f"The test fraction {self.test_fraction} must be in [0, 1)."
        if not (self.lr > 0 and math.isfinite(self.lr)):
            return False, f"The learning rate {self.lr} must be a positive number."
        if self.weights_path and not Path(self.weights_path).is_file():
            return False, f"The CLIP weights file {self.weights_path!r} does not exist."
        return True, ""

    @property
    def bundle_path(self) -> Path:
        """Where the run writes its model bundle (OUTPUT/bundle)."""
        return Path(self.output) / DEFAULT_BUNDLE_FOLDER

    @property
    def epoch_log_path(self) -> Path:
        """The per-epoch CSV log the run writes."""
        return Path(self.output) / EPOCH_LOG_NAME


def build_command(options: TrainingOptions, python: str | None = None) -> list[str]:
    """Return the `python -m clipnodule train ...` command line for `options`."""
    command = [python or sys.executable, "-m", "clipnodule", "train"]
    command += ["--dataset", str(options.dataset), "--output", str(options.output)]

    command += ["--backbone", options.backbone]
    if options.pretrained is not None:
        command += ["--pretrained", options.pretrained]
    if options.weights_path:
        command += ["--weights-path", str(options.weights_path)]
    command += ["--tuning", options.tuning]
    if options.vision_only:
        command.append("--vision-only")

    command += [
        "--epochs", str(options.epochs),
        "--patience", str(options.patience),
        "--batch-size", str(options.batch_size),
        "--lr", repr(float(options.lr)),
        "--weight-decay", repr(float(options.weight_decay)),
        "--folds", str(options.folds),
        "--test-fraction", repr(float(options.test_fraction)),
        "--seed", str(options.seed),
        "--device", options.device,
        "--name", options.name,
        "--model-version", options.model_version,
    ]

    if options.max_steps_per_epoch is not None:
        command += ["--max-steps-per-epoch", str(options.max_steps_per_epoch)]
    if options.resume:
        command.append("--resume")
    command += list(options.extra_arguments)
    return command


@dataclasses.dataclass(frozen=True)
class EpochProgress:
    """One finished epoch, parsed from the trainer's log line."""

    fold: int
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_auroc: float | None


@dataclasses.dataclass(frozen=True)
class FoldStarted:
    """A fold began training."""

    fold: int
    training_nodules: int


@dataclasses.dataclass(frozen=True)
class BundleWritten:
    """The run finished and wrote its bundle to `path`."""

    path: str


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "n/a") else math.nan
    except ValueError:
        return math.nan


def parse_progress_line(line: str) -> EpochProgress | FoldStarted | BundleWritten | None:
    """Return the progress event in one log line of `clipnodule train`, or None."""
    match = _EPOCH_PATTERN.search(line)
    if match:
        auroc = match.group("val_auroc")
        return EpochProgress(
            fold=int(match.group("fold")),
            epoch=int(match.group("epoch")),
            epochs=int(match.group("epochs")),
            train_loss=_number(match.group("train_loss")),
            val_loss=_number(match.group("val_loss")),
            val_auroc=None if auroc in (None, "n/a") else _number(auroc),
        )
    match = _FOLD_START_PATTERN.search(line)
    if match:
        return FoldStarted(fold=int(match.group("fold")), training_nodules=int(match.group("train")))
    for pattern in _BUNDLE_PATTERNS:
        match = pattern.search(line.strip())
        if match:
            return BundleWritten(path=match.group("path").strip())
    return None


def progress_fraction(event: EpochProgress, folds: int) -> float:
    """Return the share of the run done after `event`, counting each fold as 1/folds.

    Early stopping ends folds before their last epoch, so this is a lower bound.
    """
    within_fold = min(event.epoch / max(event.epochs, 1), 1.0)
    return min((event.fold + within_fold) / max(folds, 1), 1.0)


def read_epoch_log(path: str | os.PathLike) -> dict[int, list[dict[str, float]]]:
    """Read the per-epoch CSV log into {fold: rows sorted by epoch}; tolerant as described above."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, PermissionError, UnicodeDecodeError):
        return {}

    by_fold: dict[int, list[dict[str, float]]] = {}
    for raw_row in csv.DictReader(text.splitlines()):
        row = {key.strip(): _number(value) for key, value in raw_row.items() if key is not None}
        epoch = row.get("epoch", math.nan)
        if math.isnan(epoch):
            continue
        fold_value = row.get("fold", math.nan)
        fold = 0 if math.isnan(fold_value) else int(fold_value)
        row.setdefault("train_loss", math.nan)
        row.setdefault("val_loss", math.nan)
        by_fold.setdefault(fold, []).append(row)
    for rows in by_fold.values():
        rows.sort(key=lambda row: row["epoch"])
    return by_fold


class TrainingProcess:
    """A `clipnodule train` child process whose output lines are collected by a reader thread."""

    def __init__(self, command: Sequence[str], environment: dict[str, str] | None = None, cwd: str | None = None):
        self.command = list(command)
        self._environment = environment
        self._cwd = cwd
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status once the process ended, else None."""
        return None if self._process is None else self._process.poll()

    def start(self) -> None:
        """Start the process; stdout and stderr are merged into one line stream."""
        if self.running:
            raise RuntimeError("This training process is already running.")
        self._process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=self._environment,
            cwd=self._cwd,
        )
        self._reader = threading.Thread(target=self._read, args=(self._process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._lines.put(line.rstrip("\n"))

    def poll_lines(self) -> list[str]:
        """Return the output lines received since the last call, without waiting."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def wait(self, timeout_s: float | None = None) -> int:
        """Wait for the process to end and the reader to drain; return its exit status."""
        if self._process is None:
            raise RuntimeError("The training process was never started.")
        status = self._process.wait(timeout=timeout_s)
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT_S)
        return status

    def stop(self) -> None:
        """Terminate the process (the trainer resumes from its last epoch with --resume); kill it if needed."""
        if not self.running:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_S)
