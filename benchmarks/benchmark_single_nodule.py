"""Benchmark one nodule: region-only preprocessing against whole-scan resampling, and the ViT-B/32 five-fold model.

A timing script, not a test. Needs the clipnodule package with torch and open_clip; each
measurement runs in its own spawned process so that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

logger = logging.getLogger("benchmark_single_nodule")

FOLD_COUNT = 5
VIT_BACKBONE = "ViT-B-32-quickgelu"


# Machine and process facts.


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def total_memory_gib() -> float | None:
    """Return the machine's total memory in GiB from /proc/meminfo (None when unavailable)."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info(device: str) -> dict[str, Any]:
    """Return the CPU, memory, Python, torch and device facts that the numbers depend on."""
    import torch

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": total_memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        # Other processes sharing the CPUs slow the timings; the load average shows how busy it was.
        "load_average_1_5_15min": [round(value, 2) for value in os.getloadavg()],
    }
    if device.startswith("cuda"):
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _proc_status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Return this process's peak resident memory in MiB.

    Linux: VmHWM of /proc/self/status. ru_maxrss is not used there because a spawned child
    inherits its parent's high-water mark through fork and exec, so it can report the
    parent's peak. Elsewhere: ru_maxrss (kB on Linux and BSD, bytes on macOS).
    """
    high_water_mark = _proc_status_mib("VmHWM")
    if high_water_mark is not None:
        return high_water_mark
    divisor = 2**20 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / divisor


def current_rss_mib() -> float | None:
    """Return this process's current resident memory in MiB (VmRSS of /proc/self/status)."""
    return _proc_status_mib("VmRSS")


def time_calls(function: Callable[[], Any], repeats: int) -> list[float]:
    """Call `function` `repeats` times and return the wall times in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def timing_summary(times: Sequence[float]) -> dict[str, Any]:
    """Return median, min and max of wall times (s) and the raw values."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
        "times_s": [round(value, 4) for value in times],
    }


def run_in_child(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run `function(*args)` in a fresh spawned process and return its result dictionary."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        return executor.submit(function, *args).result()


# The model: five folds of a randomly initialised ViT-B/32 with LoRA.


def build_random_vit_predictor(device: str, fold_count: int = FOLD_COUNT, backbone: str = VIT_BACKBONE):
    """Return a Predictor over `fold_count` folds of a random full-size CLIP model with LoRA.

    No bundle is written (the backbone alone is about 600 MB). Every fold is the same model
    object with its own calibration, so the compute per fold equals that of a real bundle.
    The memory is close to load_bundle's, whose folds share the frozen backbone tensors
    and differ only in LoRA factors and heads (a few MB per fold).
    """
    import torch

    from clipnodule.bundle import Bundle, FoldModel
    from clipnodule.calibration import BetaCalibration
    from clipnodule.model import ModelConfig, build_model
    from clipnodule.predictor import Predictor
    from clipnodule.zeroshot import default_prompt_set

    torch.manual_seed(0)
    config = ModelConfig(backbone=backbone, pretrained=None)
    model = build_model(config, device=device).eval()
    folds = [
        FoldModel(index=index, model=model, calibration=BetaCalibration(a=1.0, b=1.0, c=0.0))
        for index in range(fold_count)
    ]
    manifest = {"name": f"random {backbone} benchmark model", "version": "0"}
    bundle = Bundle(path=Path("in-memory"), manifest=manifest, config=config, folds=folds, prompt_set=default_prompt_set())
    return Predictor(bundle, device=device)


# Preprocessing: the library's region-only path and the whole-scan baseline.


def resample_whole_scan_then_crop(image, point_lps: Sequence[float]) -> np.ndarray:
    """Return the nine planes after resampling the whole scan to 1 mm first (the slow baseline).

    SimpleITK's ResampleImageFilter (linear, 0 HU outside) writes the whole scan onto the
    library's 1 mm LPS grid. The 100 mm cube is then cut from that array and padded with
    0 HU, and the planes are cut from it as in the library.
    """
    import SimpleITK as sitk

    from clipnodule.crop import CROP_SIZE, one_mm_grid
    from clipnodule.intensity import scale_hu
    from clipnodule.planes import nine_planes

    grid = one_mm_grid(image)
    resampler = sitk.ResampleImageFilter()
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputSpacing((1.0, 1.0, 1.0))
    resampler.SetOutputOrigin(tuple(float(value) for value in grid.origin_lps))
    resampler.SetOutputDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    resampler.SetSize([int(value) for value in grid.shape])
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    whole = sitk.GetArrayFromImage(resampler.Execute(image))

    center = np.trunc(np.asarray(point_lps, dtype=np.float64) - grid.origin_lps).astype(np.int64)
    start = center - CROP_SIZE // 2
    cube = np.zeros((CROP_SIZE,) * 3, dtype=np.float32)
    low = np.maximum(start, 0)
    high = np.minimum(start + CROP_SIZE, np.asarray(grid.shape))
    if np.all(high > low):
        # `whole` is indexed (z, y, x); grid indices are (x, y, z).
        source = whole[low[2] : high[2], low[1] : high[1], low[0] : high[0]]
        offset = low - start
        cube[
            offset[2] : offset[2] + source.shape[0],
            offset[1] : offset[1] + source.shape[1],
            offset[0] : offset[0] + source.shape[2],
        ] = source
    return nine_planes(scale_hu(cube))


def measure_load(image_path: str, repeats: int) -> dict[str, Any]:
    """Time load_ct of the CT (read, checks, float32 cast) in this process."""
    import SimpleITK as sitk

    from clipnodule.image_io import load_ct

    rss_before = current_rss_mib()
    times = time_calls(lambda: load_ct(image_path), repeats)
    image = load_ct(image_path)
    return {
        **timing_summary(times),
        "size_voxels": list(image.GetSize()),
        "spacing_mm": [round(value, 4) for value in image.GetSpacing()],
        "sitk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
    }


def measure_preprocessing(image_path: str, point_lps: Sequence[float], method: str, repeats: int) -> dict[str, Any]:
    """Time one preprocessing method ("region" or "whole-scan") on a loaded CT, in this process."""
    from clipnodule.image_io import load_ct
    from clipnodule.preprocess import extract_planes

    image = load_ct(image_path)
    if method == "region":
        def step() -> np.ndarray:
            return extract_planes(image, point_lps).planes
    else:
        def step() -> np.ndarray:
            return resample_whole_scan_then_crop(image, point_lps)

    rss_before = current_rss_mib()
    times = time_calls(step, repeats)
    peak_rss = peak_rss_mib()

    # tracemalloc tracks numpy buffers but not SimpleITK's own C++ allocations.
    tracemalloc.start()
    planes = step()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        **timing_summary(times),
        "planes_shape": list(planes.shape),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss,
        "tracemalloc_peak_mib": traced_peak / 2**20,
    }


def measure_model(image_path: str, point_lps: Sequence[float], device: str, repeats: int) -> dict[str, Any]:
    """Time the five-fold ViT-B/32 ensemble on one nodule of nine planes, in this process."""
    import torch

    from clipnodule.image_io import load_ct
    from clipnodule.preprocess import extract_planes

    planes = extract_planes(load_ct(image_path), point_lps)
    rss_before = current_rss_mib()

    started = time.perf_counter()
    predictor = build_random_vit_predictor(device)
    build_s = time.perf_counter() - started

    # The first call pays for lazy initialisation (allocator, kernels), so it is timed apart.
    started = time.perf_counter()
    predictor.predict_planes([planes])
    first_call_s = time.perf_counter() - started
    times = time_calls(lambda: predictor.predict_planes([planes]), repeats)

    parameters = sum(parameter.numel() for parameter in predictor.bundle.folds[0].model.parameters())
    result: dict[str, Any] = {
        **timing_summary(times),
        "per_fold_median_s": statistics.median(times) / FOLD_COUNT,
        "folds": FOLD_COUNT,
        "planes_per_nodule": int(planes.planes.shape[0]),
        "includes_zero_shot_report": True,
        "parameters_per_fold_model": parameters,
        "build_s": build_s,
        "first_call_s": first_call_s,
        "torch_threads": torch.get_num_threads(),
        "rss_before_model_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
    }
    if device.startswith("cuda"):
        result["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


# Command line.


def resolve_input(args: argparse.Namespace) -> tuple[str, list[float], str]:
    """Return (CT path, nodule point LPS mm, description) from --image/--point or the example CT."""
    if args.image:
        if args.point is None:
            raise SystemExit("benchmark_single_nodule: --image needs --point X Y Z (LPS mm)")
        return str(Path(args.image).resolve()), list(args.point), "given CT"

    from clipnodule.errors import CLIPNoduleError
    from clipnodule.example_data import fetch_example_ct

    try:
        example = fetch_example_ct()
    except CLIPNoduleError as error:
        raise SystemExit(f"benchmark_single_nodule: the example CT is unavailable ({error}); pass --image and --point") from None
    return str(example.image_path), list(example.nodule_center_lps), "example CT (pyradiomics 3.0.1 lung1_image.nrrd)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="JSON file for the results")
    parser.add_argument("--image", help="CT to use instead of the example CT")
    parser.add_argument("--point", nargs=3, type=float, metavar=("X", "Y", "Z"), help="nodule centre in LPS mm (with --image)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device for the model (default: auto)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (default: 3)")
    parser.add_argument("--skip-model", action="store_true", help="time preprocessing only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from clipnodule.devices import resolve_device

    device = resolve_device(args.device)
    image_path, point, description = resolve_input(args)
    results: dict[str, Any] = {
        "script": "benchmarks/benchmark_single_nodule.py",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input": {"image": image_path, "point_lps": point, "description": description},
        "machine": machine_info(device),
    }

    logger.info("Timing load_ct")
    results["load_ct"] = run_in_child(measure_load, image_path, args.repeats)
    logger.info("Timing region-only preprocessing")
    region = run_in_child(measure_preprocessing, image_path, point, "region", args.repeats)
    logger.info("Timing whole-scan resampling then crop")
    whole = run_in_child(measure_preprocessing, image_path, point, "whole-scan", args.repeats)
    results["preprocessing"] = {
        "region_only": region,
        "whole_scan_resample_then_crop": whole,
        "speedup_median": whole["median_s"] / region["median_s"],
    }

    if not args.skip_model:
        logger.info("Timing the %d-fold %s ensemble on %s", FOLD_COUNT, VIT_BACKBONE, device)
        results["model"] = run_in_child(measure_model, image_path, point, device, args.repeats)
        results["model"]["backbone"] = VIT_BACKBONE

    results["load_average_at_end_1_5_15min"] = [round(value, 2) for value in os.getloadavg()]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    logger.info("Wrote %s", args.output)
    print(json.dumps({key: results[key] for key in ("preprocessing", "model") if key in results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
