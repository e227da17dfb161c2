"""Time every GPU path against the CPU on the same input, and check they agree.

    .venv/bin/python benchmarks/gpu_check.py [--quick] [--json OUT.json]

Run by ``benchmarks/gpu_check.sh`` on a machine with an NVIDIA GPU and CuPy (it
exits 2 without one).  Each row runs the same input through ``xp=numpy`` and
``xp=cupy`` (after one warm-up call on the device: kernels compiled, cuFFT plans
made) and prints seconds on each, the speed-up and the largest disagreement.

* motion: ``correct_motion`` on a 4096² × 40 movie of Poisson counts with a known
  drift, 5 × 5 patches (``--quick``: 2048² × 20);
* ctf: ``estimate_ctf`` on a 4096² micrograph with known defocus;
* class2d: VDAM mini-batches at K = 100, box 128 (particles/s), the issue's target
  being ≥ 2,000 particles/s on one H100;
* 3d: no GPU path yet (the reconstruction runs on numba kernels on the CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pipelines.class2d import Class2dConfig, Schedule, initialise_state, run_minibatches
from pipelines.class2d.schedule import minibatch_size
from pipelines.ctf.estimate import estimate_ctf
from pipelines.ctf.model import CtfParams
from pipelines.motion.correct import correct_motion
from pipelines.simulate.particle_sets import simulate_views
from pipelines.simulate.thon import make_thon_micrograph
from pipelines.simulate.volumes import phantom_volume
from pipelines.xp import gpu_available

# motion (size, frames), ctf size, class2d (box, K, particles) per mode
SIZES: dict[str, dict[str, Any]] = {
    "full": {"motion": (4096, 40), "ctf": 4096, "class2d": (128, 100, 10000)},
    "quick": {"motion": (2048, 20), "ctf": 2048, "class2d": (128, 100, 2000)},
    "standin": {"motion": (512, 10), "ctf": 1024, "class2d": (64, 10, 400)},
}


def _timed(fn: Callable[[], Any], cp: ModuleType | None = None) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    if cp is not None and hasattr(cp, "cuda"):  # the stand-in has no device
        cp.cuda.runtime.deviceSynchronize()
    return result, time.perf_counter() - started


def _movie(
    size: int, n_frames: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    image = rng.normal(size=(size, size)).astype(np.float32)
    image = np.real(
        np.fft.ifft2(
            np.fft.fft2(image)
            * np.exp(
                -(np.fft.fftfreq(size)[:, None] ** 2) * 400
                - np.fft.fftfreq(size)[None, :] ** 2 * 400
            )
        )
    ).astype(np.float32)
    image = 1.0 + 0.3 * image / image.std()
    drift = (
        np.cumsum(rng.normal(0.0, 0.6, size=(n_frames, 2)), axis=0).round().astype(int)
    )
    frames = np.stack([np.roll(image, tuple(d[::-1]), axis=(0, 1)) for d in drift])
    counts = rng.poisson(np.clip(frames, 0, None) * 1.5).astype(np.int8)
    return counts, drift


def check_motion(cp: ModuleType, mode: str, rng: np.random.Generator) -> dict[str, Any]:
    size, n = SIZES[mode]["motion"]
    frames, _ = _movie(size, n, rng)
    kwargs = {
        "pixel_size_a": 0.83,
        "dose_per_frame_e_per_a2": 1.0,
        "voltage_kv": 300.0,
        "patches": (5, 5),
    }
    correct_motion(frames[:, :512, :512], xp=cp, **kwargs)  # warm-up
    cpu, t_cpu = _timed(lambda: correct_motion(frames, **kwargs))
    gpu, t_gpu = _timed(lambda: correct_motion(frames, xp=cp, **kwargs), cp)
    shift_error = float(np.abs(gpu.shifts_px - cpu.shifts_px).max())
    scale = float(np.std(cpu.micrograph))
    image_error = float(np.abs(gpu.micrograph - cpu.micrograph).max()) / scale
    return {
        "stage": "motion",
        "input": f"{size}² × {n}",
        "cpu_s": t_cpu,
        "gpu_s": t_gpu,
        "max_shift_difference_px": shift_error,
        "max_image_difference_sd": image_error,
        "ok": shift_error < 0.05 and image_error < 0.01,
    }


def check_ctf(cp: ModuleType, mode: str, rng: np.random.Generator) -> dict[str, Any]:
    size = SIZES[mode]["ctf"]
    truth = CtfParams(
        defocus_u_a=15200.0,
        defocus_v_a=14800.0,
        astigmatism_angle_deg=30.0,
        bfactor_a2=40.0,
    )
    image = make_thon_micrograph(truth, shape=(size, size), contrast=0.1, rng=rng)
    kwargs = {"pixel_size_a": 1.0, "voltage_kv": 300.0, "cs_mm": 2.7}
    estimate_ctf(image[:512, :512], xp=cp, **kwargs)  # warm-up
    cpu, t_cpu = _timed(lambda: estimate_ctf(image, **kwargs))
    gpu, t_gpu = _timed(lambda: estimate_ctf(image, xp=cp, **kwargs), cp)
    difference = max(
        abs(gpu.defocus_u_a - cpu.defocus_u_a), abs(gpu.defocus_v_a - cpu.defocus_v_a)
    )
    return {
        "stage": "ctf",
        "input": f"{size}²",
        "cpu_s": t_cpu,
        "gpu_s": t_gpu,
        "max_defocus_difference_a": difference,
        "ok": difference < 10.0,
    }


def check_class2d(
    cp: ModuleType, mode: str, rng: np.random.Generator
) -> dict[str, Any]:
    box, k, n = SIZES[mode]["class2d"]
    volume = phantom_volume(box, 2.0, rng)
    data = simulate_views(
        volume, n_views=20, n_particles=n, pixel_size_a=2.0, snr=0.1, rng=rng
    )
    config = Class2dConfig(
        n_classes=k,
        box_px=box,
        pixel_size_a=2.0,
        schedule=Schedule(n_minibatches=10, initial_min=500, final_min=1000),
    )
    rates = {}
    states = {}
    for gpu in (False, True):
        run_config = replace(config, gpu=gpu)
        state = initialise_state(run_config, data.particles, np.random.default_rng(1))
        if gpu:  # warm-up on the device
            run_minibatches(
                replace(
                    run_config,
                    schedule=Schedule(n_minibatches=1, initial_min=200, final_min=200),
                ),
                state,
                data.particles,
            )
        state, seconds = _timed(
            lambda rc=run_config, s=state: run_minibatches(rc, s, data.particles),
            cp if gpu else None,
        )
        schedule = run_config.schedule
        seen = sum(
            minibatch_size(i, n, schedule) for i in range(schedule.n_minibatches)
        )
        rates["gpu" if gpu else "cpu"] = seen / seconds
        states["gpu" if gpu else "cpu"] = state
    difference = float(
        np.abs(states["gpu"].references - states["cpu"].references).max()
    )
    return {
        "stage": "class2d",
        "input": f"K={k}, box {box}, {n} particles",
        "cpu_particles_per_s": rates["cpu"],
        "gpu_particles_per_s": rates["gpu"],
        "max_reference_difference": difference,
        "ok": difference < 1e-2,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--standin",
        action="store_true",
        help="small sizes on the CPU stand-in (tests/cupy_standin.py): checks the "
        "script itself where no GPU is",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    mode = "standin" if args.standin else "quick" if args.quick else "full"
    if args.standin:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests import cupy_standin  # only for the script's own check

        cp = cupy_standin.install()
    elif not gpu_available():
        print("gpu_check: no CUDA device visible to CuPy", file=sys.stderr)
        return 2
    else:
        import cupy as cp  # optional: only on a GPU machine

    rng = np.random.default_rng(2026)
    rows = []
    for check in (check_motion, check_ctf, check_class2d):
        try:
            row = check(cp, mode, rng)
        except Exception as exc:  # noqa: BLE001 - report every path, then fail
            row = {
                "stage": check.__name__.removeprefix("check_"),
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
            }
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    rows.append({"stage": "3d", "ok": True, "note": "no GPU path yet"})
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
