"""Worker process that scores nodules for the CLIPNodule module, so the Slicer GUI does not block while torch runs.

Run as `python -m CLIPNoduleLib.predict_worker` with the module folder on PYTHONPATH.
No Qt and no MRML. It keeps loaded models between requests and exchanges JSON lines:

stdin, one request per line:
    {"command": "predict", "request_id": 1, "image": "ct.nrrd", "volume_name": "CT", "source_path": null,
     "points": [{"label": "F-1", "point_lps": [x, y, z]}], "bundle": "folder",
     "device": "auto", "output_dir": "folder"}
    {"command": "quit"}

stdout, one event per line (nothing else is written to stdout):
    {"event": "ready"}
    {"event": "log", "level": "INFO", "message": "..."}
    {"event": "progress", "request_id": 1, "done": 0, "total": 2, "message": "..."}
    {"event": "result", "request_id": 1, "label": "F-1", "result": {...result.json...},
     "planes_path": "folder/F-1_planes.npy", "frames": [{...PlaneFrame...}, ...]}
    {"event": "finished", "request_id": 1, "run_time_s": 3.2}
    {"event": "error", "request_id": 1, "message": "..."}
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

_write_lock = threading.Lock()


def frame_to_dict(frame) -> dict[str, Any]:
    """Return a JSON-ready dictionary of a `clipnodule.planes.PlaneFrame`."""
    return {
        "name": frame.name,
        "center_lps": [float(value) for value in frame.center_lps],
        "column_direction_lps": [float(value) for value in frame.column_direction_lps],
        "row_direction_lps": [float(value) for value in frame.row_direction_lps],
        "normal_lps": [float(value) for value in frame.normal_lps],
        "pixel_spacing_mm": float(frame.pixel_spacing_mm),
        "field_of_view_mm": float(frame.field_of_view_mm),
    }


def frame_from_dict(values: dict[str, Any]):
    """Rebuild a `clipnodule.planes.PlaneFrame` from `frame_to_dict` output."""
    import numpy as np

    from clipnodule.planes import PlaneFrame

    return PlaneFrame(
        name=str(values["name"]),
        center_lps=np.asarray(values["center_lps"], dtype=np.float64),
        column_direction_lps=np.asarray(values["column_direction_lps"], dtype=np.float64),
        row_direction_lps=np.asarray(values["row_direction_lps"], dtype=np.float64),
        normal_lps=np.asarray(values["normal_lps"], dtype=np.float64),
        pixel_spacing_mm=float(values["pixel_spacing_mm"]),
        field_of_view_mm=float(values["field_of_view_mm"]),
    )


def safe_file_stem(label: str) -> str:
    """Return `label` reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._") or "nodule"


def emit(stream: TextIO, event: dict[str, Any]) -> None:
    """Write one event as a JSON line and flush, so the parent process receives it at once."""
    with _write_lock:
        stream.write(json.dumps(event) + "\n")
        stream.flush()


class _EventLogHandler(logging.Handler):
    """Forwards log records of the library to the parent as "log" events."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(level=logging.INFO)
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D401 - logging API name
        emit(self._stream, {"event": "log", "level": record.levelname, "message": self.format(record)})


class PredictWorker:
    """Serves predict requests; keeps one loaded Predictor per (bundle folder, device)."""

    def __init__(self, output: TextIO, predictor_factory: Callable[[str, str], Any] | None = None) -> None:
        self._output = output
        self._predictors: dict[tuple[str, str], Any] = {}
        self._predictor_factory = predictor_factory or self._load_predictor

    @staticmethod
    def _load_predictor(bundle: str, device: str):
        from clipnodule.predictor import Predictor

        return Predictor.from_bundle(bundle, device=device)

    def predictor(self, bundle: str, device: str):
        """Return the Predictor for a bundle and device, loading it on first use."""
        key = (str(Path(bundle).resolve()), device)
        if key not in self._predictors:
            self._predictors.clear()
            self._predictors[key] = self._predictor_factory(bundle, device)
        return self._predictors[key]

    def handle_predict(self, request: dict[str, Any]) -> None:
        """Score every point of a request and emit progress, one result per point, then finished."""
        import numpy as np
        import SimpleITK as sitk

        from clipnodule.ct_checks import check_ct_image
        from clipnodule.predictor import input_checksum

        request_id = request.get("request_id")
        started = time.perf_counter()
        points = request["points"]
        output_dir = Path(request["output_dir"])
        output_dir.mkdir(parents=True, exist_ok=True)

        emit(self._output, {"event": "progress", "request_id": request_id, "done": 0, "total": len(points),
                            "message": "Reading the CT"})
        image = sitk.ReadImage(str(request["image"]))
        check_ct_image(image, f"The volume {request.get('volume_name') or request['image']!r}")
        # load_ct hands the library float32 images; the same type keeps results identical.
        if image.GetPixelID() != sitk.sitkFloat32:
            image = sitk.Cast(image, sitk.sitkFloat32)

        emit(self._output, {"event": "progress", "request_id": request_id, "done": 0, "total": len(points),
                            "message": "Loading the model"})
        predictor = self.predictor(request["bundle"], request.get("device", "auto"))

        source_path = request.get("source_path")
        checksum = input_checksum(source_path) if source_path and Path(source_path).exists() else None

        for done, point in enumerate(points):
            label = str(point.get("label") or f"P{done + 1}")
            emit(self._output, {"event": "progress", "request_id": request_id, "done": done, "total": len(points),
                                "message": f"Scoring {label}"})
            result = predictor.predict(image, point["point_lps"], coordinate_system="LPS", nodule_id=label)
            result.input_sha256 = checksum
            result.image_path = source_path
            document = result.to_dict()
            document["point_label"] = label

            planes_path = None
            if result.planes is not None:
                planes_path = output_dir / f"{done:03d}_{safe_file_stem(label)}_planes.npy"
                np.save(planes_path, np.asarray(result.planes, dtype=np.float32))
            frames = [frame_to_dict(frame) for frame in (result.frames or [])]
            (output_dir / f"{done:03d}_{safe_file_stem(label)}_result.json").write_text(
                json.dumps(document, indent=2) + "\n", encoding="utf-8"
            )
            emit(self._output, {"event": "result", "request_id": request_id, "label": label, "result": document,
                                "planes_path": str(planes_path) if planes_path else None, "frames": frames})

        emit(self._output, {"event": "progress", "request_id": request_id, "done": len(points),
                            "total": len(points), "message": "Done"})
        emit(self._output, {"event": "finished", "request_id": request_id,
                            "run_time_s": time.perf_counter() - started})

    def serve(self, requests: TextIO) -> int:
        """Read requests until "quit" or end of input; return the exit status."""
        emit(self._output, {"event": "ready"})
        for line in requests:
            line = line.strip()
            if not line:
                continue
            try:
                request = json.loads(line)
            except json.JSONDecodeError as error:
                emit(self._output, {"event": "error", "request_id": None, "message": f"Invalid request line: {error}"})
                continue
            command = request.get("command")
            if command == "quit":
                return 0
            if command != "predict":
                emit(self._output, {"event": "error", "request_id": request.get("request_id"),
                                    "message": f"Unknown command {command!r}; use 'predict' or 'quit'."})
                continue
            try:
                self.handle_predict(request)
            except Exception as error:  # noqa: BLE001 - every failure goes back to the panel
                logging.getLogger(__name__).exception("Request %s failed", request.get("request_id"))
                emit(self._output, {"event": "error", "request_id": request.get("request_id"),
                                    "message": f"{type(error).__name__}: {error}"})
        return 0


def main() -> int:
    """Serve requests from stdin; the protocol is described at the top of this file."""
    output = sys.stdout
    # Anything else that writes to stdout (a library print) would break the protocol.
    sys.stdout = sys.stderr
    handler = _EventLogHandler(output)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    return PredictWorker(output).serve(sys.stdin)


if __name__ == "__main__":
    sys.exit(main())
