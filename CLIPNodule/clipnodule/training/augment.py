"""Training-time augmentation of the nodule cube before the nine planes are cut.

Centre jitter picks a shifted 100 mm cube out of a cached larger cube; TorchIO then flips,
rotates, adds noise and changes gamma on the [0, 1] cube. Depends on numpy, torch and
torchio (no Qt or Slicer). Inference never augments.
"""

from __future__ import annotations

import numpy as np
import torch

from ..crop import CROP_SIZE
from ..errors import InputError
from ..intensity import scale_hu
from .crop_cache import JITTER_MARGIN_MM, centre_crop

# Value of 0 HU (the crop's padding) after the HU window scaling to [0, 1].
PADDING_VALUE_01 = float(scale_hu(np.zeros(1, dtype=np.float32))[0])


class CentreJitter:
    """Random shift of the nodule centre by whole 1 mm voxels, independently per axis.

    Each of the z, y and x shifts is drawn uniformly from the integers in
    [-max_shift_mm, max_shift_mm] with torch's random generator, so DataLoader workers
    draw different shifts. Input: a cube of side 100 + 2 * margin voxels (margin >=
    max_shift_mm) centred on the nodule; output: the 100-voxel cube around the shifted centre.
    """

    def __init__(self, max_shift_mm: int = JITTER_MARGIN_MM) -> None:
        if max_shift_mm < 0:
            raise InputError(f"The maximum centre jitter must be >= 0 mm, got {max_shift_mm}.")
        self.max_shift_mm = int(max_shift_mm)

    def sample_shift(self) -> tuple[int, int, int]:
        values = torch.randint(-self.max_shift_mm, self.max_shift_mm + 1, (3,))
        return tuple(int(value) for value in values)

    def __call__(self, cube: np.ndarray) -> np.ndarray:
        return centre_crop(cube, self.sample_shift(), size=CROP_SIZE)


def volume_transform(
    flip_probability: float = 0.5,
    max_rotation_degrees: float = 10.0,
    noise_std: float = 0.02,
    max_log_gamma: float = 0.02,
):
    """Return the TorchIO pipeline applied to a (1, 100, 100, 100) cube in [0, 1] on a 1 mm grid.

    Steps, in order:
    - RandomFlip: each of the three spatial axes is flipped with `flip_probability`.
    - RandomAffine: rotation about the cube centre by angles drawn uniformly from
      [-max_rotation_degrees, max_rotation_degrees] around each axis, no scaling or
      translation, linear interpolation, voxels from outside filled with 0 HU (2/3).
    - RandomNoise: Gaussian noise with mean 0 and a standard deviation drawn uniformly
      from [0, noise_std] per call (TorchIO's meaning of `std=noise_std`), in [0, 1] units.
    - RandomGamma: values raised to gamma = exp(u), u uniform in [-max_log_gamma, max_log_gamma]
      (TorchIO keeps the sign of negative values).
    A flip or rotation moves the nodule voxel (index 50) by at most about one voxel,
    because TorchIO flips and rotates about the cube centre at index 49.5.
    """
    import torchio as tio

    return tio.Compose(
        [
            tio.RandomFlip(axes=(0, 1, 2), flip_probability=flip_probability),
            tio.RandomAffine(
                scales=0.0,
                degrees=max_rotation_degrees,
                translation=0.0,
                center="image",
                default_pad_value=PADDING_VALUE_01,
                image_interpolation="linear",
            ),
            tio.RandomNoise(mean=0.0, std=(0.0, noise_std)),
            tio.RandomGamma(log_gamma=(-max_log_gamma, max_log_gamma)),
        ]
    )


class CubeAugmentation:
    """Centre jitter, HU window scaling and the TorchIO pipeline, from a cached HU cube to a [0, 1] cube.

    Input: a float32 HU cube `cube[z, y, x]` of side 100 + 2 * margin on the 1 mm LPS
    grid. Output: a float32 (100, 100, 100) cube for `planes.nine_planes`; noise can
    take values slightly outside [0, 1].
    """

    def __init__(self, jitter: CentreJitter | None = None, transform=None) -> None:
        self.jitter = jitter if jitter is not None else CentreJitter()
        self.transform = transform if transform is not None else volume_transform()

    def __call__(self, cube_hu: np.ndarray) -> np.ndarray:
        import torchio as tio

        shifted = scale_hu(self.jitter(cube_hu))
        image = tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(shifted))[None], affine=np.eye(4))
        augmented = self.transform(image)
        return augmented.data[0].numpy().astype(np.float32, copy=False)


def unaugmented_cube(cube_hu: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Return the nodule-centred [0, 1] cube of a cached HU cube, as inference computes it."""
    return scale_hu(centre_crop(cube_hu, (0, 0, 0), size=size))

