"""MRML logic of the CLIPNodule Slicer module against a real scene from the slicer-core wheel.

Covers: volume node and markups point to library inputs (same risk as the library on the
file), the nine plane views' SliceToRAS, the model image volumes, the result table and
report nodes, CSV/JSON export, and the prediction worker process. Nothing is mocked;
the model is a random tiny CLIP saved as a real bundle.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML wheel) is not installed")
pytest.importorskip("vtk", reason="vtk (installed with slicer-core) is not importable")
sitk = pytest.importorskip("SimpleITK")

MODULE_DIR = Path(__file__).resolve().parents[1] / "CLIPNodule"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from CLIPNoduleLib import layout, result_nodes, scene_logic, slice_orientation  # noqa: E402
from CLIPNoduleLib.analysis_logic import AnalysisSession  # noqa: E402
from CLIPNoduleLib.analysis_runner import AnalysisRunner, child_environment  # noqa: E402

CASE = "caseB_n0"
RAS_FLIP = np.diag([-1.0, -1.0, 1.0])


def slicer_preset(name: str) -> np.ndarray:
    """Return Slicer's own radiological orientation preset (3 x 3) from vtkMRMLSliceNode."""
    import vtk

    matrix = vtk.vtkMatrix3x3()
    getattr(slicer.vtkMRMLSliceNode, f"Get{name}SliceToRASMatrix")(matrix)
    return np.array([[matrix.GetElement(row, column) for column in range(3)] for row in range(3)])


def matrix_array(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


@pytest.fixture(scope="module")
def case_row(reference_fixtures: Path) -> dict[str, str]:
    with open(reference_fixtures / "crop_from_ct_cases.csv", newline="") as stream:
        rows = {row["case"]: row for row in csv.DictReader(stream)}
    return rows[CASE]


@pytest.fixture(scope="module")
def ct_path(reference_fixtures: Path, case_row: dict[str, str]) -> Path:
    return reference_fixtures / case_row["image_file"]


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def load_volume_with_slicer_reader(scene, path: Path):
    """Read a CT file into a scalar volume node with Slicer's own archetype reader."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(volume), f"Slicer's reader could not read {path}"
    volume.SetAndObserveStorageNodeID(storage.GetID())
    return volume


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path):
    from clipnodule.predictor import Predictor

    return Predictor.from_bundle(tiny_bundle, device="cpu")


# Volume and markups conversion.


def test_volume_node_geometry_matches_file(scene, ct_path: Path):
    volume = load_volume_with_slicer_reader(scene, ct_path)
    from_node = scene_logic.volume_node_to_sitk_image(volume)
    from_file = sitk.ReadImage(str(ct_path))

    assert from_node.GetSize() == from_file.GetSize()
    np.testing.assert_allclose(from_node.GetOrigin(), from_file.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(from_node.GetSpacing(), from_file.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(from_node.GetDirection(), from_file.GetDirection(), atol=1e-6)
    # ct_caseB is stored RAS, so its ITK (LPS) direction is diag(-1, -1, 1).
    np.testing.assert_allclose(np.reshape(from_node.GetDirection(), (3, 3)), np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_node), sitk.GetArrayFromImage(from_file).astype(np.float32))
    assert from_node.GetPixelID() == sitk.sitkFloat32


def test_volume_under_linear_transform(scene, ct_path: Path):
    import vtk

    volume = load_volume_with_slicer_reader(scene, ct_path)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)  # 10 mm towards R
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())

    moved = scene_logic.volume_node_to_sitk_image(volume)
    original = sitk.ReadImage(str(ct_path))
    # +10 mm in R is -10 mm in LPS x.
    np.testing.assert_allclose(np.subtract(moved.GetOrigin(), original.GetOrigin()), [-10.0, 0.0, 0.0], atol=1e-4)


def test_volume_without_image_rejected(scene):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="has no voxels"):
        scene_logic.volume_node_to_sitk_image(volume)


def test_markups_points_ras_to_lps(scene):
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    markups.AddControlPoint(20.1, -10.7, 15.3, "nodule A")
    markups.AddControlPoint(-5.0, 4.0, 3.0, "")
    markups.SetNthControlPointLabel(1, "")  # Slicer fills in "points-2"; clear it again
    markups.AddControlPoint(1.0, 2.0, 3.0, "not placed")
    markups.UnsetNthControlPointPosition(2)

    points = scene_logic.markups_points(markups)

    assert [point.label for point in points] == ["nodule A", "P2"]
    np.testing.assert_allclose(points[0].point_lps, [-20.1, 10.7, 15.3])
    np.testing.assert_allclose(points[0].point_ras, [20.1, -10.7, 15.3])
    np.testing.assert_allclose(points[1].point_lps, [5.0, -4.0, 3.0])


def test_point_count_events_cover_changes(scene):
    # The Analyze button is re-checked on these events only, so every change of the placed
    # point count must raise at least one of them.
    import types

    from CLIPNoduleLib import parameters

    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    fired = []
    for name in parameters.POINT_COUNT_EVENT_NAMES:
        event = getattr(slicer.vtkMRMLMarkupsNode, name)
        markups.AddObserver(event, lambda caller, event_id, name=name: fired.append(name))
    parameter_node = types.SimpleNamespace(
        inputVolume=None, inputPoints=markups, modelName="", localBundlePath="", device="auto",
        modelImageOpacity=0.0, semanticReport=True,
    )

    def placed_count() -> int:
        return parameters.parameters_from_node(parameter_node).defined_point_count

    changes = {
        "place": lambda: markups.AddControlPoint(1.0, 2.0, 3.0, "N1"),
        "unset": lambda: markups.UnsetNthControlPointPosition(0),
        "place again": lambda: markups.SetNthControlPointPosition(0, 1.0, 2.0, 3.0),
        "delete": lambda: markups.RemoveNthControlPoint(0),
    }
    expected_counts = {"place": 1, "unset": 0, "place again": 1, "delete": 0}
    for change, apply_change in changes.items():
        fired.clear()
        apply_change()
        assert placed_count() == expected_counts[change], change
        assert fired, f"no observed event after '{change}'"


def test_markups_without_points_rejected(scene):
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "empty list")
    with pytest.raises(ValueError, match="no placed points"):
        scene_logic.markups_points(markups)


def test_scene_inputs_give_library_risk(scene, ct_path: Path, case_row, predictor):
    volume = load_volume_with_slicer_reader(scene, ct_path)
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nodules")
    ras = [float(case_row[f"coord{axis}_RAS"]) for axis in "XYZ"]
    markups.AddControlPoint(*ras, "B0")

    point = scene_logic.markups_points(markups)[0]
    from_scene = predictor.predict(scene_logic.volume_node_to_sitk_image(volume), point.point_lps)

    lps_from_csv = [float(case_row[f"coord{axis}"]) for axis in "XYZ"]
    from_file = predictor.predict(str(ct_path), lps_from_csv, coordinate_system="LPS")

    assert abs(from_scene.risk - from_file.risk) < 1e-4
    np.testing.assert_allclose(from_scene.attention, from_file.attention, atol=1e-5)
    np.testing.assert_allclose(from_scene.point_lps, lps_from_csv, atol=1e-9)
    np.testing.assert_allclose(from_scene.planes, from_file.planes, atol=1e-5)


# Nine plane views.


@pytest.fixture(scope="module")
def frames(case_row):
    from clipnodule.planes import plane_frames

    origin = [float(case_row[f"crop_origin_lps_{axis}"]) for axis in "xyz"]
    return plane_frames(origin)


def test_slice_views_on_model_planes(scene, frames):
    attention = np.linspace(0.05, 0.15, 9)
    slice_nodes = scene_logic.show_planes_in_views(scene, frames, attention=attention)

    assert [node.GetLayoutName() for node in slice_nodes] == list(layout.PLANE_VIEW_NAMES)
    for frame, node, weight in zip(frames, slice_nodes, attention):
        slice_to_ras = matrix_array(node.GetSliceToRAS())
        rotation = slice_to_ras[:3, :3]
        normal_ras = RAS_FLIP @ np.asarray(frame.normal_lps)
        center_ras = RAS_FLIP @ np.asarray(frame.center_lps)

        view_normal = rotation[:, 2]
        assert 1.0 - abs(float(view_normal @ normal_ras)) < 1e-6, frame.name
        assert abs(float(normal_ras @ (slice_to_ras[:3, 3] - center_ras))) < 0.5, frame.name
        assert np.linalg.norm(slice_to_ras[:3, 3] - center_ras) < 0.5, frame.name
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-9)

        assert node.GetAttribute(scene_logic.VIEW_TITLE_ATTRIBUTE) == f"{frame.name}  attention {weight:.3f}"
        assert node.GetFieldOfView()[0] == pytest.approx(frame.field_of_view_mm)


def test_slice_views_radiological_orientation(scene, frames):
    slice_nodes = scene_logic.show_planes_in_views(scene, frames)
    rotations = {frame.name: matrix_array(node.GetSliceToRAS())[:3, :3] for frame, node in zip(frames, slice_nodes)}

    np.testing.assert_allclose(rotations["axial"], slicer_preset("Axial"), atol=1e-9)
    np.testing.assert_allclose(rotations["coronal"], slicer_preset("Coronal"), atol=1e-9)
    np.testing.assert_allclose(rotations["sagittal"], slicer_preset("Sagittal"), atol=1e-9)

    for name, rotation in rotations.items():
        screen_right, screen_up = rotation[:, 0], rotation[:, 1]
        if name == "axial":
            assert screen_up[1] > 0.99, "axial: anterior must be up"
        else:
            assert screen_up[2] > 0.5, f"{name}: superior must be up"
        if abs(screen_right[0]) > 1e-6:
            assert screen_right[0] < 0, f"{name}: patient right must be on the screen's left"
        else:
            assert screen_right[1] < 0, f"{name}: posterior must be on the screen's right"


def test_oblique_planes_superior_up(frames):
    for frame in frames[3:]:
        matrix = slice_orientation.slice_to_ras_matrix(frame)
        up = matrix[:3, 1]
        superior_in_plane = np.array([0.0, 0.0, 1.0]) - (RAS_FLIP @ frame.normal_lps)[2] * (RAS_FLIP @ frame.normal_lps)
        superior_in_plane /= np.linalg.norm(superior_in_plane)
        np.testing.assert_allclose(up, superior_in_plane, atol=1e-9, err_msg=frame.name)


def test_field_of_view_outlines(scene, frames):
    slice_nodes = scene_logic.show_planes_in_views(scene, frames)
    curves = [
        node
        for node in scene.GetNodesByClass("vtkMRMLMarkupsClosedCurveNode")
        if node.GetAttribute(scene_logic.FIELD_OF_VIEW_ATTRIBUTE) is not None
    ]
    assert len(curves) == 9
    for curve in curves:
        index = int(curve.GetAttribute(scene_logic.FIELD_OF_VIEW_ATTRIBUTE))
        frame, slice_node = frames[index], slice_nodes[index]
        corners = slicer.util.arrayFromMarkupsControlPoints(curve)
        normal_ras = RAS_FLIP @ frame.normal_lps
        center_ras = RAS_FLIP @ frame.center_lps
        np.testing.assert_allclose((corners - center_ras) @ normal_ras, 0.0, atol=1e-6)
        side = np.linalg.norm(corners[1] - corners[0])
        assert side == pytest.approx(frame.field_of_view_mm)
        assert curve.GetDisplayNode().GetViewNodeIDs() == (slice_node.GetID(),)

    # Showing the planes again moves the outlines instead of adding new ones.
    scene_logic.show_planes_in_views(scene, frames)
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsClosedCurveNode") == 9


def test_model_images_placed_on_planes(scene, frames):
    planes = np.random.default_rng(0).random((9, 224, 224), dtype=np.float32)
    nodes = scene_logic.model_image_volumes(scene, planes, frames)

    for frame, node, plane in zip(frames, nodes, planes):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node)[0], plane)
        ijk_to_ras = np.eye(4)
        import vtk

        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        ijk_to_ras = matrix_array(matrix)
        for row, column in [(0, 0), (0, 223), (223, 0), (100, 37)]:
            world_ras = (ijk_to_ras @ [column, row, 0, 1])[:3]
            expected_lps = (
                frame.center_lps
                + (row - 111.5) * frame.pixel_spacing_mm * frame.row_direction_lps
                + (column - 111.5) * frame.pixel_spacing_mm * frame.column_direction_lps
            )
            np.testing.assert_allclose(RAS_FLIP @ world_ras, expected_lps, atol=1e-9)


def test_model_image_matches_ct(scene, ct_path: Path, case_row, predictor):
    """The axial model image, placed in the scene, shows the CT that lies at those positions."""
    image = sitk.ReadImage(str(ct_path), sitk.sitkFloat32)
    lps = [float(case_row[f"coord{axis}"]) for axis in "XYZ"]
    result = predictor.predict(image, lps)
    node = scene_logic.model_image_volumes(scene, result.planes, result.frames)[0]

    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = matrix_array(matrix)
    interpolator_values, model_values = [], []
    for row in range(20, 204, 8):
        for column in range(20, 204, 8):
            world_lps = RAS_FLIP @ (ijk_to_ras @ [column, row, 0, 1])[:3]
            index = image.TransformPhysicalPointToContinuousIndex([float(v) for v in world_lps])
            if not all(0 <= index[axis] <= image.GetSize()[axis] - 1 for axis in range(3)):
                continue
            hu = sitk.Resample(image, [1, 1, 1], sitk.Transform(), sitk.sitkLinear, world_lps.tolist(),
                               [1.0, 1.0, 1.0], image.GetDirection(), -1000.0)
            interpolator_values.append(np.clip(sitk.GetArrayFromImage(hu)[0, 0, 0], -1000, 500))
            model_values.append(float(slicer.util.arrayFromVolume(node)[0, row, column]) * 1500.0 - 1000.0)
    correlation = np.corrcoef(interpolator_values, model_values)[0, 1]
    assert len(model_values) > 100
    assert correlation > 0.9


# Results table, report and export.


@pytest.fixture(scope="module")
def scored_case(predictor, ct_path: Path, case_row):
    """The library's result for the case read from its file: (result.json dictionary with point_label, NoduleResult)."""
    lps = [float(case_row[f"coord{axis}"]) for axis in "XYZ"]
    result = predictor.predict(str(ct_path), lps)
    document = result.to_dict()
    document["point_label"] = "B0"
    return document, result


def test_table_and_text_hold_result(scene, scored_case, tmp_path):
    document, result = scored_case
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nodules")
    markups.AddControlPoint(*result.point_ras, "B0")
    session = AnalysisSession(scene, runner=AnalysisRunner(), work_dir=tmp_path)
    session.markups_node = markups
    session.add_result(json.loads(json.dumps(document)), result.frames, None)

    table = session.table_node.GetTable()
    assert table.GetNumberOfRows() == 1
    column = lambda name: table.GetColumnByName(name)  # noqa: E731
    assert column("point_label").GetValue(0) == "B0"
    assert column("risk").GetValue(0) == pytest.approx(document["risk"], abs=1e-12)
    assert column("raw_ensemble").GetValue(0) == pytest.approx(document["raw_ensemble"], abs=1e-12)
    for fold in document["folds"]:
        assert column(f"raw_{fold['index']}").GetValue(0) == pytest.approx(fold["raw_probability"], abs=1e-12)
        assert column(f"calibrated_{fold['index']}").GetValue(0) == pytest.approx(
            fold["calibrated_probability"], abs=1e-12
        )
    for index, weight in enumerate(document["attention"]):
        assert column(f"attention_{index}").GetValue(0) == pytest.approx(weight, abs=1e-12)
        assert session.table_node.GetColumnLongName(f"attention_{index}") == f"attention {document['plane_names'][index]}"
    np.testing.assert_allclose(
        [column(name).GetValue(0) for name in ("point_R", "point_A", "point_S")], document["point_ras"], atol=1e-9
    )
    findings = result_nodes.top_findings(document["semantic_report"], result_nodes.TOP_FINDINGS_IN_TABLE)
    assert column("top_findings").GetValue(0) == result_nodes.format_findings(findings)
    assert result_nodes.results_from_table(session.table_node) == [document]
    assert markups.GetNthControlPointDescription(0) == f"CLIPNodule risk {document['risk']:.3f}"

    report = session.text_node.GetText()
    assert f"One-year malignancy risk: {document['risk']:.3f}" in report
    for name, weight in zip(document["plane_names"], document["attention"]):
        assert f"    {name}: {weight:.3f}" in report
    if document["semantic_report"]:
        feature, value, probability = findings[0]
        assert f"    {feature}: {value} ({probability:.2f})" in report


def test_export_csv_and_json(scene, scored_case, tmp_path):
    document = scored_case[0]
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode")
    result_nodes.update_results_table(table_node, [document])

    csv_path = result_nodes.export_results_csv(table_node, tmp_path / "results.csv")
    with open(csv_path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 1
    assert float(rows[0]["risk"]) == pytest.approx(document["risk"], rel=1e-5)
    assert rows[0]["point_label"] == "B0"

    json_path = result_nodes.export_results_json([document], tmp_path / "results.json")
    assert json.loads(json_path.read_text()) == [document]


def test_layout_registers_nine_views(scene):
    layout_node = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    layout_id = layout.register_layout(layout_node)
    assert layout_node.IsLayoutDescription(layout_id)
    description = layout_node.GetLayoutDescription(layout_id)
    for name in layout.PLANE_VIEW_NAMES:
        assert f'singletontag="{name}"' in description

    # Slicer's layout logic creates the views from the description, matched by name.
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)
    layout_node.SetViewArrangement(layout_id)
    names = {node.GetLayoutName() for node in scene.GetNodesByClass("vtkMRMLSliceNode")}
    assert set(layout.PLANE_VIEW_NAMES) <= names
    assert len(scene_logic.plane_slice_nodes(scene)) == 9
    assert scene.GetNumberOfNodesByClass("vtkMRMLSliceNode") == len(names)


# Worker process.


def test_worker_process_end_to_end(scene, ct_path, case_row, tiny_bundle, scored_case, tmp_path):
    volume = load_volume_with_slicer_reader(scene, ct_path)
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nodules")
    markups.AddControlPoint(*[float(case_row[f"coord{axis}_RAS"]) for axis in "XYZ"], "B0")

    runner = AnalysisRunner(environment=child_environment([MODULE_DIR]))
    session = AnalysisSession(scene, runner=runner, work_dir=tmp_path)
    try:
        request_id = session.start(volume, markups, tiny_bundle, device="cpu")
        events = runner.wait_for(request_id, timeout_s=240)
    finally:
        runner.stop()
    kinds = [event["event"] for event in events]
    assert "error" not in kinds, [event for event in events if event["event"] == "error"]
    assert kinds.count("result") == 1
    assert kinds[-1] == "finished"

    update = session.handle_events(events)
    assert update.finished and update.error is None
    assert update.new_results == 1
    assert update.progress_done == update.progress_total == 1

    expected = scored_case[1]
    assert session.results[0]["risk"] == pytest.approx(expected.risk, abs=1e-4)
    assert session.results[0]["input_sha256"] == expected.input_sha256

    slice_nodes = session.show_nodule("B0", model_image_opacity=0.4)
    axial = matrix_array(slice_nodes[0].GetSliceToRAS())
    np.testing.assert_allclose(axial[:3, 3], RAS_FLIP @ expected.frames[0].center_lps, atol=1e-6)
    composite = scene_logic.plane_slice_composite_nodes(scene)[0]
    assert composite.GetBackgroundVolumeID() == volume.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)


def test_cancel_is_not_reported_as_crash(scene, tmp_path):
    import time

    runner = AnalysisRunner()
    session = AnalysisSession(scene, runner=runner, work_dir=tmp_path)
    runner.start()
    deadline = time.monotonic() + 60.0
    ready = []
    while not ready and time.monotonic() < deadline:
        ready = [event for event in runner.poll() if event.get("event") == "ready"]
        time.sleep(0.05)
    assert ready, "the worker process did not start"

    # Stands for a request in progress; a real predict request needs a model bundle.
    session.current_request = 7
    session.cancel()
    assert not runner.running

    events = []
    while time.monotonic() < deadline and {"exited", "cancelled"} - {event.get("event") for event in events}:
        events += runner.poll()
        time.sleep(0.05)
    exited = [event for event in events if event.get("event") == "exited"]
    cancelled = [event for event in events if event.get("event") == "cancelled"]
    assert exited and cancelled

    # Worst order for the panel: the kill's exit status arrives in an earlier poll than "cancelled".
    first = session.handle_events(exited)
    assert first.error is None
    assert not first.finished
    second = session.handle_events(cancelled)
    assert second.finished
    assert second.error == "Cancelled."
    assert session.current_request is None


def test_worker_rejects_bad_requests():
    import io

    from CLIPNoduleLib.predict_worker import PredictWorker

    output = io.StringIO()
    requests = io.StringIO('{not json\n{"command": "train", "request_id": 4}\n{"command": "quit"}\n{"command": "predict"}\n')
    assert PredictWorker(output).serve(requests) == 0

    events = [json.loads(line) for line in output.getvalue().splitlines()]
    assert events[0] == {"event": "ready"}
    assert events[1]["event"] == "error"
    assert events[1]["message"].startswith("Invalid request line")
    assert events[2] == {"event": "error", "request_id": 4, "message": "Unknown command 'train'; use 'predict' or 'quit'."}
    assert len(events) == 3, "requests after quit must not be served"


def test_worker_reports_library_errors(tmp_path, ct_path):
    import io

    from CLIPNoduleLib.predict_worker import PredictWorker

    def failing_factory(bundle, device):
        from clipnodule.errors import BundleError

        raise BundleError(f"No manifest.json in {bundle}")

    request = {"command": "predict", "request_id": 9, "image": str(ct_path), "points": [],
               "bundle": str(tmp_path), "device": "cpu", "output_dir": str(tmp_path / "out")}
    output = io.StringIO()
    PredictWorker(output, predictor_factory=failing_factory).serve(io.StringIO(json.dumps(request) + "\n"))

    events = [json.loads(line) for line in output.getvalue().splitlines()]
    assert events[-1] == {"event": "error", "request_id": 9, "message": f"BundleError: No manifest.json in {tmp_path}"}


def test_worker_rejects_non_ct_volume(tmp_path):
    import io

    from CLIPNoduleLib.predict_worker import PredictWorker

    image = sitk.Image(40, 40, 20, sitk.sitkInt16)  # all zeros: no air, not a CT in HU
    image.SetSpacing([1.0, 1.0, 2.0])
    path = tmp_path / "not_ct.nrrd"
    sitk.WriteImage(image, str(path))

    def unused_factory(bundle, device):
        raise AssertionError("the model must not load for an invalid volume")

    request = {"command": "predict", "request_id": 2, "image": str(path), "volume_name": "Phantom",
               "points": [{"label": "A", "point_lps": [20.0, 20.0, 20.0]}], "bundle": str(tmp_path),
               "device": "cpu", "output_dir": str(tmp_path / "out")}
    output = io.StringIO()
    PredictWorker(output, predictor_factory=unused_factory).serve(io.StringIO(json.dumps(request) + "\n"))

    error = [json.loads(line) for line in output.getvalue().splitlines()][-1]
    assert error["event"] == "error"
    assert error["request_id"] == 2
    assert error["message"].startswith("InputError: The volume 'Phantom'")
