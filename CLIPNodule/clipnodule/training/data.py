"""Torch data set of training nodules and the rarity-weighted sampler that draws training batches.

Each item is (pixels (9, 3, 224, 224) CLIP-normalised float32, report text, label,
rarity weight); pixels come from cached HU cubes, augmented for training. Depends on
torch, numpy and pandas (no Qt or Slicer).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from ..errors import InputError
from ..intensity import clip_normalize
from ..planes import nine_planes
from .augment import CubeAugmentation, unaugmented_cube
from .crop_cache import CropCache
from .report_text import SemanticReport
from .semantic_features import rarity_weights
from .text_augment import ReportTextAugmenter, report_part_text

logger = logging.getLogger(__name__)

# Lowest sampling weight, so the nodule with the most common feature profile is still drawn
# (min-max normalised rarity weights give it 0).
RARITY_WEIGHT_FLOOR = 0.1

# Report part used as the text of validation and test nodules.
EVALUATION_REPORT_PART = "findings"


class NoduleDataset(Dataset):
    """Nodules of a data set table as model inputs.

    `table` rows give `image_path`, `coordX/Y/Z` (LPS mm) and `malignant`. `reports[i]` is
    row i's report (None in vision-only training, where the text is ""). With
    `augmentation`, each access draws a new augmented cube and text view. Without it, the
    planes are computed once and kept in memory (1.8 MB per nodule), and the text is the
    report's findings part.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        cache: CropCache,
        reports: Sequence[SemanticReport] | None = None,
        weights: Sequence[float] | None = None,
        augmentation: CubeAugmentation | None = None,
        text_augmenter: ReportTextAugmenter | None = None,
    ) -> None:
        self.table = table.reset_index(drop=True)
        self.cache = cache
        self.reports = list(reports) if reports is not None else None
        if self.reports is not None and len(self.reports) != len(self.table):
            raise InputError(f"Got {len(self.reports)} reports for {len(self.table)} nodules; pass one report per row.")
        self.weights = np.ones(len(self.table)) if weights is None else np.asarray(weights, dtype=np.float64)
        self.labels = self.table["malignant"].astype(int).to_numpy()
        self.augmentation = augmentation
        self.text_augmenter = text_augmenter
        self._planes: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.table)

    def planes(self, index: int) -> np.ndarray:
        """Return the (9, 224, 224) planes of row `index` in [0, 1], augmented when configured."""
        if self.augmentation is None and index in self._planes:
            return self._planes[index]

        row = self.table.iloc[index]
        cube_hu = self.cache.get(row["image_path"], (row["coordX"], row["coordY"], row["coordZ"]))
        cube = self.augmentation(cube_hu) if self.augmentation is not None else unaugmented_cube(cube_hu)
        planes = nine_planes(cube)
        if self.augmentation is None:
            self._planes[index] = planes
        return planes

    def text(self, index: int) -> str:
        """Return the report text of row `index`: an augmented view in training, else the findings part."""
        if self.reports is None:
            return ""
        report = self.reports[index]
        if self.text_augmenter is not None:
            return self.text_augmenter(report)
        return report_part_text(report, EVALUATION_REPORT_PART)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, int, float]:
        pixels = clip_normalize(self.planes(index))
        return pixels, self.text(index), int(self.labels[index]), float(self.weights[index])


def sampling_weights(table: pd.DataFrame, floor: float = RARITY_WEIGHT_FLOOR) -> np.ndarray:
    """Return the rarity sampling weight of each row, in [floor, 1] (see `semantic_features.rarity_weights`)."""
    return rarity_weights(table, floor=floor)


def training_sampler(
    weights: Sequence[float],
    num_samples: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> Sampler:
    """Return the sampler of one training epoch: `num_samples` draws with replacement by weight.

    The draws depend only on (seed, epoch), so a resumed run repeats the same epoch. With
    several processes each rank gets its own share of the same draws (see
    `distributed.ShardedWeightedSampler`).
    """
    generator = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    weight_tensor = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    if world_size > 1:
        from .distributed import ShardedWeightedSampler

        return ShardedWeightedSampler(weight_tensor, num_samples, generator, rank, world_size)
    return WeightedRandomSampler(weight_tensor, num_samples=num_samples, replacement=True, generator=generator)


def init_worker(worker_id: int) -> None:
    """Limit a DataLoader worker to one SimpleITK thread (TorchIO's affine resampling uses SimpleITK).

    Workers already run in parallel, so SimpleITK's default of one thread per core would
    oversubscribe the CPU.
    """
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def collate_batch(items: list[tuple[torch.Tensor, str, int, float]]) -> dict[str, object]:
    """Stack dataset items into a batch dict: pixels (B, 9, 3, H, W), texts, labels (B,), weights (B,)."""
    pixels, texts, labels, weights = zip(*items)
    return {
        "pixels": torch.stack(pixels),
        "texts": list(texts),
        "labels": torch.tensor(labels, dtype=torch.long),
        "weights": torch.tensor(weights, dtype=torch.float32),
    }
