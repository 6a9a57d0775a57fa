"""Tests of the nine-plane extraction, the plane frames and the intensity scaling.

The nine planes are compared with the published pipeline's output stored as a fixture.
The frames are checked by sampling an analytic volume at the LPS points they give.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from clipnodule.intensity import CLIP_MEAN, CLIP_STD, HU_MAX, HU_MIN, clip_normalize, scale_hu
from clipnodule.planes import PLANE_NAMES, PLANE_SIZE, nine_planes, plane_frames
from clipnodule.preprocess import extract_planes


@pytest.fixture(scope="module")
def planes_fixture(reference_fixtures):
    with np.load(reference_fixtures / "planes_from_crop.npz") as data:
        return data["crop"], data["planes"]


def test_nine_planes_match_reference(planes_fixture):
    crop, expected = planes_fixture
    planes = nine_planes(crop)

    assert planes.shape == (9, 224, 224)
    assert planes.dtype == np.float32
    for index, name in enumerate(PLANE_NAMES):
        difference = np.abs(planes[index] - expected[index]).max()
        assert difference <= 1e-3, f"plane {index} ({name}) differs by {difference}"


def test_nine_planes_oblique_ringing_kept(planes_fixture):
    crop, _ = planes_fixture
    planes = nine_planes(crop)

    # Cubic-spline ringing lets oblique planes leave [0, 1], but the axis planes cannot.
    assert planes[:3].max() <= 1.0
    assert planes[3:].max() > 1.0


def test_nine_planes_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(100, 100, 100\)"):
        nine_planes(np.zeros((64, 64, 64), dtype=np.float32))


def test_plane_names_are_nine_unique():
    assert len(PLANE_NAMES) == 9
    assert len(set(PLANE_NAMES)) == 9
    assert PLANE_NAMES[:3] == ("axial", "coronal", "sagittal")


def test_plane_frames_axial_geometry():
    origin = np.array([10.0, -20.0, 30.0])
    frames = plane_frames(origin)
    axial = frames[0]

    assert [frame.name for frame in frames] == list(PLANE_NAMES)
    np.testing.assert_allclose(axial.center_lps, origin + [49.5, 49.5, 50.0])
    np.testing.assert_allclose(axial.column_direction_lps, [1, 0, 0])
    np.testing.assert_allclose(axial.row_direction_lps, [0, 1, 0])
    np.testing.assert_allclose(axial.normal_lps, [0, 0, 1])
    assert axial.pixel_spacing_mm == pytest.approx(49 / 223)
    assert axial.field_of_view_mm == pytest.approx(224 * 49 / 223)


def test_plane_frames_oblique_offset_and_units():
    frames = plane_frames(np.zeros(3))
    half = 0.5 / np.sqrt(2.0)

    # Plane 3: z - x = +0.7071 through the crop centre, columns along (+z, +x).
    oblique = frames[3]
    np.testing.assert_allclose(oblique.center_lps, [49.5 - half, 49.5, 49.5 + half], atol=1e-12)
    np.testing.assert_allclose(oblique.column_direction_lps, [np.sqrt(0.5), 0, np.sqrt(0.5)])
    np.testing.assert_allclose(oblique.row_direction_lps, [0, 1, 0])
    for frame in frames:
        assert np.linalg.norm(frame.row_direction_lps) == pytest.approx(1.0)
        assert np.linalg.norm(frame.column_direction_lps) == pytest.approx(1.0)
        assert float(frame.row_direction_lps @ frame.column_direction_lps) == pytest.approx(0.0, abs=1e-12)
        assert float(frame.normal_lps @ frame.row_direction_lps) == pytest.approx(0.0, abs=1e-12)


_GRADIENT_HU_PER_MM = np.array([7.0, -4.0, 11.0])
_VOLUME_CENTER_LPS = np.array([-3.0, 4.0, -12.0])


def _linear_hu(points_lps: np.ndarray) -> np.ndarray:
    """A linear HU ramp, which linear, cubic-spline and bilinear interpolation reproduce exactly.

    No gradient component along a plane normal is below 2 HU/mm, so a frame that is
    0.5 mm off shows up, and near the nodule the values stay inside [-1000, 500].
    """
    return -300.0 + (points_lps - _VOLUME_CENTER_LPS) @ _GRADIENT_HU_PER_MM


def _ramp_ct() -> sitk.Image:
    """A CT of `_linear_hu` with anisotropic spacing and flipped x and y axes."""
    size = (150, 140, 95)
    spacing = np.array([0.8, 0.9, 1.3])
    direction = np.diag([-1.0, -1.0, 1.0])
    origin = _VOLUME_CENTER_LPS + np.array([60.0, 63.0, -61.0])

    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(np.float64)
    points = origin + (index * spacing) @ direction.T
    image = sitk.GetImageFromArray(_linear_hu(points).astype(np.float32))
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(origin.tolist())
    return image


def _frame_points(frame, rows: np.ndarray, cols: np.ndarray, shift_mm: float = 0.0) -> np.ndarray:
    center_pixel = (PLANE_SIZE - 1) / 2.0
    row_offset = (rows - center_pixel)[:, None] * frame.pixel_spacing_mm * frame.row_direction_lps
    col_offset = (cols - center_pixel)[:, None] * frame.pixel_spacing_mm * frame.column_direction_lps
    return frame.center_lps + shift_mm * frame.normal_lps + row_offset + col_offset


def test_plane_frames_locate_model_pixels():
    image = _ramp_ct()
    result = extract_planes(image, (-3.2, 4.7, -12.6))
    rows = np.array([0, 30, 111, 112, 150, 223, 70, 200])
    cols = np.array([0, 190, 111, 112, 20, 223, 140, 60])

    for index, frame in enumerate(result.frames):
        expected = scale_hu(_linear_hu(_frame_points(frame, rows, cols)))
        error = np.abs(result.planes[index, rows, cols] - expected).max()
        assert error < 1e-4, f"plane {frame.name}: max error {error}"

        # 0.5 mm along the normal changes the ramp by at least 1 HU (6.7e-4 after scaling).
        shifted = scale_hu(_linear_hu(_frame_points(frame, rows, cols, shift_mm=0.5)))
        assert np.abs(result.planes[index, rows, cols] - shifted).max() > 6e-4


def test_scale_hu_matches_reference_expression():
    hu = np.array([-3000.0, -1000.0, -250.0, 0.0, 500.0, 1200.0], dtype=np.float32)
    expected = (np.clip(hu, -1000, 500) + np.float32(1000)) / np.float32(1500)

    scaled = scale_hu(hu)

    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled, expected)
    assert scaled[3] == pytest.approx(2 / 3)
    assert (HU_MIN, HU_MAX) == (-1000.0, 500.0)


def test_clip_normalize_shape_and_values():
    planes = np.stack([np.full((224, 224), value, dtype=np.float32) for value in np.linspace(0, 1, 9)])

    tensor = clip_normalize(planes)

    assert tensor.shape == (9, 3, 224, 224)
    assert tensor.dtype == torch.float32
    for channel in range(3):
        expected = (planes[4, 0, 0] - CLIP_MEAN[channel]) / CLIP_STD[channel]
        assert float(tensor[4, channel, 5, 7]) == pytest.approx(expected, rel=1e-6)


def test_clip_normalize_accepts_torch_batch():
    batch = torch.rand(2, 9, 224, 224)

    tensor = clip_normalize(batch)

    assert tensor.shape == (2, 9, 3, 224, 224)
    assert torch.equal(tensor[:, :, 0], (batch - CLIP_MEAN[0]) / CLIP_STD[0])
