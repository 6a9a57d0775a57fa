"""Typed parameters of the CLIPNodule module: a plain dataclass that validates, and its copy from the parameter node.

`AnalysisParameters` has no Slicer imports and is what the logic and the tests use.
The `parameterNodeWrapper` class itself (`CLIPNoduleParameterNode`) is defined at the
top level of CLIPNodule.py, because `slicer.parameterNodeWrapper` needs Qt and resolves
the field annotations against the globals of the module that defines the class.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cuda", "cpu")
LOCAL_BUNDLE_CHOICE = "Local bundle folder..."

# vtkMRMLMarkupsNode events after which the number of placed points can differ: a point was
# placed, unset (position undefined again) or deleted.
POINT_COUNT_EVENT_NAMES: tuple[str, ...] = (
    "PointPositionDefinedEvent",
    "PointPositionUndefinedEvent",
    "PointRemovedEvent",
)


@dataclasses.dataclass
class AnalysisParameters:
    """Everything one analysis run needs, copied out of the parameter node.

    volume_name and markups_name are None when nothing is selected; defined_point_count
    is the number of placed control points. model_name is a registry entry name, or
    LOCAL_BUNDLE_CHOICE to use local_bundle_path (a bundle folder with manifest.json).
    model_image_opacity (0 to 1) is how strongly the model's own plane images cover the
    CT in the nine views.
    """

    volume_name: str | None = None
    markups_name: str | None = None
    defined_point_count: int = 0
    model_name: str = ""
    local_bundle_path: str = ""
    device: str = "auto"
    model_image_opacity: float = 0.0
    # NOTE: no widget sets semantic_report and the worker request does not carry it, so the
    # worker always returns the zero-shot report that the predictor computes.
    semantic_report: bool = True

    def isValid(self, known_models: tuple[str, ...] | list[str] = ()) -> tuple[bool, str]:
        """Return (True, "") when a run can start, else (False, the reason and the fix)."""
        if not self.volume_name:
            return False, "Select the CT volume to analyse."
        if not self.markups_name:
            return False, "Select or create a point list and place a point on the nodule."
        if self.defined_point_count < 1:
            return False, f"The point list {self.markups_name!r} has no placed points; click the nodule centre."
        if self.device not in DEVICE_CHOICES:
            return False, f"Unknown device {self.device!r}; choose one of {', '.join(DEVICE_CHOICES)}."
        if not 0.0 <= float(self.model_image_opacity) <= 1.0:
            return False, f"The model image opacity {self.model_image_opacity} must be between 0 and 1."

        if self.model_name == LOCAL_BUNDLE_CHOICE:
            if not self.local_bundle_path:
                return False, "Choose the local model bundle folder (the folder that contains manifest.json)."
            manifest = Path(self.local_bundle_path) / "manifest.json"
            if not manifest.is_file():
                return False, f"No manifest.json in {self.local_bundle_path!r}; choose a model bundle folder."
        elif not self.model_name:
            return False, "Choose a model."
        elif known_models and self.model_name not in known_models:
            return False, f"Unknown model {self.model_name!r}; choose one of {', '.join(known_models)}."
        return True, ""


def parameters_from_node(parameter_node) -> AnalysisParameters:
    """Copy a CLIPNodule parameter node into an `AnalysisParameters`."""
    volume = parameter_node.inputVolume
    points = parameter_node.inputPoints
    defined = 0
    if points is not None:
        import slicer

        defined = sum(
            1
            for index in range(points.GetNumberOfControlPoints())
            if points.GetNthControlPointPositionStatus(index) == slicer.vtkMRMLMarkupsNode.PositionDefined
        )
    local_path = str(parameter_node.localBundlePath) if parameter_node.localBundlePath else ""
    return AnalysisParameters(
        volume_name=volume.GetName() if volume is not None else None,
        markups_name=points.GetName() if points is not None else None,
        defined_point_count=defined,
        model_name=parameter_node.modelName,
        local_bundle_path="" if local_path in ("", ".") else local_path,
        device=parameter_node.device,
        model_image_opacity=float(parameter_node.modelImageOpacity),
        semantic_report=bool(parameter_node.semanticReport),
    )
