"""Tests of cross-validated training: splits, crop cache, augmentation, losses, resume and the train command.

Real LIDC-IDRI nodule volumes from the shared data folder (skipped when it is absent),
real SimpleITK, open_clip, peft and TorchIO, and the tiny random 'tiny-vit' CLIP so that
training runs in seconds on a CPU. Nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clipnodule.errors import InputError
from clipnodule.training.splits import DataSplit, check_split, load_or_make_split, load_split, make_split

TINY_TRAINING = {"backbone": "tiny-vit", "pretrained": None, "batch_size": 4, "max_steps_per_epoch": 1}


# Shared data.


@pytest.fixture(scope="module")
def lidc_table(shared_dir: Path) -> pd.DataFrame:
    from clipnodule.training.lidc import lidc_dataset_table

    lidc_dir = shared_dir / "data" / "lidc-voi"
    if not (lidc_dir / "metadata.csv").is_file():
        pytest.skip(f"LIDC nodule volumes not found in {lidc_dir}")
    return lidc_dataset_table(lidc_dir)


def _usable(row: pd.Series) -> bool:
    from clipnodule.ct_checks import check_point_inside
    from clipnodule.image_io import load_ct

    try:
        check_point_inside(load_ct(row["image_path"]), (row["coordX"], row["coordY"], row["coordZ"]))
    except InputError:
        return False
    return True


def _pick_nodules(table: pd.DataFrame, per_class: int) -> pd.DataFrame:
    """Pick `per_class` usable nodules of each class, one per patient, from distinct patients."""
    picked, used_patients = [], set()
    for label in (1, 0):
        count = 0
        for _, row in table[table["malignant"] == label].iterrows():
            if count == per_class:
                break
            if row["pid"] in used_patients or not _usable(row):
                continue
            picked.append(row)
            used_patients.add(row["pid"])
            count += 1
    return pd.DataFrame(picked).reset_index(drop=True)


@pytest.fixture(scope="module")
def small_dataset(lidc_table: pd.DataFrame, tmp_path_factory) -> Path:
    """A data set CSV of 14 real LIDC nodules (7 malignant, 7 benign) from 14 patients.

    With seed 0 and a 20 % test set, each of the five validation folds gets both classes,
    so every fold can be calibrated.
    """
    path = tmp_path_factory.mktemp("dataset") / "lidc_small.csv"
    _pick_nodules(lidc_table, per_class=7).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def crop_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("crop_cache")


# Splits.


def test_split_patients_disjoint(lidc_table):
    split = make_split(lidc_table, n_folds=5, test_fraction=0.2, seed=0)
    all_patients = set(lidc_table["pid"])

    fold_sets = [set(fold) for fold in split.fold_patients]
    for first in range(5):
        assert not fold_sets[first] & set(split.test_patients)
        for second in range(first + 1, 5):
            assert not fold_sets[first] & fold_sets[second]
    assert set().union(*fold_sets) | set(split.test_patients) == all_patients
    assert abs(len(split.test_patients) / len(all_patients) - 0.2) < 0.01


def test_split_fold_masks_cover_development_rows(lidc_table):
    split = make_split(lidc_table, n_folds=5, test_fraction=0.2, seed=0)
    test_mask = split.test_mask(lidc_table)
    validation_counts = np.zeros(len(lidc_table), dtype=int)
    for fold in range(5):
        train, validation = split.fold_masks(lidc_table, fold)
        assert not np.any(train & validation)
        assert not np.any((train | validation) & test_mask)
        assert np.array_equal(train | validation, ~test_mask)
        labels = lidc_table["malignant"][validation].astype(int)
        assert set(labels) == {0, 1}
        validation_counts += validation
    assert np.array_equal(validation_counts, (~test_mask).astype(int))


def test_split_saved_and_reused(lidc_table, tmp_path):
    path = tmp_path / "split.json"
    first = load_or_make_split(lidc_table, path, n_folds=5, test_fraction=0.2, seed=3)
    assert load_split(path) == first
    again = load_or_make_split(lidc_table, path, n_folds=5, test_fraction=0.2, seed=3)
    assert again == first

    with pytest.raises(InputError, match=r"seed \(3 saved, 4 requested\)"):
        load_or_make_split(lidc_table, path, n_folds=5, test_fraction=0.2, seed=4)
    with pytest.raises(InputError, match=r"patients \(0 new, \d+ gone\)"):
        load_or_make_split(lidc_table.iloc[:200], path, n_folds=5, test_fraction=0.2, seed=3)


def test_check_split_rejects_shared_patient():
    split = DataSplit(test_patients=("a",), fold_patients=(("b", "c"), ("c", "d")), seed=0, test_fraction=0.2)
    with pytest.raises(InputError, match="Patient 'c' is in fold 1 and in fold 0"):
        check_split(split)


def test_split_rejects_single_class(lidc_table):
    benign = lidc_table[lidc_table["malignant"] == 0]
    with pytest.raises(InputError, match="only one class"):
        make_split(benign, n_folds=5)


# Crop cache and augmentation.


def test_split_rejects_one_malignant_patient():
    table = pd.DataFrame({"pid": [f"p{index}" for index in range(12)], "malignant": [1] + [0] * 11})
    with pytest.raises(InputError, match=r"Cannot split 12 patients \(1 with a malignant nodule\)"):
        make_split(table, n_folds=2, test_fraction=0.2)


def test_crop_cache_matches_inference_crop(small_dataset, tmp_path, monkeypatch):
    from clipnodule.crop import crop_hu_cube
    from clipnodule.image_io import load_ct
    from clipnodule.training.crop_cache import CropCache, centre_crop

    row = pd.read_csv(small_dataset).iloc[0]
    point = (row["coordX"], row["coordY"], row["coordZ"])
    cache = CropCache(tmp_path)

    cube = cache.get(row["image_path"], point)
    assert cube.shape == (110, 110, 110)
    assert cube.dtype == np.float32
    expected = crop_hu_cube(load_ct(row["image_path"]), point).hu
    np.testing.assert_array_equal(centre_crop(cube), expected)

    stored = list(tmp_path.rglob("*.npy"))
    assert len(stored) == 1
    assert stored[0].stem == cache.key(row["image_path"], point)

    # A second request must come from the file, not from a new crop.
    def fail(*args):
        raise AssertionError("cropped again")

    monkeypatch.setattr(cache, "_crop", fail)
    np.testing.assert_array_equal(cache.get(row["image_path"], point), cube)
    assert cache.key(row["image_path"], (point[0] + 1.0, point[1], point[2])) != stored[0].stem


def test_crop_cache_key_separates_voxel_boundary(reference_fixtures, tmp_path):
    """Points 2 nm apart on either side of a 1 mm grid boundary crop different voxels."""
    from clipnodule.crop import crop_hu_cube, one_mm_grid
    from clipnodule.image_io import load_ct
    from clipnodule.training.crop_cache import CropCache, centre_crop

    ct_path = reference_fixtures / "ct_caseA.nii.gz"
    if not ct_path.is_file():
        pytest.skip(f"reference CT not found: {ct_path}")
    image = load_ct(ct_path)
    boundary = one_mm_grid(image).origin_lps + np.array([55.0, 55.0, 70.0])
    below = (float(boundary[0]) - 1e-6, float(boundary[1]) + 0.5, float(boundary[2]) + 0.5)
    above = (float(boundary[0]) + 1e-6, below[1], below[2])
    assert round(below[0], 4) == round(above[0], 4)

    cache = CropCache(tmp_path)
    assert cache.key(ct_path, below) != cache.key(ct_path, above)
    for point in (below, above):
        np.testing.assert_array_equal(centre_crop(cache.get(ct_path, point)), crop_hu_cube(image, point).hu)
    below_centre = crop_hu_cube(image, below).center_index
    above_centre = crop_hu_cube(image, above).center_index
    assert above_centre[0] == below_centre[0] + 1


def test_crop_cache_rejects_missing_ct(tmp_path):
    from clipnodule.training.crop_cache import CropCache

    with pytest.raises(InputError, match="CT not found"):
        CropCache(tmp_path).get(tmp_path / "missing.nii.gz", (0.0, 0.0, 0.0))


def test_centre_jitter_shifts_whole_voxels():
    from clipnodule.training.augment import CentreJitter
    from clipnodule.training.crop_cache import centre_crop

    z, y, x = np.meshgrid(np.arange(110), np.arange(110), np.arange(110), indexing="ij")
    cube = (z * 10_000 + y * 100 + x).astype(np.float32)

    torch.manual_seed(0)
    jitter = CentreJitter(max_shift_mm=5)
    shifts = [jitter.sample_shift() for _ in range(200)]
    assert min(min(shift) for shift in shifts) == -5
    assert max(max(shift) for shift in shifts) == 5

    moved = centre_crop(cube, (2, -3, 5))
    assert moved.shape == (100, 100, 100)
    assert moved[50, 50, 50] == (55 + 2) * 10_000 + (55 - 3) * 100 + (55 + 5)
    with pytest.raises(InputError, match="exceeds the cached cube's margin of 5"):
        centre_crop(cube, (6, 0, 0))


def test_cube_augmentation_output(small_dataset, crop_cache_dir):
    from clipnodule.training.augment import CubeAugmentation, unaugmented_cube
    from clipnodule.training.crop_cache import CropCache

    row = pd.read_csv(small_dataset).iloc[0]
    cube_hu = CropCache(crop_cache_dir).get(row["image_path"], (row["coordX"], row["coordY"], row["coordZ"]))

    torch.manual_seed(1)
    augmented = CubeAugmentation()(cube_hu)
    reference = unaugmented_cube(cube_hu)
    assert augmented.shape == (100, 100, 100)
    assert augmented.dtype == np.float32
    assert augmented.min() > -0.2
    assert augmented.max() < 1.2
    assert not np.allclose(augmented, reference)
    # Rotation, flips and jitter keep the padding level (0 HU = 2/3) as the most common value.
    assert np.isclose(np.median(reference), 2.0 / 3.0)
    assert abs(np.median(augmented) - 2.0 / 3.0) < 0.05


# Text augmentation.


def test_synonym_substitution_uses_table():
    from clipnodule.training.text_augment import SynonymSubstitution

    random.seed(0)
    always = SynonymSubstitution(fraction=1.0)
    text = always("Cyst-like spaces: Absent; a well marginated nodule of 23.4 mm")
    assert "well marginated" not in text
    assert "23.4 mm" in text
    assert text.split(";")[0].split(":")[0] in ("cystic spaces", "cystic airspaces")
    assert SynonymSubstitution(fraction=0.0)("a well marginated nodule") == "a well marginated nodule"


def test_synonyms_keep_margin_features_apart():
    from clipnodule.training.text_augment import RADIOLOGY_SYNONYMS

    # "ill-defined" is a margin value; "poorly marginated" is a margin conspicuity value.
    for group in RADIOLOGY_SYNONYMS:
        if "ill-defined" in group:
            assert "poorly marginated" not in group, group


def test_report_text_augmenter_parts(lidc_table):
    from clipnodule.training.report_text import TemplateReportWriter
    from clipnodule.training.text_augment import ReportTextAugmenter, report_part_text

    report = TemplateReportWriter(seed=0).write(lidc_table.iloc[0].to_dict())
    assert report_part_text(report, "findings").startswith("Findings: ")
    assert report_part_text(report, "impression") == f"Impression: {report.impression}"

    random.seed(0)
    augmenter = ReportTextAugmenter()
    texts = [augmenter(report) for _ in range(40)]
    assert {text.split(":")[0] for text in texts} == {"Findings", "Impression"}
    assert any(text != report_part_text(report, text.split(":")[0].lower()) for text in texts)


# Losses and sampling.


def test_clip_loss_values():
    from clipnodule.training.losses import clip_loss

    uniform = torch.zeros(4, 4)
    assert torch.isclose(clip_loss(uniform, uniform), torch.log(torch.tensor(4.0)))
    matched = torch.eye(4) * 100.0
    assert clip_loss(matched, matched) < 1e-6
    with pytest.raises(InputError, match="square"):
        clip_loss(torch.zeros(2, 3), torch.zeros(3, 2))


def test_class_weights_favour_minority():
    from clipnodule.training.losses import inverse_frequency_weights

    weights = inverse_frequency_weights([0, 0, 0, 1])
    assert torch.allclose(weights, torch.tensor([4 / 6, 4 / 2]))
    with pytest.raises(InputError, match=r"Labels must lie in \[0, 1\]"):
        inverse_frequency_weights([0, 2])


def test_vision_only_loss_is_image_cross_entropy():
    from clipnodule.training.losses import CLIPNoduleLoss

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    labels = torch.tensor([0, 1])
    terms = CLIPNoduleLoss(torch.ones(2), vision_only=True)({"logits_image": logits}, labels)
    assert torch.isclose(terms.total, torch.nn.functional.cross_entropy(logits, labels))
    assert terms.clip == 0
    assert terms.text == 0


def test_training_sampler_repeats_epoch_and_shards():
    from clipnodule.training.data import training_sampler

    weights = [0.1, 1.0, 0.5, 0.2, 0.9]
    first = list(training_sampler(weights, 10, seed=0, epoch=3))
    assert first == list(training_sampler(weights, 10, seed=0, epoch=3))
    assert first != list(training_sampler(weights, 10, seed=0, epoch=4))

    shards = [list(training_sampler(weights, 10, seed=0, epoch=3, rank=rank, world_size=2)) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    interleaved = [index for pair in zip(*shards) for index in pair]
    assert sorted(interleaved) == sorted(list(torch.multinomial(
        torch.tensor(weights, dtype=torch.float64), 10, replacement=True,
        generator=torch.Generator().manual_seed(0 * 100_003 + 3),
    ).tolist()))


def test_optimizer_state_round_trip(tmp_path):
    from clipnodule.training.checkpoints import load_training_checkpoint, save_training_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()

    save_training_checkpoint(tmp_path / "checkpoint.safetensors", model.state_dict(), optimizer.state_dict(), {"epoch": "1"})
    weights, optimizer_state, metadata = load_training_checkpoint(tmp_path / "checkpoint.safetensors")
    restored = torch.optim.AdamW(model.parameters(), lr=0.5)
    restored.load_state_dict(optimizer_state)

    assert metadata["epoch"] == "1"
    assert torch.equal(weights["weight"], model.weight.detach())
    assert restored.param_groups[0]["lr"] == 1e-3
    assert torch.equal(restored.state[model.weight]["exp_avg"], optimizer.state[model.weight]["exp_avg"])


# Optimisation.


def test_summary_ensemble_raw_when_fold_uncalibrated(tmp_path):
    """One uncalibrated fold makes the test ensemble the mean of raw probabilities of every fold."""
    from sklearn.metrics import roc_auc_score

    from clipnodule.calibration import BetaCalibration
    from clipnodule.training.distributed import DistributedContext
    from clipnodule.training.trainer import FoldProgress, RunData, TrainingConfig, TrainingRun

    labels = [0, 0, 0, 1, 1, 1]
    table = pd.DataFrame({"pid": [f"p{index}" for index in range(6)], "malignant": labels})
    split = DataSplit(test_patients=tuple(table["pid"]), fold_patients=((), ()), seed=0, test_fraction=1.0)
    raw = [np.array([0.40, 0.45, 0.50, 0.55, 0.60, 0.65]), np.array([0.20, 0.30, 0.95, 0.25, 0.35, 0.40])]
    calibrated_fold_0 = np.array([0.90, 0.91, 0.92, 0.93, 0.94, 0.95])
    folds = [
        FoldProgress(status="finished", calibration=BetaCalibration(1.0, 1.0, 2.0).to_dict(),
                     test_probabilities=calibrated_fold_0.tolist(), test_raw_probabilities=raw[0].tolist()),
        FoldProgress(status="finished", calibration=None,
                     test_probabilities=raw[1].tolist(), test_raw_probabilities=raw[1].tolist()),
    ]

    run = TrainingRun(TrainingConfig(dataset=str(tmp_path / "table.csv"), output=str(tmp_path), folds=2), DistributedContext())
    run.state = {
        "dataset_sha256": "0" * 64,
        "excluded": [],
        "folds": {str(index): dataclasses.asdict(progress) for index, progress in enumerate(folds)},
    }
    summary = run.summarise(RunData(table=table, reports=None, split=split, cache=None, evaluation_set=None))

    test = summary["test"]
    assert test["ensemble_score"] == "mean of raw fold probabilities"
    assert test["ensemble"]["auroc"] == pytest.approx(roc_auc_score(labels, (raw[0] + raw[1]) / 2))
    assert test["ensemble"]["auroc"] != pytest.approx(roc_auc_score(labels, (calibrated_fold_0 + raw[1]) / 2))


def test_few_steps_lower_loss(small_dataset, crop_cache_dir):
    from clipnodule.model import ModelConfig, build_model
    from clipnodule.training.crop_cache import CropCache
    from clipnodule.training.data import NoduleDataset, collate_batch
    from clipnodule.training.losses import CLIPNoduleLoss, inverse_frequency_weights
    from clipnodule.training.report_text import TemplateReportWriter

    table = pd.read_csv(small_dataset).iloc[[0, 1, 7, 8]].reset_index(drop=True)
    reports = [TemplateReportWriter(seed=0).write(row) for row in table.to_dict(orient="records")]
    dataset = NoduleDataset(table, CropCache(crop_cache_dir), reports)
    batch = collate_batch([dataset[index] for index in range(len(dataset))])

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tiny-vit", pretrained=None))
    model.train()
    loss_function = CLIPNoduleLoss(inverse_frequency_weights(batch["labels"].tolist()))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.1)
    tokens = model.tokenize(batch["texts"])

    losses = []
    for _ in range(8):
        terms = loss_function(model(batch["pixels"], tokens), batch["labels"])
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(terms.total.item())
    assert losses[-1] < 0.9 * losses[0]


# Training runs.


def _log_epochs(output: Path) -> dict[int, list[int]]:
    log = pd.read_csv(output / "training_log.csv")
    return {int(fold): rows["epoch"].tolist() for fold, rows in log.groupby("fold")}


def test_resume_continues_after_last_epoch(small_dataset, crop_cache_dir, tmp_path):
    from clipnodule.bundle import load_bundle
    from clipnodule.training.trainer import TrainingConfig, train_cross_validation

    output = tmp_path / "run"
    settings = {**TINY_TRAINING, "dataset": str(small_dataset), "output": str(output), "folds": 2,
                "epochs": 2, "cache_dir": str(crop_cache_dir), "test_fraction": 0.0}

    assert train_cross_validation(TrainingConfig(**settings, stop_after_epochs=3)) is None
    assert _log_epochs(output) == {0: [1, 2], 1: [1]}
    state = json.loads((output / "training_state.json").read_text())
    assert state["folds"]["0"]["status"] == "finished"
    assert state["folds"]["1"]["epoch"] == 1
    first_log = pd.read_csv(output / "training_log.csv")
    fold_0_finished_at = state["folds"]["0"]["finished_at"]

    with pytest.raises(InputError, match="pass --resume"):
        train_cross_validation(TrainingConfig(**settings))
    with pytest.raises(InputError, match=r"lr \(0.0001 saved, 0.001 now\)"):
        train_cross_validation(TrainingConfig(**{**settings, "lr": 1e-3}, resume=True))

    bundle_path = train_cross_validation(TrainingConfig(**settings, resume=True))
    assert _log_epochs(output) == {0: [1, 2], 1: [1, 2]}
    final_log = pd.read_csv(output / "training_log.csv")
    pd.testing.assert_frame_equal(final_log.iloc[:3], first_log)
    state = json.loads((output / "training_state.json").read_text())
    assert state["folds"]["0"]["finished_at"] == fold_0_finished_at
    leftover = sorted(path.name for path in (output / "checkpoints").glob("fold_*"))
    assert leftover == [Path(state["folds"][str(k)]["best_checkpoint"]).name for k in (0, 1)]

    # Calibration parameters round-trip through the bundle manifest.
    bundle = load_bundle(bundle_path, device="cpu")
    assert len(bundle.folds) == 2
    for fold in bundle.folds:
        saved = state["folds"][str(fold.index)]["calibration"]
        assert saved is not None
        assert fold.calibration.to_dict() == saved


def test_vision_only_probe_training(small_dataset, crop_cache_dir, tmp_path):
    from clipnodule.bundle import load_bundle
    from clipnodule.training.trainer import TrainingConfig, train_cross_validation

    settings = {**TINY_TRAINING, "dataset": str(small_dataset), "output": str(tmp_path / "run"), "folds": 2,
                "epochs": 1, "cache_dir": str(crop_cache_dir), "test_fraction": 0.0}
    bundle_path = train_cross_validation(TrainingConfig(**settings, vision_only=True, tuning="probe"))

    bundle = load_bundle(bundle_path, device="cpu")
    assert bundle.config.vision_only is True
    assert bundle.config.tuning == "probe"
    assert bundle.prompt_set is None
    log = pd.read_csv(tmp_path / "run" / "training_log.csv")
    assert (log["train_clip_loss"] == 0).all()
    assert (log["train_text_loss"] == 0).all()
    assert (log["train_image_loss"] == log["train_loss"]).all()
    fold_keys = set(bundle.folds[0].model.trainable_state_dict())
    assert not any(".lora_" in key for key in fold_keys)
    assert "logit_scale" not in fold_keys


def test_train_command_bundle_predicts(small_dataset, crop_cache_dir, tmp_path, lidc_table):
    from clipnodule.bundle import load_bundle
    from clipnodule.cli import main
    from clipnodule.predictor import Predictor

    output = tmp_path / "cli_run"
    status = main([
        "--quiet", "train", "--dataset", str(small_dataset), "--output", str(output),
        "--backbone", "tiny-vit", "--pretrained", "none", "--epochs", "2", "--max-steps-per-epoch", "1",
        "--batch-size", "4", "--cache-dir", str(crop_cache_dir), "--device", "cpu", "--name", "test-model",
    ])
    assert status == 0

    bundle_path = output / "bundle"
    bundle = load_bundle(bundle_path, device="cpu")
    assert [fold.index for fold in bundle.folds] == [0, 1, 2, 3, 4]
    assert all(fold.calibration is not None for fold in bundle.folds)
    summary = bundle.manifest["training_data"]
    assert summary["nodules"] == 14
    assert summary["test"]["ensemble"]["ci_lower"] <= summary["test"]["ensemble"]["auroc"]
    assert "diameter_baseline" in summary["test"]
    assert len(summary["cross_validation"]["validation_auroc"]["values"]) == 5
    assert sorted(os.listdir(output / "loss_curves")) == [f"fold_{k}.png" for k in range(5)]

    row = pd.read_csv(small_dataset).iloc[0]
    result = Predictor.from_bundle(bundle_path, device="cpu").predict(
        row["image_path"], (row["coordX"], row["coordY"], row["coordZ"])
    )
    assert 0.0 <= result.risk <= 1.0
    assert result.calibrated
    assert len(result.folds) == 5
    assert result.model_name == "test-model"
    assert np.isclose(sum(result.attention), 1.0, atol=1e-5)


def test_torchrun_two_processes_gloo(small_dataset, crop_cache_dir, tmp_path):
    """Two CPU processes under torchrun train with DistributedDataParallel (gloo); rank 0 alone writes."""
    import subprocess
    import sys

    output = tmp_path / "ddp_run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "clipnodule", "train", "--dataset", str(small_dataset), "--output", str(output),
        "--backbone", "tiny-vit", "--pretrained", "none", "--folds", "2", "--epochs", "1",
        "--max-steps-per-epoch", "1", "--batch-size", "4", "--test-fraction", "0", "--device", "cpu",
        "--cache-dir", str(crop_cache_dir),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]

    assert completed.stdout.count("bundle written to") == 2
    assert "Process 0 of 2 joined the gloo process group" in completed.stderr
    assert "Process 1 of 2 joined the gloo process group" in completed.stderr
    assert _log_epochs(output) == {0: [1], 1: [1]}
    manifest = json.loads((output / "bundle" / "manifest.json").read_text())
    assert [fold["index"] for fold in manifest["folds"]] == [0, 1]
