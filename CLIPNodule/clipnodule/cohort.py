"""Cohort inference: score every nodule of a data set table and write nodules.csv, patients.csv and errors.csv.

Scans are read and preprocessed in worker processes (in-process with workers=0) while the
model scores batches of nodules in the calling process. No Qt or Slicer imports.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import datetime
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
import time
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from . import __version__
from .errors import InputError
from .result import NoduleResult

if TYPE_CHECKING:
    import pandas as pd

    from .predictor import Predictor

logger = logging.getLogger(__name__)

NODULES_FILE = "nodules.csv"
PATIENTS_FILE = "patients.csv"
ERRORS_FILE = "errors.csv"
RUN_FILE = "run.json"

KEY_COLUMNS = ("pid", "nodule_id")
ERROR_COLUMNS = ("pid", "nodule_id", "image_path", "reason")
PATIENT_COLUMNS = ("pid", "calibrated_ensemble", "ensemble", "nodule_count", "max_risk_nodule_id")

# Error reasons are cut to one line of at most this many characters so errors.csv stays readable.
MAX_REASON_CHARS = 500
# Scans queued per worker: enough for the workers to keep reading while the model runs,
# few enough to bound the preprocessed planes kept in memory.
SCANS_AHEAD_PER_WORKER = 2


@dataclasses.dataclass(frozen=True)
class NoduleTask:
    """One table row to score: its identifiers and the nodule centre in LPS mm."""

    pid: str
    nodule_id: str
    point_lps: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class ScanTask:
    """One CT and every pending nodule on it, so that each scan is read once."""

    image_path: str
    nodules: tuple[NoduleTask, ...]


@dataclasses.dataclass
class PreparedNodule:
    """A nodule after preprocessing: its planes, or the one-line reason it failed."""

    task: NoduleTask
    image_path: str
    planes: Any | None = None
    reason: str | None = None


@dataclasses.dataclass
class CohortSummary:
    """Counts and timing of one cohort run; `skipped` rows were already in nodules.csv."""

    output_dir: Path
    total: int
    scored: int
    skipped: int
    failed: int
    patients: int
    elapsed_s: float

    @property
    def nodules_per_second(self) -> float:
        """Return scored nodules per second of wall time (0 when nothing was scored)."""
        return self.scored / self.elapsed_s if self.elapsed_s > 0 else 0.0


# Column names.


def column_slug(text: str) -> str:
    """Turn a plane, feature or value name into a CSV column fragment: 'oblique z=-x' -> 'oblique_z_minus_x'."""
    text = text.lower().replace("=-", "_minus_")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def attention_column(index: int, plane_name: str) -> str:
    """Return the nodules.csv column of one plane's attention, e.g. 'attention_3_oblique_z_x'."""
    return f"attention_{index}_{column_slug(plane_name)}"


def nodule_row(result: NoduleResult) -> dict[str, Any]:
    """Return the nodules.csv row of a result.

    The columns start with the published `pid, nodule_id, raw_<k>, ensemble,
    calibrated_<k>, calibrated_ensemble`. Next come `attention_<i>_<plane>` (mean over
    folds, the nine sum to 1). Models with a text tower add `zeroshot_<feature>_<value>`
    probabilities and `zeroshot_<feature>` with the most likely value.
    """
    row = result.to_csv_row()
    for index, (name, weight) in enumerate(zip(result.plane_names, result.attention)):
        row[attention_column(index, name)] = weight

    for feature, entry in (result.semantic_report or {}).items():
        feature_slug = column_slug(feature)
        for value, probability in entry["probabilities"].items():
            row[f"zeroshot_{feature_slug}_{column_slug(value)}"] = probability
        row[f"zeroshot_{feature_slug}"] = entry["most_likely"]
    return row


# Worker side: reading scans and cutting planes. Top-level functions, so that they
# can be pickled for spawned worker processes.


def one_line_reason(error: BaseException) -> str:
    """Return an error as one line for errors.csv: library errors by message, others with their type."""
    from .errors import CLIPNoduleError

    text = " ".join(str(error).split())
    if not isinstance(error, CLIPNoduleError):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3] + "..."
    return text


def prepare_scan(task: ScanTask) -> list[PreparedNodule]:
    """Read one CT and cut the planes of each of its nodules, returning failures as reasons.

    Every exception is caught and becomes the reason of the nodules it affects. A scan
    that cannot be read fails all its nodules with the same reason, and a point outside
    the scan fails only its own nodule.
    """
    from .image_io import load_ct
    from .preprocess import extract_planes

    if not os.path.exists(task.image_path):
        reason = f"image not found: {task.image_path}"
        return [PreparedNodule(nodule, task.image_path, reason=reason) for nodule in task.nodules]

    try:
        image = load_ct(task.image_path)
    except Exception as error:  # noqa: BLE001 - any failure is recorded for the row, the run goes on
        logger.debug("Reading %s failed", task.image_path, exc_info=True)
        reason = one_line_reason(error)
        return [PreparedNodule(nodule, task.image_path, reason=reason) for nodule in task.nodules]

    prepared = []
    for nodule in task.nodules:
        try:
            # extract_planes raises InputError for a point outside the scan.
            planes = extract_planes(image, nodule.point_lps)
        except Exception as error:  # noqa: BLE001 - recorded for this nodule only
            logger.debug("Preprocessing a nodule of %s failed", task.image_path, exc_info=True)
            prepared.append(PreparedNodule(nodule, task.image_path, reason=one_line_reason(error)))
            continue
        prepared.append(PreparedNodule(nodule, task.image_path, planes=planes))
    return prepared


def _ignore_interrupts_in_worker() -> None:
    # Ctrl-C reaches the whole process group; the main process shuts the workers down,
    # so they must not each print a KeyboardInterrupt traceback.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ScanReader:
    """Yield prepared nodules of scan tasks in table order, reading scans in worker processes.

    workers=0 reads in the calling process. Worker processes are spawned (not forked),
    so they never inherit torch's thread pools. When a worker process dies (for example
    killed for memory), the scan at the head of the queue is retried alone in a new
    pool. If it kills that pool too, its nodules fail and the run goes on.
    """

    def __init__(self, workers: int) -> None:
        if workers < 0:
            raise InputError(f"workers must be 0 (read scans in this process) or more, got {workers}.")
        self.workers = workers
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> "ScanReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._shutdown()

    def read(self, tasks: Sequence[ScanTask]) -> Iterator[list[PreparedNodule]]:
        """Yield the prepared nodules of each task, in the order of `tasks`."""
        if self.workers == 0:
            for task in tasks:
                yield prepare_scan(task)
            return

        queued: deque[tuple[ScanTask, concurrent.futures.Future]] = deque()
        remaining = deque(tasks)
        ahead = self.workers * SCANS_AHEAD_PER_WORKER
        while remaining or queued:
            while remaining and len(queued) < ahead:
                task = remaining.popleft()
                queued.append((task, self._pool().submit(prepare_scan, task)))

            task, future = queued.popleft()
            try:
                yield future.result()
            except BrokenProcessPool:
                yield self._retry_alone(task)
                # Every other queued future died with the pool: queue those scans again.
                remaining.extendleft(reversed([pending for pending, _ in queued]))
                queued.clear()

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_interrupts_in_worker,
            )
        return self._executor

    def _shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _retry_alone(self, task: ScanTask) -> list[PreparedNodule]:
        logger.warning("A worker process exited unexpectedly; retrying one scan in a new worker.")
        self._shutdown()
        try:
            return self._pool().submit(prepare_scan, task).result()
        except BrokenProcessPool:
            self._shutdown()
            reason = "the worker process reading this scan exited unexpectedly (out of memory or a crash in a reader)"
            return [PreparedNodule(nodule, task.image_path, reason=reason) for nodule in task.nodules]


# Output files.


class CsvAppender:
    """Append rows to a CSV file with a fixed header, flushing after each batch of rows."""

    def __init__(self, path: Path, columns: Sequence[str] | None = None) -> None:
        self.path = path
        self.columns = list(columns) if columns is not None else None
        self._stream = None
        self._writer: csv.DictWriter | None = None

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append rows, writing the header first when the file is new; fsync so a crash keeps them."""
        if not rows:
            return
        if self._writer is None:
            self._open(rows[0])
        self._writer.writerows(rows)
        self._stream.flush()
        os.fsync(self._stream.fileno())

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
            self._writer = None

    def _open(self, first_row: dict[str, Any]) -> None:
        new_file = not self.path.exists() or self.path.stat().st_size == 0
        if self.columns is None:
            self.columns = list(first_row)
        elif list(first_row) != self.columns:
            raise InputError(
                f"{self.path} has the columns {', '.join(self.columns)}, but this model writes "
                f"{', '.join(first_row)}; the earlier rows came from another model. Rerun with "
                "--recompute or choose another output folder."
            )
        self._stream = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._stream, fieldnames=self.columns)
        if new_file:
            self._writer.writeheader()


def read_complete_rows(path: Path) -> tuple[list[str] | None, list[dict[str, str]]]:
    """Read a CSV written by CsvAppender; return its header and the rows that are complete.

    A run killed while writing can leave a last line cut short. Such rows (too few or too
    many fields, an empty key, or a last line without its line end) are dropped, so those
    nodules are scored again.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None, []
    with open(path, newline="", encoding="utf-8") as stream:
        text = stream.read()
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or not lines[0]:
        return None, []

    header, records = lines[0], lines[1:]
    # A line cut inside its last field still has every field, so only the missing line end shows the cut.
    if records and not text.endswith("\n"):
        records = records[:-1]
    rows = []
    for fields in records:
        if len(fields) != len(header):
            continue
        row = dict(zip(header, fields))
        if all(row.get(key) for key in KEY_COLUMNS):
            rows.append(row)
    return header, rows


def rewrite_rows(path: Path, header: Sequence[str], rows: Sequence[dict[str, str]]) -> None:
    """Replace a CSV file atomically with `header` and `rows`."""
    partial = path.with_name(path.name + ".part")
    with open(partial, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(header))
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def _parse_score(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def patient_rows(nodule_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reduce nodules.csv rows to one row per patient: the maximum risk over the patient's nodules.

    Risk is `calibrated_ensemble` when every nodule of the patient has one, else the raw
    `ensemble`. The row contains both maxima, the nodule count and the id of the nodule
    with the maximum risk (the first one in table order on a tie).
    """
    patients: dict[str, list[dict[str, Any]]] = {}
    for row in nodule_rows:
        patients.setdefault(str(row["pid"]), []).append(row)

    summary = []
    for pid, rows in patients.items():
        calibrated = [_parse_score(row.get("calibrated_ensemble", "")) for row in rows]
        raw = [_parse_score(row.get("ensemble", "")) for row in rows]
        all_calibrated = all(value is not None for value in calibrated)
        risks = calibrated if all_calibrated else raw
        best = max(range(len(rows)), key=lambda index: -math.inf if risks[index] is None else risks[index])
        summary.append({
            "pid": pid,
            "calibrated_ensemble": max(calibrated) if all_calibrated else "",
            "ensemble": max((value for value in raw if value is not None), default=""),
            "nodule_count": len(rows),
            "max_risk_nodule_id": rows[best]["nodule_id"],
        })
    return summary


def write_patients(nodules_path: Path, patients_path: Path) -> int:
    """Recompute patients.csv from every row of nodules.csv and return the number of patients."""
    _, rows = read_complete_rows(nodules_path)
    summary = patient_rows(rows)
    rewrite_rows(patients_path, PATIENT_COLUMNS, summary)
    return len(summary)


# Run bookkeeping.


def bundle_identity(predictor: "Predictor") -> dict[str, Any]:
    """Return the model's name, version, fold indices and a sha256 of its manifest, as stored in run.json."""
    manifest = predictor.bundle.manifest
    encoded = json.dumps(manifest, sort_keys=True, default=str).encode("utf-8")
    return {
        "name": predictor.model_name,
        "version": predictor.model_version,
        "folds": [fold.index for fold in predictor.bundle.folds],
        "manifest_sha256": hashlib.sha256(encoded).hexdigest(),
        "path": str(getattr(predictor.bundle, "path", "") or ""),
    }


def _check_same_model(run_path: Path, identity: dict[str, Any]) -> None:
    try:
        previous = json.loads(run_path.read_text(encoding="utf-8")).get("bundle", {})
    except (OSError, ValueError, AttributeError):
        logger.warning("Could not read %s; the model of earlier rows is not checked.", run_path)
        return
    same = all(previous.get(key) == identity[key] for key in ("name", "version", "folds", "manifest_sha256"))
    if not same:
        raise InputError(
            f"The output folder {run_path.parent} contains results of model {previous.get('name')!r} "
            f"version {previous.get('version')!r}, not of {identity['name']!r} version "
            f"{identity['version']!r}; rerun with --recompute to replace them or choose another output folder."
        )


def _write_run_file(path: Path, record: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


# Per-scan loggers that name the image path at INFO level. File names often carry patient
# ids, so a cohort run lowers them to WARNING unless debug logging is on.
PER_SCAN_LOGGERS = (
    "clipnodule.image_io", "clipnodule.dicom_series", "clipnodule.header_checks",
    "clipnodule.ct_checks", "clipnodule.crop", "clipnodule.preprocess",
)


@contextlib.contextmanager
def _per_scan_logs_at_warning() -> Iterator[None]:
    changed = []
    for name in PER_SCAN_LOGGERS:
        per_scan = logging.getLogger(name)
        if per_scan.getEffectiveLevel() > logging.DEBUG:
            changed.append((per_scan, per_scan.level))
            per_scan.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for per_scan, level in changed:
            per_scan.setLevel(level)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# The pipeline.


def scan_tasks(table: "pd.DataFrame", done: set[tuple[str, str]]) -> list[ScanTask]:
    """Group the table rows not in `done` by image path, keeping first-appearance order."""
    grouped: dict[str, list[NoduleTask]] = {}
    for row in table.itertuples(index=False):
        key = (str(row.pid), str(row.nodule_id))
        if key in done:
            continue
        point = (float(row.coordX), float(row.coordY), float(row.coordZ))
        grouped.setdefault(str(row.image_path), []).append(NoduleTask(key[0], key[1], point))
    return [ScanTask(path, tuple(nodules)) for path, nodules in grouped.items()]


class _CohortScorer:
    """Score prepared nodules in batches and append their rows and errors as they come."""

    def __init__(self, predictor: "Predictor", batch_size: int, nodules: CsvAppender, errors: CsvAppender, progress) -> None:
        self.predictor = predictor
        self.batch_size = batch_size
        self.nodules = nodules
        self.errors = errors
        self.progress = progress
        self.pending: list[PreparedNodule] = []
        self.scored = 0
        self.failed = 0

    def add(self, prepared: Sequence[PreparedNodule]) -> None:
        failures = [item for item in prepared if item.reason is not None]
        self._record_failures(failures)
        self.pending.extend(item for item in prepared if item.reason is None)
        while len(self.pending) >= self.batch_size:
            batch, self.pending = self.pending[: self.batch_size], self.pending[self.batch_size :]
            self._score(batch)

    def finish(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            self._score(batch)

    def _score(self, batch: list[PreparedNodule]) -> None:
        try:
            results = self._predict(batch)
        except Exception:  # noqa: BLE001 - isolate the nodule that fails instead of losing the batch
            logger.debug("Scoring a batch of %d nodules failed; scoring them one by one", len(batch), exc_info=True)
            results = []
            for item in batch:
                try:
                    results.extend(self._predict([item]))
                except Exception as error:  # noqa: BLE001 - recorded in errors.csv
                    item.reason = f"model failed: {one_line_reason(error)}"
                    self._record_failures([item])
            batch = [item for item in batch if item.reason is None]

        for item, result in zip(batch, results):
            result.image_path = item.image_path
        self.nodules.append([nodule_row(result) for result in results])
        self.scored += len(results)
        self.progress.update(len(results))

    def _predict(self, batch: list[PreparedNodule]) -> list[NoduleResult]:
        return self.predictor.predict_planes(
            [item.planes for item in batch],
            pids=[item.task.pid for item in batch],
            nodule_ids=[item.task.nodule_id for item in batch],
        )

    def _record_failures(self, failures: Sequence[PreparedNodule]) -> None:
        if not failures:
            return
        for item in failures:
            logger.debug("Nodule %s/%s failed: %s", item.task.pid, item.task.nodule_id, item.reason)
        self.errors.append([
            {"pid": item.task.pid, "nodule_id": item.task.nodule_id, "image_path": item.image_path, "reason": item.reason}
            for item in failures
        ])
        self.failed += len(failures)
        self.progress.update(len(failures))


def run_cohort(
    dataset: "str | os.PathLike | pd.DataFrame",
    output_dir: str | os.PathLike,
    predictor: "Predictor | None" = None,
    bundle: str | os.PathLike | None = None,
    device: str = "auto",
    workers: int = 1,
    batch_size: int = 16,
    recompute: bool = False,
    progress: bool = True,
) -> CohortSummary:
    """Score every nodule of a data set table and write the cohort files into `output_dir`.

    `dataset` is a CSV path (`pid, nodule_id, image_path, coordX, coordY, coordZ`, LPS mm,
    `malignant` optional) or a table already read by `read_dataset_table`. The model is
    `predictor`, or the bundle at `bundle` (default bundle when None) loaded on `device`.
    Writes nodules.csv (appended and flushed per batch), errors.csv (one line per failed
    row with its reason), patients.csv (recomputed at the end from every row of
    nodules.csv) and run.json (model and settings). Rows already in nodules.csv (same
    pid and nodule_id) are skipped unless `recompute`; rows that failed before are retried.
    A failed row never stops the run, but an invalid table or option raises InputError
    before any scan is read. With workers > 0 the workers are spawned and import the
    caller's main module, so a script calling this needs an `if __name__ == "__main__":` guard.
    """
    from tqdm.auto import tqdm

    from .training.dataset_table import read_dataset_table

    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}.")
    if workers < 0:
        raise InputError(f"workers must be 0 (read scans in this process) or more, got {workers}.")

    started = time.perf_counter()
    if isinstance(dataset, (str, os.PathLike)):
        dataset_source = str(Path(dataset).expanduser().resolve())
        # Missing images are recorded per row in errors.csv rather than rejecting the table.
        table = read_dataset_table(dataset, require_labels=False, check_images=False)
    else:
        dataset_source = "in-memory table"
        table = dataset

    output = Path(output_dir).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    nodules_path, errors_path, run_path = output / NODULES_FILE, output / ERRORS_FILE, output / RUN_FILE

    if predictor is None:
        from .predictor import Predictor

        predictor = Predictor.from_bundle(bundle, device=device)
    identity = bundle_identity(predictor)

    # Earlier results: keep complete rows of the same model, or start over with --recompute.
    header, done_rows = (None, [])
    if recompute:
        nodules_path.unlink(missing_ok=True)
    else:
        if nodules_path.exists() and run_path.exists():
            _check_same_model(run_path, identity)
        header, done_rows = read_complete_rows(nodules_path)
        if header is not None:
            rewrite_rows(nodules_path, header, done_rows)
    done = {(row["pid"], row["nodule_id"]) for row in done_rows}
    # Errors of earlier runs are retried, so errors.csv lists this run's failures only.
    errors_path.unlink(missing_ok=True)

    tasks = scan_tasks(table, done)
    pending_count = sum(len(task.nodules) for task in tasks)
    skipped = len(table) - pending_count
    settings = {
        "workers": workers,
        "batch_size": batch_size,
        "device": predictor.device,
        "requested_device": device,
        "recompute": recompute,
    }
    run_record: dict[str, Any] = {
        "clipnodule_version": __version__,
        "bundle": identity,
        "dataset": dataset_source,
        "settings": settings,
        "started": _now(),
        "status": "running",
        "counts": {"rows": len(table), "skipped": skipped, "pending": pending_count},
    }
    _write_run_file(run_path, run_record)
    logger.info(
        "Cohort: %d nodules on %d scans to score, %d already in %s; %d worker(s), batch %d, %s.",
        pending_count, len(tasks), skipped, NODULES_FILE, workers, batch_size, predictor.device,
    )

    nodules = CsvAppender(nodules_path, header)
    errors = CsvAppender(errors_path, ERROR_COLUMNS)
    bar = tqdm(total=pending_count, unit="nodule", desc="cohort", disable=not progress)
    scorer = _CohortScorer(predictor, batch_size, nodules, errors, bar)
    try:
        with _per_scan_logs_at_warning(), ScanReader(workers) as reader:
            for prepared in reader.read(tasks):
                scorer.add(prepared)
        scorer.finish()
    except KeyboardInterrupt:
        run_record.update({"status": "interrupted", "finished": _now()})
        _write_run_file(run_path, run_record)
        raise
    finally:
        bar.close()
        nodules.close()
        errors.close()

    patient_count = write_patients(nodules_path, output / PATIENTS_FILE)
    elapsed = time.perf_counter() - started
    summary = CohortSummary(output, len(table), scorer.scored, skipped, scorer.failed, patient_count, elapsed)

    run_record.update({
        "finished": _now(),
        "status": "finished",
        "elapsed_s": round(elapsed, 3),
        "counts": {
            "rows": len(table), "skipped": skipped, "scored": scorer.scored,
            "failed": scorer.failed, "patients": patient_count,
        },
    })
    _write_run_file(run_path, run_record)
    if scorer.failed:
        logger.warning("%d of %d nodules failed; their reasons are in %s.", scorer.failed, pending_count, errors_path)
    logger.info(
        "Cohort done in %.1f s: %d scored, %d skipped, %d failed, %d patients; results in %s.",
        elapsed, scorer.scored, skipped, scorer.failed, patient_count, output,
    )
    return summary
