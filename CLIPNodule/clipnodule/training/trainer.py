"""Five-fold cross-validated training of the CLIP nodule model, resumable, ending in a model bundle.

`train_cross_validation(TrainingConfig)` crops the nodules once and splits the patients
into a held-out test set and folds. It trains each fold with early stopping on the
validation loss and fits a Beta calibration per fold. Finally it evaluates the ensemble
on the test set and saves a bundle. No Qt or Slicer imports; the `clipnodule train` command and the Slicer training
module call this.

Output folder layout:
    split.json               test patients and the validation patients of each fold
    training_state.json      progress of every fold (the resume point), results and exclusions
    training_log.csv         one row per fold and epoch
    checkpoints/             backbone (random backbones only), last and best weights per fold
    loss_curves/fold_<k>.png
    training_summary.json    cross-validation and test-set results
    bundle/                  the model bundle (unless another bundle folder is given)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from ..errors import InputError
from ..hashing import sha256_file
from .checkpoints import load_tensors, load_training_checkpoint, save_tensors_atomic, save_training_checkpoint, write_json_atomic
from .distributed import DistributedContext, barrier, init_distributed, shutdown, wrap_model
from .losses import CLIPNoduleLoss, LossTerms, inverse_frequency_weights
from .summary import fold_summary, plot_loss_curves, safe_auroc, test_set_evaluation, write_epoch_log

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1
STATE_FILE = "training_state.json"
SPLIT_FILE = "split.json"
LOG_FILE = "training_log.csv"
SUMMARY_FILE = "training_summary.json"
BACKBONE_CHECKPOINT = "backbone.safetensors"

# Settings that must not change when a run is resumed, because finished folds used them.
FINGERPRINT_FIELDS = (
    "backbone", "pretrained", "weights_path", "tuning", "vision_only", "lora_rank", "folds",
    "test_fraction", "seed", "batch_size", "lr", "weight_decay", "report_seed",
)


@dataclass
class TrainingConfig:
    """Settings of one cross-validated training run (defaults: the published protocol)."""

    dataset: str
    output: str
    backbone: str = "ViT-B-32-quickgelu"
    pretrained: str | None = "openai"
    weights_path: str | None = None
    tuning: str = "lora"
    vision_only: bool = False
    lora_rank: int = 2
    epochs: int = 100
    patience: int = 5
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.1
    folds: int = 5
    test_fraction: float = 0.2
    seed: int = 0
    report_seed: int = 0
    workers: int = 0
    device: str = "auto"
    cache_dir: str | None = None
    resume: bool = False
    max_steps_per_epoch: int | None = None
    # Stop the process after this many epochs (over all folds) in this invocation, leaving
    # the state for --resume; for time-sliced runs and tests.
    stop_after_epochs: int | None = None
    bundle_dir: str | None = None
    bundle_name: str = "clipnodule-model"
    bundle_version: str = "1.0.0"
    description: str = "CLIP nodule malignancy model trained with clipnodule train"
    intended_use: str = "Research use only; not for clinical decisions."
    licence: str = "Model weights: same terms as the training data; see the training data summary."
    extra_manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "folds"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.folds < 2:
            raise InputError(f"Cross-validation needs at least 2 folds, got {self.folds}.")
        if self.patience < 1:
            raise InputError(f"patience must be at least 1 epoch, got {self.patience}.")
        if self.lr <= 0 or self.weight_decay < 0:
            raise InputError(f"The learning rate must be > 0 and weight decay >= 0, got {self.lr} and {self.weight_decay}.")
        if self.workers < 0:
            raise InputError(f"workers must be >= 0, got {self.workers}.")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise InputError(f"max_steps_per_epoch must be at least 1, got {self.max_steps_per_epoch}.")
        if self.stop_after_epochs is not None and self.stop_after_epochs < 1:
            raise InputError(f"stop_after_epochs must be at least 1, got {self.stop_after_epochs}.")

    def fingerprint(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FINGERPRINT_FIELDS}

    def model_config(self):
        from ..model import ModelConfig

        return ModelConfig(
            backbone=self.backbone,
            pretrained=self.pretrained,
            weights_path=self.weights_path,
            tuning=self.tuning,
            vision_only=self.vision_only,
            lora_rank=self.lora_rank,
        )


@dataclass
class FoldProgress:
    """Progress of one fold, stored in the state JSON: the resume point and, when finished, the results."""

    status: str = "pending"
    epoch: int = 0
    best_epoch: int = 0
    best_val_loss: float | None = None
    epochs_without_improvement: int = 0
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    validation_auroc: float | None = None
    validation_diameter_auroc: float | None = None
    # Test-set probabilities of the best weights: calibrated when the fold has a calibration.
    test_probabilities: list[float] | None = None
    test_raw_probabilities: list[float] | None = None
    finished_at: str | None = None


@dataclass
class RunData:
    """Everything the folds share: the usable rows, their reports, the split and the data sets."""

    table: pd.DataFrame
    reports: list | None
    split: Any
    cache: Any
    evaluation_set: Any


class TrainingRun:
    """One invocation of cross-validated training in an output folder (see the module docstring)."""

    def __init__(self, config: TrainingConfig, context: DistributedContext) -> None:
        self.config = config
        self.context = context
        self.output = Path(config.output).expanduser().resolve()
        self.checkpoints = self.output / "checkpoints"
        self.epochs_this_run = 0
        self.state: dict[str, Any] = {}
        # Best weights of the fold in training, kept in memory as well as on disk.
        self.best_state: dict[str, torch.Tensor] | None = None

    # State file.

    def load_or_create_state(self, dataset_sha256: str, state_existed: bool) -> None:
        path = self.output / STATE_FILE
        if state_existed:
            if not self.config.resume:
                raise InputError(
                    f"{self.output} already contains a training run ({STATE_FILE}); pass --resume to continue it "
                    "or choose a new output folder."
                )
            self.state = json.loads(path.read_text(encoding="utf-8"))
            self._check_resumable(dataset_sha256)
            logger.info("Resuming the training run in %s", self.output)
            return

        self.state = {
            "format_version": STATE_FORMAT_VERSION,
            "fingerprint": self.config.fingerprint(),
            "dataset_sha256": dataset_sha256,
            "folds": {str(fold): dataclasses.asdict(FoldProgress()) for fold in range(self.config.folds)},
            "excluded": [],
        }
        self.save_state()

    def _check_resumable(self, dataset_sha256: str) -> None:
        if self.state.get("format_version") != STATE_FORMAT_VERSION:
            raise InputError(f"{STATE_FILE} in {self.output} has an unknown format; start a new output folder.")
        saved = self.state["fingerprint"]
        changed = [
            f"{name} ({saved.get(name)!r} saved, {value!r} now)"
            for name, value in self.config.fingerprint().items()
            if saved.get(name) != value
        ]
        if self.state["dataset_sha256"] != dataset_sha256:
            changed.append("the data set table's content")
        if changed:
            raise InputError(
                f"Cannot resume the run in {self.output}: settings differ from the saved run: {'; '.join(changed)}. "
                "Resume with the original settings or start a new output folder."
            )

    def save_state(self) -> None:
        if self.context.is_main:
            write_json_atomic(self.output / STATE_FILE, self.state)

    def fold_progress(self, fold: int) -> FoldProgress:
        return FoldProgress(**self.state["folds"][str(fold)])

    def store_fold_progress(self, fold: int, progress: FoldProgress) -> None:
        self.state["folds"][str(fold)] = dataclasses.asdict(progress)
        self.save_state()
        if self.context.is_main:
            rows = [row for index in range(self.config.folds) for row in self.fold_progress(index).history]
            write_epoch_log(self.output / LOG_FILE, rows)

    # Shared data.

    def prepare_data(self) -> RunData:
        from .crop_cache import CropCache
        from .data import NoduleDataset
        from .dataset_table import read_dataset_table
        from .splits import load_or_make_split

        table = read_dataset_table(self.config.dataset, require_labels=True)
        cache_dir = Path(self.config.cache_dir).expanduser() if self.config.cache_dir else self.output / "crop_cache"
        cache = CropCache(cache_dir)

        # Rank 0 crops every nodule first; the other processes then read its cache files.
        if self.context.is_main:
            usable, excluded = _crop_all(table, cache)
        barrier(self.context)
        if not self.context.is_main:
            usable, excluded = _crop_all(table, cache, show_progress=False)
        if excluded:
            logger.warning(
                "Left out %d of %d nodules whose CT could not be used (first: %s).",
                len(excluded), len(table), excluded[0]["reason"],
            )
        self.state["excluded"] = excluded
        self.save_state()

        table = table[usable].reset_index(drop=True)
        if table.empty:
            raise InputError("No nodule of the data set table could be cropped; check the image paths and CTs.")

        split_path = self.output / SPLIT_FILE
        if self.context.is_main:
            split = load_or_make_split(table, split_path, self.config.folds, self.config.test_fraction, self.config.seed)
        barrier(self.context)
        if not self.context.is_main:
            split = load_or_make_split(table, split_path, self.config.folds, self.config.test_fraction, self.config.seed)

        reports = None
        if not self.config.vision_only:
            from .report_text import TemplateReportWriter

            writer = TemplateReportWriter(seed=self.config.report_seed)
            reports = [writer.write(row) for row in table.to_dict(orient="records")]

        evaluation_set = NoduleDataset(table, cache, reports)
        return RunData(table=table, reports=reports, split=split, cache=cache, evaluation_set=evaluation_set)

    def backbone_state(self) -> dict[str, torch.Tensor] | None:
        """Return the frozen backbone shared by all folds, when it is randomly initialised.

        Named pretrained weights or a weights file are read again for every fold, so
        nothing is stored for them. A random backbone is drawn once from the run's seed
        and saved, so resumed folds and the bundle use the same weights.
        """
        from ..model import build_model

        if self.config.pretrained or self.config.weights_path:
            return None
        path = self.checkpoints / BACKBONE_CHECKPOINT
        if path.is_file():
            tensors, _ = load_tensors(path)
            return tensors

        torch.manual_seed(self.config.seed)
        base = build_model(dataclasses.replace(self.config.model_config(), tuning="probe"), device="cpu")
        backbone = base.backbone_state_dict()
        if self.context.is_main:
            save_tensors_atomic(path, backbone)
        return backbone

    # Folds.

    def train_fold(self, fold: int, data: RunData, backbone: dict[str, torch.Tensor] | None) -> bool:
        """Train fold `fold` from its resume point and finish it; return False when stopped early."""
        from ..model import build_model
        from .augment import CubeAugmentation
        from .data import NoduleDataset, collate_batch, init_worker, sampling_weights, training_sampler
        from .text_augment import ReportTextAugmenter

        progress = self.fold_progress(fold)
        if progress.status == "finished":
            logger.info("Fold %d finished earlier (best epoch %d); not training it again.", fold, progress.best_epoch)
            return True

        config = self.config
        train_mask, validation_mask = data.split.fold_masks(data.table, fold)
        train_rows = np.flatnonzero(train_mask)
        validation_rows = np.flatnonzero(validation_mask)
        train_table = data.table.iloc[train_rows].reset_index(drop=True)
        train_labels = train_table["malignant"].astype(int).to_numpy()
        train_reports = [data.reports[i] for i in train_rows] if data.reports is not None else None

        weights = sampling_weights(train_table)
        train_set = NoduleDataset(
            train_table, data.cache, train_reports, weights,
            augmentation=CubeAugmentation(),
            text_augmenter=None if config.vision_only else ReportTextAugmenter(),
        )
        validation_set = Subset(data.evaluation_set, validation_rows.tolist())

        torch.manual_seed(config.seed * 1000 + fold)
        model = build_model(config.model_config(), device=self.context.device, backbone_state_dict=backbone)
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        loss_function = CLIPNoduleLoss(inverse_frequency_weights(train_labels), vision_only=config.vision_only)
        network = wrap_model(model, self.context)

        if progress.last_checkpoint:
            weights_state, optimizer_state, _ = load_training_checkpoint(self.output / progress.last_checkpoint)
            model.load_trainable_state_dict(weights_state)
            if optimizer_state is not None:
                optimizer.load_state_dict(optimizer_state)
            logger.info("Fold %d: resuming after epoch %d.", fold, progress.epoch)
        progress.status = "running"
        self.best_state = None

        per_rank_batch = max(1, config.batch_size // self.context.world_size)
        samples_per_epoch = len(train_set)
        if config.max_steps_per_epoch is not None:
            samples_per_epoch = min(samples_per_epoch, config.max_steps_per_epoch * config.batch_size)
        logger.info(
            "Fold %d: %d training nodules (%d malignant), %d validation nodules, %d draws per epoch.",
            fold, len(train_set), int(train_labels.sum()), len(validation_set), samples_per_epoch,
        )

        for epoch in range(progress.epoch + 1, config.epochs + 1):
            if progress.epochs_without_improvement >= config.patience:
                break
            if config.stop_after_epochs is not None and self.epochs_this_run >= config.stop_after_epochs:
                logger.info("Stopping after %d epochs in this run; resume with --resume.", self.epochs_this_run)
                return False

            started = time.perf_counter()
            sampler = training_sampler(
                weights, samples_per_epoch, seed=config.seed * 1000 + fold, epoch=epoch,
                rank=self.context.rank, world_size=self.context.world_size,
            )
            loader = DataLoader(
                train_set, batch_size=per_rank_batch, sampler=sampler, num_workers=config.workers,
                collate_fn=collate_batch, worker_init_fn=init_worker if config.workers > 0 else None,
            )
            train_terms = self._train_epoch(network, model, loader, optimizer, loss_function, fold, epoch)
            validation_terms, probabilities, labels = self._evaluate(model, validation_set, loss_function)
            validation_auroc = safe_auroc(labels, probabilities)

            row = {
                "fold": fold,
                "epoch": epoch,
                "train_loss": _finite_or_none(train_terms["total"]),
                "train_clip_loss": _finite_or_none(train_terms["clip"]),
                "train_image_loss": _finite_or_none(train_terms["image"]),
                "train_text_loss": _finite_or_none(train_terms["text"]),
                "val_loss": _finite_or_none(validation_terms["total"]),
                "val_auroc": validation_auroc,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - started, 2),
            }
            progress.history = [entry for entry in progress.history if entry["epoch"] < epoch] + [row]
            progress.epoch = epoch
            self.epochs_this_run += 1
            self._save_epoch_checkpoints(fold, epoch, model, optimizer, progress, validation_terms["total"])
            logger.info(
                "Fold %d epoch %d/%d: training loss %.4f, validation loss %.4f, validation AUROC %s (%.1f s)",
                fold, epoch, config.epochs, train_terms["total"], validation_terms["total"],
                "n/a" if validation_auroc is None else f"{validation_auroc:.3f}", row["seconds"],
            )

        self._finish_fold(fold, model, progress, data, validation_rows)
        return True

    def _train_epoch(self, network, model, loader, optimizer, loss_function, fold: int, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        from ..model import MAX_LOG_LOGIT_SCALE

        network.train()
        sums = {"total": 0.0, "clip": 0.0, "image": 0.0, "text": 0.0}
        count = 0
        progress_bar = tqdm(
            loader, desc=f"fold {fold} epoch {epoch}", unit="batch", leave=False, disable=not self.context.is_main,
        )
        for batch in progress_bar:
            pixels = batch["pixels"].to(self.context.device)
            labels = batch["labels"].to(self.context.device)
            tokens = None if self.config.vision_only else model.tokenize(batch["texts"]).to(self.context.device)

            outputs = network(pixels, tokens)
            terms = loss_function(outputs, labels)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            # The forward pass clamps the scale too, but a parameter left above the clamp
            # would get no gradient, so the parameter itself is kept at most ln(100).
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, MAX_LOG_LOGIT_SCALE)

            size = len(labels)
            for name, value in terms.as_floats().items():
                sums[name] += value * size
            count += size
            progress_bar.set_postfix(loss=f"{terms.total.item():.3f}")
        return {name: value / max(count, 1) for name, value in sums.items()}

    def _evaluate(self, model, dataset, loss_function) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """Return mean loss terms, image-branch probabilities and labels of `dataset` (no augmentation)."""
        from .data import collate_batch

        model.eval()
        loader = DataLoader(dataset, batch_size=self.config.batch_size, shuffle=False, collate_fn=collate_batch)
        sums = {"total": 0.0, "clip": 0.0, "image": 0.0, "text": 0.0}
        probabilities, labels = [], []
        with torch.no_grad():
            for batch in loader:
                pixels = batch["pixels"].to(self.context.device)
                batch_labels = batch["labels"].to(self.context.device)
                tokens = None if self.config.vision_only else model.tokenize(batch["texts"]).to(self.context.device)
                outputs = model(pixels, tokens)
                terms: LossTerms = loss_function(outputs, batch_labels)
                for name, value in terms.as_floats().items():
                    sums[name] += value * len(batch_labels)
                probabilities.append(torch.softmax(outputs["logits_image"].float(), dim=-1)[:, 1].cpu().numpy())
                labels.append(batch["labels"].numpy())
        count = max(sum(len(part) for part in labels), 1)
        return (
            {name: value / count for name, value in sums.items()},
            np.concatenate(probabilities) if probabilities else np.zeros(0),
            np.concatenate(labels) if labels else np.zeros(0, dtype=int),
        )

    def _save_epoch_checkpoints(self, fold, epoch, model, optimizer, progress: FoldProgress, val_loss: float) -> None:
        old_files = []
        # A NaN or infinite loss never counts as an improvement.
        improved = math.isfinite(val_loss) and (progress.best_val_loss is None or val_loss < progress.best_val_loss)
        if improved:
            progress.best_val_loss = float(val_loss)
            progress.best_epoch = epoch
            progress.epochs_without_improvement = 0
            self.best_state = model.trainable_state_dict()
            best = f"checkpoints/fold_{fold}_best_epoch_{epoch}.safetensors"
            if self.context.is_main:
                save_training_checkpoint(self.output / best, model.trainable_state_dict(), None, {"epoch": str(epoch)})
            old_files.append(progress.best_checkpoint)
            progress.best_checkpoint = best
        else:
            progress.epochs_without_improvement += 1

        last = f"checkpoints/fold_{fold}_epoch_{epoch}.safetensors"
        if self.context.is_main:
            save_training_checkpoint(self.output / last, model.trainable_state_dict(), optimizer.state_dict(), {"epoch": str(epoch)})
        old_files.append(progress.last_checkpoint)
        progress.last_checkpoint = last

        # The state file names the new checkpoints before the old ones are deleted, so an
        # interruption at any point leaves a consistent resume point.
        self.store_fold_progress(fold, progress)
        if self.context.is_main:
            for name in old_files:
                if name and name not in (progress.best_checkpoint, progress.last_checkpoint):
                    (self.output / name).unlink(missing_ok=True)

    def _finish_fold(self, fold: int, model, progress: FoldProgress, data: RunData, validation_rows: np.ndarray) -> None:
        from ..calibration import fit_beta_calibration

        if progress.best_checkpoint is None:
            raise InputError(
                f"Fold {fold} has no epoch with a finite validation loss; the training diverged. "
                "Lower the learning rate (--lr) and start a new output folder."
            )
        if self.best_state is None:
            # Resumed after the best epoch: only the checkpoint file has the best weights.
            barrier(self.context)
            self.best_state, _, _ = load_training_checkpoint(self.output / progress.best_checkpoint)
        model.load_trainable_state_dict(self.best_state)

        loss_function = CLIPNoduleLoss(torch.ones(2), vision_only=self.config.vision_only)
        _, probabilities, labels = self._evaluate(model, Subset(data.evaluation_set, validation_rows.tolist()), loss_function)
        progress.validation_auroc = safe_auroc(labels, probabilities)
        progress.validation_diameter_auroc = _diameter_auroc(data.table.iloc[validation_rows])

        try:
            calibration = fit_beta_calibration(probabilities, labels)
            progress.calibration = calibration.to_dict()
        except InputError as error:
            logger.warning("Fold %d is left uncalibrated: %s", fold, error)
            calibration = None
            progress.calibration = None

        test_rows = np.flatnonzero(data.split.test_mask(data.table))
        if len(test_rows):
            _, raw_test_probabilities, _ = self._evaluate(model, Subset(data.evaluation_set, test_rows.tolist()), loss_function)
            test_probabilities = raw_test_probabilities
            if calibration is not None:
                test_probabilities = calibration.predict(raw_test_probabilities)
            progress.test_probabilities = [float(value) for value in test_probabilities]
            progress.test_raw_probabilities = [float(value) for value in raw_test_probabilities]

        progress.status = "finished"
        progress.finished_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        last = progress.last_checkpoint
        progress.last_checkpoint = None
        self.store_fold_progress(fold, progress)
        if self.context.is_main:
            if last and last != progress.best_checkpoint:
                (self.output / last).unlink(missing_ok=True)
            plot_loss_curves(self.output / "loss_curves" / f"fold_{fold}.png", fold, progress.history)
        logger.info(
            "Fold %d finished: best epoch %d, validation loss %.4f, validation AUROC %s.",
            fold, progress.best_epoch, progress.best_val_loss,
            "n/a" if progress.validation_auroc is None else f"{progress.validation_auroc:.3f}",
        )

    # Results.

    def summarise(self, data: RunData) -> dict[str, Any]:
        folds = [self.fold_progress(fold) for fold in range(self.config.folds)]
        calibrated = all(progress.calibration is not None for progress in folds)
        summary: dict[str, Any] = {
            "dataset": str(Path(self.config.dataset).expanduser().resolve().name),
            "dataset_sha256": self.state["dataset_sha256"],
            "nodules": int(len(data.table)),
            "patients": int(data.table["pid"].nunique()),
            "malignant": int(data.table["malignant"].astype(int).sum()),
            "excluded_nodules": len(self.state["excluded"]),
            "test_patients": len(data.split.test_patients),
            "folds": self.config.folds,
            "settings": {
                **self.config.fingerprint(),
                "epochs": self.config.epochs,
                "patience": self.config.patience,
                "max_steps_per_epoch": self.config.max_steps_per_epoch,
            },
            "cross_validation": {
                "validation_auroc": fold_summary([progress.validation_auroc for progress in folds]),
                "diameter_baseline_auroc": fold_summary([progress.validation_diameter_auroc for progress in folds]),
                "best_epochs": [progress.best_epoch for progress in folds],
                "best_validation_loss": [progress.best_val_loss for progress in folds],
            },
        }
        test_rows = np.flatnonzero(data.split.test_mask(data.table))
        if len(test_rows):
            summary["test"] = test_set_evaluation(
                data.table.iloc[test_rows].reset_index(drop=True),
                [_test_scores(progress, calibrated) for progress in folds],
                calibrated=calibrated,
                seed=self.config.seed,
            )
        return summary

    def save_bundle(self, data: RunData, backbone: dict[str, torch.Tensor] | None, summary: dict[str, Any]) -> Path:
        from ..bundle import save_bundle
        from ..calibration import BetaCalibration

        folds = [self.fold_progress(fold) for fold in range(self.config.folds)]
        fold_states = [load_training_checkpoint(self.output / progress.best_checkpoint)[0] for progress in folds]
        calibrations = [BetaCalibration.from_dict(p.calibration) if p.calibration else None for p in folds]
        fold_summaries = [
            {"best_epoch": p.best_epoch, "validation_loss": p.best_val_loss, "validation_auroc": p.validation_auroc}
            for p in folds
        ]
        bundle_dir = Path(self.config.bundle_dir).expanduser() if self.config.bundle_dir else self.output / "bundle"
        return save_bundle(
            bundle_dir,
            config=self.config.model_config(),
            fold_state_dicts=fold_states,
            calibrations=calibrations,
            backbone_state_dict=backbone,
            name=self.config.bundle_name,
            version=self.config.bundle_version,
            description=self.config.description,
            intended_use=self.config.intended_use,
            licence=self.config.licence,
            training_summary=summary,
            extra=self.config.extra_manifest or None,
            fold_summaries=fold_summaries,
            overwrite=True,
        )


def train_cross_validation(config: TrainingConfig) -> Path | None:
    """Run (or resume) cross-validated training and return the bundle folder.

    Returns None when `config.stop_after_epochs` stopped the run before every fold
    finished; run again with `resume=True` to continue from the last finished epoch.
    Under torchrun with several processes only rank 0 writes files; every rank returns
    the bundle path.
    """
    from ..devices import resolve_device

    context = init_distributed(resolve_device(config.device))
    try:
        run = TrainingRun(config, context)
        run.output.mkdir(parents=True, exist_ok=True)
        dataset_sha256 = sha256_file(Path(config.dataset).expanduser())

        # Every process looks for an earlier run before rank 0 writes the new state file.
        # Without the barrier, a slower process would find that file and take it for an old run.
        state_existed = (run.output / STATE_FILE).is_file()
        barrier(context)
        run.load_or_create_state(dataset_sha256, state_existed)
        barrier(context)

        data = run.prepare_data()
        backbone = run.backbone_state()
        barrier(context)
        for fold in range(config.folds):
            if not run.train_fold(fold, data, backbone):
                return None
            barrier(context)

        summary = run.summarise(data)
        bundle_path = Path(config.bundle_dir).expanduser() if config.bundle_dir else run.output / "bundle"
        if context.is_main:
            write_json_atomic(run.output / SUMMARY_FILE, summary)
            bundle_path = run.save_bundle(data, backbone, summary)
            _log_summary(summary, bundle_path)
        barrier(context)
        return bundle_path
    finally:
        shutdown(context)


def _crop_all(table: pd.DataFrame, cache, show_progress: bool = True) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Crop (or find in the cache) every nodule; return the usable-row mask and the left-out rows."""
    from tqdm import tqdm

    usable = np.ones(len(table), dtype=bool)
    excluded: list[dict[str, str]] = []
    rows = table[["pid", "nodule_id", "image_path", "coordX", "coordY", "coordZ"]].itertuples(index=False)
    for position, row in enumerate(tqdm(rows, total=len(table), desc="cropping nodules", unit="nodule", disable=not show_progress)):
        try:
            cache.get(row.image_path, (row.coordX, row.coordY, row.coordZ))
        except InputError as error:
            usable[position] = False
            excluded.append({"pid": row.pid, "nodule_id": row.nodule_id, "reason": str(error)})
    return usable, excluded


def _test_scores(progress: FoldProgress, calibrated: bool) -> np.ndarray:
    """Return a fold's calibrated test probabilities, or its raw ones when any fold lacks a calibration.

    The ensemble averages one kind of score over all folds, so one uncalibrated fold makes it
    the mean of raw probabilities, as at inference.
    """
    if calibrated or progress.test_raw_probabilities is None:
        # NOTE: state files written before raw test probabilities were stored hold only the
        # (possibly calibrated) values, so their mixed-calibration ensembles stay mixed.
        return np.asarray(progress.test_probabilities, dtype=float)
    return np.asarray(progress.test_raw_probabilities, dtype=float)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _diameter_auroc(rows: pd.DataFrame) -> float | None:
    if "longest_diameter_mm" not in rows.columns:
        return None
    diameters = pd.to_numeric(rows["longest_diameter_mm"], errors="coerce").to_numpy(dtype=float)
    known = np.isfinite(diameters)
    return safe_auroc(rows["malignant"].astype(int).to_numpy()[known], diameters[known])


def _log_summary(summary: dict[str, Any], bundle_path: Path) -> None:
    validation = summary["cross_validation"]["validation_auroc"] or {}
    message = f"Cross-validated AUROC {_format(validation.get('mean'))}"
    test = summary.get("test", {}).get("ensemble")
    if test:
        message += f"; test AUROC {_format(test['auroc'])} (95% CI {_format(test['ci_lower'])}-{_format(test['ci_upper'])})"
    baseline = summary.get("test", {}).get("diameter_baseline")
    if baseline:
        message += f"; diameter baseline test AUROC {_format(baseline['auroc'])}"
    logger.info("%s. Bundle: %s", message, bundle_path)


def _format(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

