"""Fourier insertion speed of the reconstruction, against the FFTs it cannot avoid.

    .venv/bin/python benchmarks/bench_reconstruct.py [--small] [--sym D7]

Default: 4000 particles at box 64 and 1000 at box 128 (``--small``: a quarter),
random images with random poses, each with its own CTF, inserted once per
symmetry operator (C1 unless ``--sym``) by :func:`backproject` with RELION's
insertion (the unpadded transform at ``2 R^T k`` of a 2x-padded grid; the
default) and, for comparison, with ``insertion="padded"`` (each image padded twice
before its transform); the regularised division and inverse FFT
(:func:`weights_to_map`) are timed apart.

Lower bound, measured in the same run: the forward 2D real FFTs of the same
particles, unpadded (each image must be transformed once); the ratio is what the
CTF, the recentring and the insertion cost on top.  The CPU time of the insertion
is printed too: on a shared machine wall time says little.  ``relion_reconstruct`` is timed
on the same particles (written as a STAR + MRC stack) when it is on the PATH.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import scipy.fft

from pipelines.reconstruct import (
    PosedParticles,
    backproject,
    weights_to_map,
    write_posed_particles,
)
from pipelines.simulate.projection import random_rotations

PIXEL_SIZE_A = 1.5


def make_particles(n: int, box: int, rng: np.random.Generator) -> PosedParticles:
    return PosedParticles.from_arrays(
        rng.standard_normal((n, box, box), dtype=np.float32),
        pixel_size_a=PIXEL_SIZE_A,
        rotations=random_rotations(n, rng),
        origin_px=rng.uniform(-3, 3, (n, 2)),
        defocus_u_a=rng.uniform(8000, 25000, n),
        defocus_v_a=rng.uniform(8000, 25000, n),
        astigmatism_angle_deg=rng.uniform(0, 180, n),
    )


def fft_bound_s(particles: PosedParticles) -> float:
    """Wall time of the 2D real FFTs of every particle, unpadded (all cores)."""
    images = np.ascontiguousarray(particles.images, dtype=np.float32)
    start = time.perf_counter()
    scipy.fft.rfft2(images, workers=-1)
    return time.perf_counter() - start


def relion_seconds(particles: PosedParticles, sym: str) -> float | None:
    """Wall time of ``relion_reconstruct --ctf`` on the same particles, or None."""
    exe = shutil.which("relion_reconstruct")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_posed_particles(root / "p.star", particles, stack_name="p.mrcs")
        start = time.perf_counter()
        subprocess.run(
            [exe, "--i", "p.star", "--o", "relion.mrc", "--ctf", "--sym", sym],
            cwd=root,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small", action="store_true", help="a quarter of the particles"
    )
    parser.add_argument("--sym", default="C1", help="point group (C1)")
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    backproject(make_particles(8, 16, rng), symmetry=args.sym)  # compile / load cache
    print(f"numba threads {numba.get_num_threads()}, symmetry {args.sym}")
    for box, n in ((64, 4000), (128, 1000)):
        n = n // 4 if args.small else n
        particles = make_particles(n, box, rng)
        start, cpu = time.perf_counter(), time.process_time()
        backproject(particles, symmetry=args.sym, insertion="padded")
        padded_s = time.perf_counter() - start
        padded_cpu_s = time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        sums = backproject(particles, symmetry=args.sym)
        insert_s = time.perf_counter() - start
        insert_cpu_s = time.process_time() - cpu
        start = time.perf_counter()
        weights_to_map(sums, ssnr=100.0)
        finish_s = time.perf_counter() - start
        bound_s = fft_bound_s(particles)
        relion_s = relion_seconds(particles, args.sym)
        relion = (
            "relion_reconstruct not found on PATH"
            if relion_s is None
            else f"relion_reconstruct {relion_s:.2f} s ({n / relion_s:.0f} particles/s)"
        )
        print(
            f"box {box}: {n} particles inserted in {insert_s:.2f} s "
            f"({n / insert_s:.0f} particles/s, {insert_cpu_s:.2f} CPU s); "
            f"map {finish_s:.2f} s; "
            f"FFT bound {bound_s:.3f} s ({n / bound_s:.0f} particles/s); "
            f"ratio {insert_s / bound_s:.1f}; "
            f"padded images: {padded_s:.2f} s ({padded_cpu_s:.2f} CPU s); {relion}"
        )


if __name__ == "__main__":
    main()
