"""Parent side of the prediction worker: start it, send requests, collect events, cancel.

No Qt and no MRML: reader threads put the worker's JSON-line events in a queue, and the
module's Qt timer calls `poll()` on the GUI thread. Cancelling kills the worker; the
next request starts a fresh one (which reloads the model).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

MODULE_DIR = Path(__file__).resolve().parents[1]
WORKER_MODULE = "CLIPNoduleLib.predict_worker"
STOP_TIMEOUT_S = 10.0


def python_executable() -> str:
    """Return the Python interpreter for child processes: PythonSlicer inside Slicer, else this one."""
    try:
        import slicer

        slicer.app  # noqa: B018 - only present in the Slicer application
    except (ImportError, AttributeError):
        return sys.executable
    found = shutil.which("PythonSlicer")
    return found or sys.executable


def child_environment(extra_paths: Sequence[str | os.PathLike] = (MODULE_DIR,)) -> dict[str, str]:
    """Return this process's environment with `extra_paths` in front of PYTHONPATH."""
    environment = dict(os.environ)
    paths = [str(path) for path in extra_paths]
    if environment.get("PYTHONPATH"):
        paths.append(environment["PYTHONPATH"])
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    environment.setdefault("PYTHONUNBUFFERED", "1")
    return environment


class AnalysisRunner:
    """Runs `CLIPNoduleLib.predict_worker` in a child process and relays its events."""

    def __init__(self, python: str | None = None, environment: dict[str, str] | None = None) -> None:
        self._python = python or python_executable()
        self._environment = environment or child_environment()
        self._process: subprocess.Popen | None = None
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._next_request_id = 1
        self._threads: list[threading.Thread] = []

    @property
    def command(self) -> list[str]:
        """The worker's command line."""
        return [self._python, "-m", WORKER_MODULE]

    @property
    def running(self) -> bool:
        """True while the worker process is alive."""
        return self._process is not None and self._process.poll() is None

    def _read_stdout(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            line = line.rstrip("\n")
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "log", "level": "INFO", "message": line}
            self._events.put(event)
        self._events.put({"event": "exited", "returncode": process.wait()})

    def _read_stderr(self, stream) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if line:
                self._events.put({"event": "log", "level": "STDERR", "message": line})

    def start(self) -> None:
        """Start the worker process if it is not running."""
        if self.running:
            return
        logger.info("Starting the prediction worker: %s", " ".join(self.command))
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
            env=self._environment,
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self._process,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._process.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        image: str | os.PathLike,
        points: Sequence[dict[str, Any]],
        bundle: str | os.PathLike,
        output_dir: str | os.PathLike,
        device: str = "auto",
        source_path: str | None = None,
        volume_name: str | None = None,
    ) -> int:
        """Send one predict request and return its id; starts the worker when needed.

        `points` are {"label": str, "point_lps": [x, y, z]} dictionaries (LPS mm).
        """
        self.start()
        request_id = self._next_request_id
        self._next_request_id += 1
        request = {
            "command": "predict",
            "request_id": request_id,
            "image": str(image),
            "volume_name": volume_name,
            "source_path": source_path,
            "points": list(points),
            "bundle": str(bundle),
            "device": device,
            "output_dir": str(output_dir),
        }
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        return request_id

    def poll(self) -> list[dict[str, Any]]:
        """Return every event received since the last call, without waiting."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def wait_for(self, request_id: int, timeout_s: float) -> list[dict[str, Any]]:
        """Block until the request finishes or fails (for scripts and tests); return its events.

        Raises TimeoutError after `timeout_s` seconds without the request finishing.
        """
        events = []
        while True:
            try:
                event = self._events.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"The prediction worker did not finish request {request_id} in {timeout_s} s.")
            events.append(event)
            if event.get("event") in ("finished", "error") and event.get("request_id") == request_id:
                return events
            if event.get("event") == "exited":
                return events

    def cancel(self) -> None:
        """Stop the running request at once by killing the worker process."""
        if self.running:
            logger.info("Cancelling: killing the prediction worker (pid %d)", self._process.pid)
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_S)
        self._events.put({"event": "cancelled"})

    def stop(self) -> None:
        """Ask the worker to quit, and kill it if it has not exited after STOP_TIMEOUT_S seconds."""
        if not self.running:
            return
        try:
            self._process.stdin.write(json.dumps({"command": "quit"}) + "\n")
            self._process.stdin.flush()
            self._process.wait(timeout=STOP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_S)
