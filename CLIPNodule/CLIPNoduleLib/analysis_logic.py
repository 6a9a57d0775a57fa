"""One analysis in the scene: write the inputs for the worker, then turn its events into MRML results.

MRML only (no Qt): the module widget calls `start()` and, from a timer, `handle_events()`
with what `AnalysisRunner.poll()` returned, and refreshes its panel from the returned
summary. Tests drive the same class with a real scene and worker.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from . import result_nodes, scene_logic
from .analysis_runner import AnalysisRunner

logger = logging.getLogger(__name__)

RESULTS_TABLE_NAME = "CLIPNodule results"
REPORT_TEXT_NAME = "CLIPNodule report"


@dataclasses.dataclass
class AnalysisUpdate:
    """Panel changes after a batch of worker events: log lines, progress, new results, end state."""

    log_lines: list[str] = dataclasses.field(default_factory=list)
    progress_done: int | None = None
    progress_total: int | None = None
    progress_message: str | None = None
    new_results: int = 0
    finished: bool = False
    error: str | None = None
    run_time_s: float | None = None


@dataclasses.dataclass
class _NoduleDisplay:
    frames: list[Any]
    planes_path: str | None


class AnalysisSession:
    """Inputs, results and plane display of the CLIPNodule analyses of one scene."""

    def __init__(self, scene, runner: AnalysisRunner | None = None, work_dir: str | os.PathLike | None = None) -> None:
        self.scene = scene
        self.runner = runner or AnalysisRunner()
        self._work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="clipnodule-"))
        self._written_volume: tuple[str, int] | None = None
        self.results: list[dict[str, Any]] = []
        self._displays: dict[str, _NoduleDisplay] = {}
        self.current_request: int | None = None
        self.volume_node = None
        self.markups_node = None
        self.table_node = None
        self.text_node = None
        self.device_used: str | None = None

    # Inputs.

    def write_volume(self, volume_node) -> Path:
        """Write the volume as NRRD for the worker, reusing the file while the node is unchanged."""
        modified_time = max(volume_node.GetMTime(), volume_node.GetImageData().GetMTime())
        path = self._work_dir / "input_ct.nrrd"
        if self._written_volume == (volume_node.GetID(), modified_time) and path.exists():
            return path
        image = scene_logic.volume_node_to_sitk_image(volume_node, pixel_dtype=None)
        sitk.WriteImage(image, str(path), useCompression=False)
        self._written_volume = (volume_node.GetID(), modified_time)
        return path

    @staticmethod
    def source_file(volume_node) -> str | None:
        """Return the file the volume was read from, if the node is unchanged since reading."""
        storage = volume_node.GetStorageNode()
        if storage is None or not storage.GetFileName():
            return None
        if volume_node.GetModifiedSinceRead():
            return None
        return storage.GetFileName()

    def output_nodes(self):
        """Return the (table, text) result nodes, creating them when missing."""
        if self.table_node is None or self.scene.GetNodeByID(self.table_node.GetID()) is None:
            self.table_node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", RESULTS_TABLE_NAME)
        if self.text_node is None or self.scene.GetNodeByID(self.text_node.GetID()) is None:
            self.text_node = self.scene.AddNewNodeByClass("vtkMRMLTextNode", REPORT_TEXT_NAME)
        return self.table_node, self.text_node

    def start(self, volume_node, markups_node, bundle: str | os.PathLike, device: str = "auto") -> int:
        """Send every placed point of `markups_node` on `volume_node` to the worker; return the request id."""
        points = scene_logic.markups_points(markups_node)
        image_path = self.write_volume(volume_node)
        self.volume_node = volume_node
        self.markups_node = markups_node
        self.results = []
        self._displays = {}
        self.output_nodes()

        output_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self._work_dir))
        request = [{"label": point.label, "point_lps": list(point.point_lps)} for point in points]
        self.current_request = self.runner.submit(
            image_path, request, bundle, output_dir, device=device, source_path=self.source_file(volume_node),
            volume_name=volume_node.GetName(),
        )
        logger.info("Request %d: %d point(s) on %s", self.current_request, len(points), volume_node.GetName())
        return self.current_request

    # Results.

    def add_result(self, result: dict[str, Any], frames: Sequence[Any] = (), planes_path: str | None = None) -> None:
        """Store one nodule's result, refresh the table and report, and label its control point."""
        label = str(result.get("point_label") or f"P{len(self.results) + 1}")
        self.results.append(result)
        self._displays[label] = _NoduleDisplay(frames=list(frames), planes_path=planes_path)
        self.device_used = str(result.get("device", "")) or self.device_used

        table_node, text_node = self.output_nodes()
        result_nodes.update_results_table(table_node, self.results, self.markups_node)
        result_nodes.update_report_text(text_node, self.results)
        self._describe_control_point(label, float(result["risk"]))

    def _describe_control_point(self, label: str, risk: float) -> None:
        if self.markups_node is None:
            return
        for index in range(self.markups_node.GetNumberOfControlPoints()):
            if self.markups_node.GetNthControlPointLabel(index) == label:
                self.markups_node.SetNthControlPointDescription(index, f"CLIPNodule risk {risk:.3f}")

    def show_nodule(self, label: str, model_image_opacity: float = 0.0) -> list:
        """Put the nine plane views on the planes of the nodule `label`; return the slice nodes."""
        from .predict_worker import frame_from_dict

        display = self._displays[label]
        result = next(item for item in self.results if item.get("point_label") == label)
        frames = [frame_from_dict(frame) if isinstance(frame, dict) else frame for frame in display.frames]
        model_images = None
        if display.planes_path and Path(display.planes_path).exists():
            planes = np.load(display.planes_path)
            model_images = scene_logic.model_image_volumes(self.scene, planes, frames)
        return scene_logic.show_planes_in_views(
            self.scene, frames, self.volume_node, result.get("attention"), model_images, model_image_opacity
        )

    def cancel(self) -> None:
        """Kill the worker and forget the running request.

        The request is cleared first, so the worker's "exited" event that follows the kill
        is not reported as a crash. The runner's "cancelled" event ends the run.
        """
        self.current_request = None
        self.runner.cancel()

    def handle_events(self, events: Sequence[dict[str, Any]]) -> AnalysisUpdate:
        """Apply worker events to the scene and return what the panel should show."""
        update = AnalysisUpdate()
        for event in events:
            kind = event.get("event")
            if kind == "log":
                update.log_lines.append(str(event.get("message", "")))
            elif kind == "progress":
                update.progress_done = int(event.get("done", 0))
                update.progress_total = int(event.get("total", 0))
                update.progress_message = str(event.get("message", ""))
            elif kind == "result":
                self.add_result(event["result"], event.get("frames", []), event.get("planes_path"))
                update.new_results += 1
                update.log_lines.append(f"{event.get('label')}: risk {float(event['result']['risk']):.3f}")
            elif kind == "finished" and event.get("request_id") == self.current_request:
                update.finished = True
                update.run_time_s = float(event.get("run_time_s", 0.0))
                self.current_request = None
            elif kind == "error":
                update.error = str(event.get("message", "unknown error"))
                update.finished = True
                self.current_request = None
            elif kind == "exited" and self.current_request is not None and not update.finished:
                update.error = f"The prediction worker exited (status {event.get('returncode')}); see the log."
                update.finished = True
                self.current_request = None
            elif kind == "cancelled":
                update.error = "Cancelled."
                update.finished = True
                self.current_request = None
        return update
