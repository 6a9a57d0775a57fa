"""Files written for a scored nodule: result.json, result.csv and the planes.png montage.

No torch, Qt or Slicer imports; matplotlib runs with the non-interactive Agg backend.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .result import NoduleResult

logger = logging.getLogger(__name__)


def write_result_files(result: NoduleResult, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write result.json, result.csv and planes.png for one nodule and return their paths."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)

    paths = {
        "json": folder / "result.json",
        "csv": folder / "result.csv",
        "png": folder / "planes.png",
    }
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    write_csv_rows([result.to_csv_row()], paths["csv"])

    title = f"{result.model_name}: risk {result.risk:.3f}" + ("" if result.calibrated else " (uncalibrated)")
    save_planes_png(result.planes, paths["png"], result.plane_names, result.attention, title=title)
    logger.info("Wrote %s", ", ".join(str(path) for path in paths.values()))
    return paths


def write_csv_rows(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Write dictionaries as CSV with the union of their keys, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def save_planes_png(
    planes: np.ndarray,
    path: str | os.PathLike,
    plane_names: Sequence[str],
    attention: Sequence[float] | None = None,
    title: str | None = None,
) -> None:
    """Save the nine model planes as a 3 x 3 grid labelled with plane name and attention.

    Each panel shows the 224 x 224 image exactly as the model received it (after the
    [-1000, 500] HU window, before CLIP normalisation), without reorienting it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planes = np.asarray(planes)
    figure, axes = plt.subplots(3, 3, figsize=(9, 9.6), constrained_layout=True)
    highest = int(np.argmax(attention)) if attention is not None else -1
    for index, axis in enumerate(axes.flat):
        axis.imshow(planes[index], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        label = plane_names[index]
        if attention is not None:
            label += f"\nattention {attention[index]:.3f}"
        axis.set_title(label, fontsize=10, fontweight="bold" if index == highest else "normal")
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=12)
    figure.savefig(path, dpi=80)
    plt.close(figure)
