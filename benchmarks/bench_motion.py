"""Benchmark motion correction: time per step and the ratio to a lower bound.

Per movie (4096 x 4096 x 40 frames, and a small 1024 x 1024 x 20 one; ``--small``
runs only the small one) it times: read, gain + defects, global alignment, local
alignment, dose weighting + sum, write; and, in the same run on the same arrays,
the work any method must do: reading the file's bytes, one forward FFT per frame
and the two inverse FFTs of the sums at full size (plus the binned FFTs the
alignment works on).  Ratios near 1 mean the step costs what its FFTs cost.

    .venv/bin/python benchmarks/bench_motion.py [--small] [--workers N]
    .venv/bin/python benchmarks/bench_motion.py --accuracy [--small] [--seed N]

``--accuracy`` measures the errors against the simulator's truth instead
(:mod:`bench_motion_accuracy`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import scipy.fft

from pipelines.io.movies import read_movie
from pipelines.io.outputs import write_mrc
from pipelines.motion.correct import DAMAGE_BFACTOR_PX2, align_global, prepare_frames
from pipelines.motion.dose import DamageModel, frame_exposures_e_per_a2
from pipelines.motion.local import align_patches
from pipelines.motion.summing import power_spectrum, sum_frames


def make_movie_file(
    path: Path, size: int, n_frames: int, rng: np.random.Generator
) -> np.ndarray:
    """An int8 MRC movie of a drifting texture (integer drift) at ~1.2 e/px/frame."""
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    k = np.sqrt(ky * ky + kx * kx)
    amplitude = (np.maximum(k, 1.0 / size) ** -0.8 * np.exp(-((k / 0.35) ** 2))).astype(
        np.float32
    )
    noise = rng.standard_normal((size, size), dtype=np.float32)
    texture = scipy.fft.irfft2(
        scipy.fft.rfft2(noise, workers=-1) * amplitude, s=(size, size), workers=-1
    )
    texture = 1.2 * np.clip(1.0 + 0.3 * texture / texture.std(), 0, None)
    t = np.arange(n_frames)
    drift = np.round(np.stack([6 * np.sqrt(t + 1) - 6, -4 * np.log1p(t)], 1)).astype(
        int
    )
    with mrcfile.new_mmap(
        path, shape=(n_frames, size, size), mrc_mode=0, overwrite=True
    ) as mrc:
        for i in range(n_frames):
            shifted = np.roll(texture, (drift[i, 1], drift[i, 0]), axis=(0, 1))
            mrc.data[i] = rng.poisson(shifted).astype(np.int8)
    return -(drift - drift[0])


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def bench(
    size: int, n_frames: int, workers: int, folder: Path, rng: np.random.Generator
) -> None:
    path = folder / f"movie_{size}.mrc"
    truth, t_make = timed(make_movie_file, path, size, n_frames, rng)
    print(
        f"\n== {size} x {size} x {n_frames} frames (movie made in {t_make:.1f} s, {workers} workers)"
    )
    gain = (1.0 + 0.05 * rng.standard_normal((size, size))).astype(np.float32)

    # the method
    frames, t_read = timed(read_movie, path)
    (work, _, n_hot), t_prep = timed(
        prepare_frames, frames, gain=gain, overwrite_input=True
    )
    exposures = frame_exposures_e_per_a2(n_frames, 1.0)
    # correct_motion's defaults at 1 e/Å²/frame: damage-matched filters, B 20 px²,
    # coarse pass on 5-frame groups, trajectory smoothing
    damage = DamageModel(pixel_size_a=1.0, exposures_e_per_a2=exposures, voltage_kv=300)
    (shifts, aligned, factor), t_global = timed(
        align_global,
        work,
        bfactor_px2=DAMAGE_BFACTOR_PX2,
        group_half_width=2,
        damage=damage,
        smooth=True,
        workers=workers,
    )
    local, t_local = timed(
        align_patches,
        aligned,
        factor,
        (size, size),
        patches=(5, 5),
        bfactor_px2=150.0,
        group_half_width=2,
        damage=damage,
        workers=workers,
    )
    (dw, no_dw, spectrum), t_sum = timed(
        sum_frames,
        work,
        shifts,
        pixel_size_a=1.0,
        exposures_e_per_a2=exposures,
        voltage_kv=300,
        local_coefficients=local.coefficients,
        workers=workers,
    )
    _, t_sum_global = timed(
        sum_frames,
        work,
        shifts,
        pixel_size_a=1.0,
        exposures_e_per_a2=exposures,
        voltage_kv=300,
        local_coefficients=None,
        workers=workers,
    )
    ps, t_ps = timed(power_spectrum, spectrum, (size, size))

    def write_all() -> None:
        write_mrc(folder / "dw.mrc", dw, pixel_size_a=1.0)
        write_mrc(folder / "nodw.mrc", no_dw, pixel_size_a=1.0)
        write_mrc(folder / "ps.mrc", ps, pixel_size_a=1.0, float16=False)

    _, t_write = timed(write_all)

    # lower bounds on the same arrays
    _, lb_read = timed(lambda: np.fromfile(path, dtype=np.uint8).sum(dtype=np.uint64))
    _, lb_prep = timed(lambda: np.multiply(work, gain, out=work))
    binned_shape = aligned.shape[1:]

    def binned_ffts() -> None:
        spectra = scipy.fft.rfft2(aligned, workers=workers)
        scipy.fft.irfft2(spectra, s=binned_shape, workers=workers)

    _, lb_global = timed(binned_ffts)

    def full_ffts() -> None:
        acc = np.zeros((size, size // 2 + 1), np.complex64)
        for i in range(n_frames):
            acc += scipy.fft.rfft2(work[i], workers=workers)
        scipy.fft.irfft2(acc, s=(size, size), workers=workers)
        scipy.fft.irfft2(acc, s=(size, size), workers=workers)

    _, lb_sum = timed(full_ffts)
    _, lb_write = timed(
        lambda: (
            dw.astype(np.float16).tofile(folder / "raw1"),
            no_dw.astype(np.float16).tofile(folder / "raw2"),
        )
    )

    error = np.sqrt(np.mean(np.sum((shifts - truth) ** 2, axis=1)))
    rows = [
        ("read", t_read, lb_read, "raw bytes read"),
        ("gain + defects", t_prep, lb_prep, "one multiply pass"),
        (
            "global align",
            t_global,
            lb_global,
            f"fwd+inv FFT of binned frames (bin {factor})",
        ),
        ("local align", t_local, None, ""),
        ("DW sum, local warp", t_sum + t_ps, lb_sum, "n fwd + 2 inv full FFTs"),
        ("DW sum, global only", t_sum_global + t_ps, lb_sum, "n fwd + 2 inv full FFTs"),
        ("write", t_write, lb_write, "raw float16 bytes"),
    ]
    print(f"{'step':22s} {'time s':>8s} {'bound s':>8s} {'ratio':>6s}  bound")
    for name, t, bound, what in rows:
        if bound:
            print(f"{name:22s} {t:8.2f} {bound:8.2f} {t / bound:6.1f}  {what}")
        else:
            print(f"{name:22s} {t:8.2f} {'':>8s} {'':>6s}")
    total = t_read + t_prep + t_global + t_local + t_sum + t_ps + t_write
    bound = lb_read + lb_sum
    print(
        f"{'total':22s} {total:8.2f} {bound:8.2f} {total / bound:6.1f}  read + n fwd + 2 inv full FFTs"
    )
    print(
        f"throughput {n_frames * size * size / total / 1e6:.1f} Mpx/s; {3600 / total:.0f} movies/h"
    )
    print(
        f"global shift RMS error vs integer truth {error:.3f} px; hot pixels {n_hot}; local fit RMS {local.rms_residual_px:.3f} px"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small movie only")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--accuracy",
        action="store_true",
        help="errors vs the truth on a realistic simulated 4096² movie (--small: 1024²)",
    )
    parser.add_argument("--seed", type=int, default=1, help="simulation seed")
    args = parser.parse_args()
    if args.accuracy:
        from bench_motion_accuracy import measure_accuracy

        measure_accuracy(1024 if args.small else 4096, args.seed, args.workers)
        return
    rng = np.random.default_rng(7)
    sizes = [(1024, 20)] if args.small else [(1024, 20), (4096, 40)]
    with tempfile.TemporaryDirectory() as tmp:
        for size, n in sizes:
            bench(size, n, args.workers, Path(tmp), rng)


if __name__ == "__main__":
    main()
