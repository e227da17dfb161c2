"""Gold-standard 3D refinement: FSC to the truth, pose errors and speed, beside
``relion_refine --auto_refine`` on the same STAR and start map.

    nice -n 10 .venv/bin/python benchmarks/bench_refine3d.py [--box 32]
        [--particles 1500] [--snr 0.1] [--threads 2] [--no-relion] [--workdir DIR]

Particles are simulated from the real 70S ribosome map
(``$LIVESTREAM_SHARED_DATA/real``; the whole 65^3 map rescaled into ``--box``) at
uniformly random poses and shifts (±2 px), each with its own astigmatic CTF
(defocus 0.8-2.5 µm, applied particle by particle with ``ctf_2d``, independently
of the code under test) and white noise at ``--snr``.  They are written once by
``write_posed_particles`` as a RELION 3.1 STAR (``rlnRandomSubset`` by parity)
with all angles and origins set to 0, so neither program starts from the truth;
the start map is the truth itself, which both low-pass to 40 Å (ours:
``--ini-high-a 40``, RELION: ``--ini_high 40``).

Ours: :func:`pipelines.class3d.refine.refine` in this process (wall and CPU
seconds of the refinement alone).  RELION: ``relion_refine --auto_refine
--split_random_halves --firstiter_cc --ini_high 40 --healpix_order 2
--auto_local_healpix_order 4 --offset_range 3 --offset_step 1 --low_resol_join_halves
40 --ctf --flatten_solvent --zero_mask --norm --scale --pad 2 --dont_check_norm``
(RELION's auto-refine defaults) under ``mpirun -np 3`` (RELION splits random
halves only under MPI: a leader and two followers of ``--j THREADS / 2``), when
``relion_refine_mpi`` is on the PATH; after ``--relion-timeout-s`` (1800) it is
stopped and its last finished iteration (both half maps averaged, its poses) is
reported, marked "cut short".  Quality:
each full map's FSC with the truth (0.5 crossing, in Å and in shells), beside the
reconstruction from the true poses (``reconstruct_halves``); the gold-standard
half-map resolution each program reports; the median and 90th percentile of the
rotation error (degrees) and of the origin error (pixels) against the true
poses.  Speed: per iteration, particles/s and the ratio of its time to the bound
measured in the same run: one FFT of every image plus the score's matrix products
alone, same shapes (BLAS).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft
import starfile

from pipelines.class3d.orientations import pose_grid, shift_grid
from pipelines.class3d.pixels import pixel_set
from pipelines.class3d.refine import (
    RefineConfig,
    RefineIteration,
    local_rotations,
    refine,
)
from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.reconstruct import (
    PosedParticles,
    fourier_shell_correlation,
    reconstruct_halves,
    write_posed_particles,
)
from pipelines.reconstruct.geometry import euler_to_matrix
from pipelines.reconstruct.outputs import write_map
from pipelines.simulate.projection import project, random_rotations
from pipelines.simulate.volumes import (
    RIBOSOME_70S_PIXEL_SIZE_A,
    load_map,
    rescale_volume,
)

DATA = Path(os.environ.get("LIVESTREAM_SHARED_DATA", "../shared/data")) / "real"


def simulate(
    volume: np.ndarray, n: int, px: float, snr: float, rng: np.random.Generator
) -> PosedParticles:
    box = volume.shape[0]
    rotations = random_rotations(n, rng)
    shifts = rng.uniform(-2.0, 2.0, (n, 2))
    clean = project(volume, rotations, shifts_px=shifts)
    du = rng.uniform(8000.0, 25000.0, n)
    dv = du - rng.uniform(0, 1500, n)
    angle = rng.uniform(0, 180, n)
    ctfs = np.stack(
        [
            ctf_2d(
                (box, box),
                px,
                CtfParams(defocus_u_a=u, defocus_v_a=v, astigmatism_angle_deg=a),
            )
            for u, v, a in zip(du, dv, angle, strict=True)  # one CTF per particle
        ]
    )
    images = scipy.fft.irfft2(scipy.fft.rfft2(clean) * ctfs, s=(box, box))
    images /= images.std()
    images += rng.standard_normal(images.shape) / np.sqrt(snr)
    return PosedParticles.from_arrays(
        images.astype(np.float32),
        pixel_size_a=px,
        rotations=rotations,
        origin_px=-shifts,
        defocus_u_a=du,
        defocus_v_a=dv,
        astigmatism_angle_deg=angle,
    )


def angle_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    trace = np.einsum("nij,nij->n", a, b)
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def fsc_to_truth(
    volume: np.ndarray, truth: np.ndarray, px: float
) -> tuple[float, float]:
    curve = fourier_shell_correlation(volume, truth, px)
    return curve.crossing_a(0.5), curve.crossing_index(0.5)


def bound_seconds(record: RefineIteration, n: int, box: int) -> float:
    """The least work of one iteration: each image's FFT once and the score's
    matrix products alone, same shapes."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, box, box), dtype=np.float32)
    start = time.perf_counter()
    scipy.fft.rfft2(images, workers=-1)
    fft_s = time.perf_counter() - start
    return fft_s + _matmul_seconds(record, n, box, rng)


def _matmul_seconds(
    record: RefineIteration, n: int, box: int, rng: np.random.Generator
) -> float:
    m2 = 2 * pixel_set(box, record.radius_px).n_pixels
    if not record.local:
        n_r = pose_grid(record.step_deg).n_rotations
        n_t = len(shift_grid(3.0, record.offset_step_px))
        p = rng.standard_normal((m2, n_r), dtype=np.float32)
        block = max(1, 2**23 // (n_t * n_r))
        a = rng.standard_normal((block * n_t, m2), dtype=np.float32)
        start = time.perf_counter()
        for _ in range(0, n, block):  # same blocks as the search
            a @ p
        return time.perf_counter() - start
    n_j = len(local_rotations(record.step_deg, 2.0))
    n_t = len(shift_grid(2.0 * record.offset_step_px, record.offset_step_px))
    a = rng.standard_normal((n, n_t, m2), dtype=np.float32)
    p = rng.standard_normal((n, m2, n_j), dtype=np.float32)
    start = time.perf_counter()
    np.matmul(a, p)
    return time.perf_counter() - start


def run_relion(
    star: Path, ref: Path, out: Path, diameter_a: float, threads: int, timeout_s: float
) -> tuple[float, float, Path]:
    out.mkdir(parents=True, exist_ok=True)
    # RELION splits random halves only under MPI: a leader and two followers
    command = [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        "3",
        "relion_refine_mpi",
        "--o",
        str(out / "run"),
        "--auto_refine",
        "--split_random_halves",
        "--i",
        str(star),
        "--ref",
        str(ref),
        "--firstiter_cc",
        "--ini_high",
        "40",
        "--dont_combine_weights_via_disc",
        "--pool",
        "30",
        "--pad",
        "2",
        "--ctf",
        "--particle_diameter",
        f"{diameter_a:.1f}",
        "--flatten_solvent",
        "--zero_mask",
        "--oversampling",
        "1",
        "--healpix_order",
        "2",
        "--auto_local_healpix_order",
        "4",
        "--offset_range",
        "3",
        "--offset_step",
        "1",
        "--sym",
        "C1",
        "--low_resol_join_halves",
        "40",
        "--norm",
        "--scale",
        "--dont_check_norm",
        "--j",
        str(max(1, threads // 2)),
    ]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    with (out / "relion.log").open("w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=star.parent,
            start_new_session=True,  # its own process group, ended as one
        )
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, usage.ru_utime + usage.ru_stime - cpu0, out


def relion_result(out: Path, truth: np.ndarray, px: float) -> dict[str, object]:
    """RELION's final result, or its last finished iteration when it was cut
    short (``final`` False): poses, map of both halves, reported resolution."""
    halves = sorted(out.glob("run_it*_half1_class001.mrc"))
    final = (out / "run_model.star").exists()
    if final:
        data_star, model_star = out / "run_data.star", out / "run_model.star"
        volume, _ = load_map(out / "run_class001.mrc")
    else:
        stem = halves[-1].name.removesuffix("_half1_class001.mrc")
        data_star, model_star = (
            out / f"{stem}_data.star",
            out / f"{stem}_half1_model.star",
        )
        one, _ = load_map(halves[-1])
        two, _ = load_map(out / f"{stem}_half2_class001.mrc")
        volume = 0.5 * (one + two)
    data = starfile.read(data_star)["particles"]
    rotations = euler_to_matrix(
        data["rlnAngleRot"].to_numpy(float),
        data["rlnAngleTilt"].to_numpy(float),
        data["rlnAnglePsi"].to_numpy(float),
    )
    origin = (
        np.stack(
            [
                data["rlnOriginXAngst"].to_numpy(float),
                data["rlnOriginYAngst"].to_numpy(float),
            ],
            axis=1,
        )
        / px
    )
    model = starfile.read(model_star)["model_general"]
    fsc_a, fsc_shell = fsc_to_truth(volume, truth, px)
    return {
        "rotations": rotations,
        "origin_px": origin,
        "resolution_a": float(model["rlnCurrentResolution"]),
        "iterations": len(halves) - 1,  # run_it000 is the start
        "final": final,
        "fsc_a": fsc_a,
        "fsc_shell": fsc_shell,
    }


def pose_errors(
    rotations: np.ndarray, origin_px: np.ndarray, truth: PosedParticles
) -> str:
    angle = angle_error_deg(rotations, truth.rotations)
    shift = np.hypot(*(origin_px - truth.origin_px).T)
    return (
        f"rotation error median {np.median(angle):6.2f}°, 90 % {np.percentile(angle, 90):6.2f}°; "
        f"origin error median {np.median(shift):5.2f} px, 90 % {np.percentile(shift, 90):5.2f} px"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--particles", type=int, default=1500)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-relion", action="store_true")
    parser.add_argument(
        "--relion-timeout-s",
        type=float,
        default=1800.0,
        help="stop relion_refine after this long and report its last iteration",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    volume, _ = load_map(DATA / "clean70SRibosome_vol_65p.mrc")
    px = 65 * RIBOSOME_70S_PIXEL_SIZE_A / args.box
    truth = rescale_volume(
        volume,
        from_pixel_size_a=RIBOSOME_70S_PIXEL_SIZE_A,
        to_pixel_size_a=px,
        box_px=args.box,
    )
    rng = np.random.default_rng(args.seed)
    particles = simulate(truth, args.particles, px, args.snr, rng)
    n = particles.n_particles
    start_set = dataclasses.replace(
        particles, rotations=np.tile(np.eye(3), (n, 1, 1)), origin_px=np.zeros((n, 2))
    )
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_refine3d_"))
    work.mkdir(parents=True, exist_ok=True)
    star = write_posed_particles(
        work / "particles.star", start_set, stack_name="particles.mrcs"
    )
    ref = write_map(work / "reference.mrc", truth, pixel_size_a=px)
    print(
        f"70S, box {args.box}, {px:.2f} Å/px, {n} particles, SNR {args.snr}, "
        f"start: the truth low-passed to 40 Å; files in {work}"
    )
    true_map = reconstruct_halves(particles).full
    true_a, true_shell = fsc_to_truth(true_map, truth, px)
    config = RefineConfig(box_px=args.box, pixel_size_a=px)
    refine(start_set, truth, dataclasses.replace(config, max_iterations=2))  # compile
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = refine(start_set, truth, config)
    ours_s, ours_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    ours_a, ours_shell = fsc_to_truth(result.reconstruction.full, truth, px)
    print(
        "\niteration  step°  local  radius  half-FSC Å  dθ°    secs  particles/s  bound ratio"
    )
    for record in result.iterations:  # a loop over iterations
        bound = bound_seconds(record, n, args.box)
        print(
            f"{record.iteration:>9}  {record.step_deg:5.2f}  {record.local!s:>5}  "
            f"{record.radius_px:>6}  {record.resolution_a:10.1f}  "
            f"{record.rotation_change_deg:5.1f}  {record.seconds:6.1f}  "
            f"{n / record.seconds:11.0f}  {record.seconds / bound:11.1f}"
        )
    print(
        f"\n{'':<28}{'FSC 0.5 to truth':>18}{'shell':>7}{'half-map 0.143':>16}{'iters':>7}{'wall s':>8}{'CPU s':>8}"
    )
    print(f"{'true poses':<28}{true_a:16.1f} Å{true_shell:7.2f}")
    print(
        f"{'livestream refine3d':<28}{ours_a:16.1f} Å{ours_shell:7.2f}"
        f"{result.resolution_a:14.1f} Å{len(result.iterations):7}{ours_s:8.0f}{ours_cpu:8.0f}"
    )
    lines = [
        f"{'livestream refine3d':<28}{pose_errors(result.rotations, result.origin_px, particles)}"
    ]
    if args.no_relion or shutil.which("relion_refine_mpi") is None:
        print("relion_refine: " + ("skipped" if args.no_relion else "not on PATH"))
    else:
        seconds, cpu, out = run_relion(
            star,
            ref,
            work / "relion",
            config.diameter_a,
            args.threads,
            args.relion_timeout_s,
        )
        found = relion_result(out, truth, px)
        name = "relion_refine 3.1.3" + ("" if found["final"] else " (cut short)")
        print(
            f"{name:<28}{found['fsc_a']:16.1f} Å{found['fsc_shell']:7.2f}"
            f"{found['resolution_a']:14.1f} Å{found['iterations']:7}{seconds:8.0f}{cpu:8.0f}"
        )
        if not found["final"]:
            print(
                f"relion_refine stopped after {args.relion_timeout_s:.0f} s: its last "
                "finished iteration (both half maps averaged) is shown"
            )
        lines.append(
            f"{name:<28}"
            + pose_errors(found["rotations"], found["origin_px"], particles)  # type: ignore[arg-type]
        )
        print(f"speed-up (wall): {seconds / ours_s:.1f}x, (CPU): {cpu / ours_cpu:.1f}x")
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
