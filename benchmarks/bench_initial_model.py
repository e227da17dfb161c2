"""VDAM initial model: success over seeds, and pose-search speed against BLAS.

    .venv/bin/python benchmarks/bench_initial_model.py [--seeds 3] [--particles 1500]
        [--snr 1.0] [--mini-batches 20] [--batch 150] [--final-batch 300]
        [--speed-only] [--speed-boxes 64 128] [--accuracy-only]

Accuracy: for each seed, particles are simulated from the real 70S ribosome map
(``$LIVESTREAM_SHARED_DATA/real`` or ``../shared/data/real``, whole map in a box of 32, 10.2 Å/px) at random poses
and shifts (±2 px), each with its own CTF (defocus 0.8-2.5 µm) and white noise at
``--snr``; the initial model runs from random poses; its map is aligned to the
truth (rotation search, both hands) and its FSC = 0.5 resolution compared with
that of the reconstruction from the true poses.  A seed succeeds when the ratio
is <= 1.5 (issue #15).

Speed: one mini-batch's E-step (every pose of the 15° grid x 21 origins, coarse
then fine) and back-projection at box 64 on random images, in particles/s, and
the lower bound measured in the same run: the coarse pass's two real matrix
products of the same shapes alone (BLAS).

RELION side by side (accuracy rows): the same particles are written by
``write_posed_particles`` (RELION 3.1 STAR, every angle and origin 0, their CTFs)
and ``--relion-bin`` runs ``relion_refine --denovo_3dref`` on them with the
command its GUI's "3D initial model" job writes: RELION 4/5's VDAM (``--grad
--iter 200 --pad 1 --healpix_order 1 --offset_range 6 --offset_step 2
--auto_sampling --tau2_fudge 4``), or with ``--relion-sgd`` RELION 3.1's SGD
(``--sgd``, 50 + 200 + 50 iterations, 35 -> 15 Å, mini-batches 100 -> 500, ``--pad 2
--healpix_order 1 --offset_range 6 --offset_step 4``); both ``--ctf --K 1 --sym C1
--flatten_solvent --zero_mask --particle_diameter`` (ours: 0.9 of the box) and
``--j --relion-threads``.  ``--relion-iter`` scales the iterations down.  Its last
written map is aligned to the truth like ours (both hands) and its FSC = 0.5
printed with its wall and CPU seconds; after ``--relion-timeout-s`` it is stopped
and its last written iteration (every 10) is reported, marked "cut short".
``--relion-bin`` defaults to the RELION 5 build (``/work/relion5-build/bin/``)
when it is there, else RELION is skipped; ``--no-ours`` runs RELION alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import resource
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft

from pipelines.class2d.schedule import Schedule
from pipelines.class3d import (
    InitialModelConfig,
    best_of_starts,
    initialise_state,
    run_minibatches,
    vdam_step,
)
from pipelines.class3d.align import align_maps
from pipelines.class3d.classify import ClassificationOptions, classify_initial_model
from pipelines.class3d.state import DEFAULT_SCHEDULE
from pipelines.class3d.vdam import _pose_grids
from pipelines.reconstruct import (
    PosedParticles,
    fourier_shell_correlation,
    reconstruct_halves,
)
from pipelines.reconstruct.particles import ctf_batch, write_posed_particles
from pipelines.simulate.conformations import simulate_mixture, without_region
from pipelines.simulate.projection import project, random_rotations
from pipelines.simulate.volumes import (
    RIBOSOME_70S_PIXEL_SIZE_A,
    load_map,
    rescale_volume,
)

DATA = (
    Path(os.environ.get("LIVESTREAM_SHARED_DATA", "")) / "real"
    if os.environ.get("LIVESTREAM_SHARED_DATA")
    else Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
)
RELION5 = Path("/work/relion5-build/bin/relion_refine")


def simulate(
    volume: np.ndarray, n: int, px: float, snr: float, rng: np.random.Generator
) -> PosedParticles:
    box = volume.shape[0]
    rotations = random_rotations(n, rng)
    shifts = rng.uniform(-2.0, 2.0, (n, 2))
    clean = project(volume, rotations, shifts_px=shifts)
    du = rng.uniform(8000.0, 25000.0, n)
    posed = PosedParticles.from_arrays(
        clean,
        pixel_size_a=px,
        rotations=rotations,
        origin_px=-shifts,
        defocus_u_a=du,
        defocus_v_a=du - rng.uniform(0, 1500, n),
        astigmatism_angle_deg=rng.uniform(0, 180, n),
    )
    ky = np.fft.fftfreq(box, px)[:, None]
    kx = np.fft.rfftfreq(box, px)[None, :]
    ctf = ctf_batch(posed, np.arange(n), ky, kx)
    images = scipy.fft.irfft2(scipy.fft.rfft2(clean) * ctf, s=(box, box))
    images /= images.std()
    images += rng.standard_normal(images.shape) / np.sqrt(snr)
    return dataclasses.replace(posed, images=images.astype(np.float32))


def _schedule(args: argparse.Namespace) -> Schedule:
    return dataclasses.replace(
        DEFAULT_SCHEDULE,
        n_minibatches=args.mini_batches,
        initial_min=args.batch,
        initial_max=args.batch,
        final_min=args.final_batch,
        final_max=args.final_batch,
    )


def _rounds(scores: np.ndarray) -> str:
    """Each round's scores, ``-`` for a start already dropped."""
    return " | ".join(
        " ".join("-" if np.isnan(v) else f"{v:.1f}" for v in row) for row in scores
    )


def true_pose_a(particles: PosedParticles, truth: np.ndarray, px: float) -> float:
    """FSC 0.5 with the truth of the reconstruction from the true poses."""
    return fourier_shell_correlation(
        reconstruct_halves(particles).full, truth, px
    ).crossing_a(0.5)


def accuracy_row(
    seed: int,
    args: argparse.Namespace,
    truth: np.ndarray,
    px: float,
    particles: PosedParticles,
) -> str:
    true_a = true_pose_a(particles, truth, px)
    config = InitialModelConfig(
        n_classes=1,
        box_px=truth.shape[0],
        pixel_size_a=px,
        initial_resolution_a=args.initial_resolution_a,
        schedule=_schedule(args),
    )
    start, cpu0 = time.perf_counter(), time.process_time()
    state, choice = best_of_starts(
        config,
        particles,
        np.random.default_rng(seed + 1000),
        n_starts=args.starts,
        trial_minibatches=round(args.trial_fraction * args.mini_batches),
        finalists_to_end=not args.halve_only,
    )
    state = run_minibatches(config, state, particles)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    aligned = align_maps(state.maps[0], truth, pixel_size_a=px)
    if args.save_maps is not None:
        args.save_maps.mkdir(parents=True, exist_ok=True)
        np.save(args.save_maps / f"seed{seed}_map.npy", state.maps[0])
        np.save(args.save_maps / f"seed{seed}_aligned.npy", aligned.aligned)
    found_a = fourier_shell_correlation(aligned.aligned, truth, px).crossing_a(0.5)
    ratio = found_a / true_a
    ok = "yes" if ratio <= 1.5 else "no"
    return (
        f"{seed:>4}  {true_a:7.1f}  {found_a:7.1f}  {ratio:5.2f}  "
        f"{aligned.correlation:5.2f}  {aligned.mirrored!s:>5}  {seconds:6.0f}  "
        f"{cpu:6.0f}  {choice.chosen + 1}/{args.starts} {_rounds(choice.scores)}  {ok}"
    )


def relion_command(
    args: argparse.Namespace, star: Path, out: Path, diameter_a: float
) -> list[str]:
    """``relion_refine --denovo_3dref`` as RELION's GUI writes its "3D initial
    model" job (RELION 3.1 ``--sgd`` or 4/5 ``--grad``), iterations scaled by
    ``--relion-iter``."""
    common = [
        "--i", str(star), "--o", str(out / "run"), "--denovo_3dref", "--ctf",
        "--K", "1", "--sym", "C1", "--flatten_solvent", "--zero_mask",
        "--dont_combine_weights_via_disc", "--pool", "3",
        "--particle_diameter", f"{diameter_a:.1f}", "--oversampling", "1",
        "--healpix_order", "1", "--offset_range", "6",
        "--j", str(args.relion_threads),
    ]  # fmt: skip
    if args.relion_sgd:  # RELION 3.1: 50 + 200 + 50 iterations
        total = args.relion_iter or 300
        ini, fin = round(total / 6), round(total / 6)
        return [
            str(args.relion_bin), *common, "--sgd", "--offset_step", "4",
            "--sgd_ini_iter", str(ini), "--sgd_inbetween_iter", str(total - ini - fin),
            "--sgd_fin_iter", str(fin), "--sgd_write_iter", "10",
            "--sgd_ini_resol", "35", "--sgd_fin_resol", "15",
            "--sgd_ini_subset", "100", "--sgd_fin_subset", "500",
            "--pad", "2", "--skip_gridding",
        ]  # fmt: skip
    return [
        str(args.relion_bin), *common, "--grad", "--iter",
        str(args.relion_iter or 200), "--offset_step", "2", "--auto_sampling",
        "--tau2_fudge", "4", "--pad", "1",
    ]  # fmt: skip


def relion_row(
    seed: int,
    args: argparse.Namespace,
    truth: np.ndarray,
    px: float,
    particles: PosedParticles,
) -> str:
    """``relion_refine --denovo_3dref`` on the same particles (no poses in the
    STAR): its last written map aligned to the truth, wall and CPU seconds."""
    n = particles.n_particles
    unposed = dataclasses.replace(
        particles, rotations=np.tile(np.eye(3), (n, 1, 1)), origin_px=np.zeros((n, 2))
    )
    work = Path(tempfile.mkdtemp(prefix=f"bench_initial_model_relion_s{seed}_"))
    star = write_posed_particles(
        work / "particles.star", unposed, stack_name="particles.mrcs"
    )
    out = work / "relion"
    out.mkdir()
    diameter_a = 0.9 * truth.shape[0] * px  # ours: InitialModelConfig's default
    command = relion_command(args, star, out, diameter_a)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    cut_short = False
    with (out / "relion.log").open("w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work,
            start_new_session=True,  # its own process group, ended as one
        )
        try:
            process.wait(timeout=args.relion_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            cut_short = True
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    maps = {
        int(m.group(1)): path
        for path in out.glob("run_it*_class001.mrc")
        if (m := re.fullmatch(r"run_it(\d+)_class001\.mrc", path.name))
    }
    if not maps or (process.returncode != 0 and not cut_short):
        tail = (out / "relion.log").read_text(errors="replace")[-2000:]
        return f"{seed:>4}  relion_refine failed (rc {process.returncode}):\n{tail}"
    last = max(maps)
    volume, _ = load_map(maps[last])
    aligned = align_maps(volume, truth, pixel_size_a=px)
    found_a = fourier_shell_correlation(aligned.aligned, truth, px).crossing_a(0.5)
    true_a = true_pose_a(particles, truth, px)
    ratio = found_a / true_a
    note = f"map of iteration {last}"
    if cut_short:  # the iteration it was in when stopped, from its log
        reached = re.findall(
            r"iteration (\d+) of (\d+)",
            (out / "relion.log").read_text(errors="replace"),
        )
        at = f", stopped in iteration {reached[-1][0]} of {reached[-1][1]}"
        note += " (cut short" + (at if reached else "") + ")"
    return (
        f"{seed:>4}  {true_a:7.1f}  {found_a:7.1f}  {ratio:5.2f}  "
        f"{aligned.correlation:5.2f}  {aligned.mirrored!s:>5}  {seconds:6.0f}  "
        f"{cpu:6.0f}  {note}  {'yes' if ratio <= 1.5 else 'no'}  files in {work}"
    )


def two_class_row(
    seed: int, args: argparse.Namespace, truth: np.ndarray, px: float
) -> str:
    """K = 2 on two conformations (the whole 70S and the 70S less a ball of
    radius 6 px, 24 % of its density; half the particles each): VDAM with two
    classes from random starts, then ``classify_initial_model``; the fraction of
    particles in their conformation's class (the better of the two matchings)."""
    rng = np.random.default_rng(seed)
    volumes = [truth, without_region(truth, distance_px=7.0, radius_px=6.0)]
    half = args.particles // 2
    particles, labels = simulate_mixture(
        volumes, [half, args.particles - half], pixel_size_a=px, snr=args.snr, rng=rng
    )
    config = InitialModelConfig(
        n_classes=2,
        box_px=truth.shape[0],
        pixel_size_a=px,
        initial_resolution_a=args.initial_resolution_a,
        schedule=_schedule(args),
    )
    start = time.perf_counter()
    rng = np.random.default_rng(seed + 1000)
    state, _ = best_of_starts(
        config,
        particles,
        rng,
        n_starts=args.starts,
        trial_minibatches=round(args.trial_fraction * args.mini_batches),
        finalists_to_end=not args.halve_only,
    )
    state = run_minibatches(config, state, particles)
    vdam_s = time.perf_counter() - start
    result = classify_initial_model(
        config,
        state,
        particles,
        rng=rng,
        options=ClassificationOptions(n_iterations=args.class_iterations),
    )
    seconds = time.perf_counter() - start
    found = result.assignment.class_index
    same = float(np.mean(found == labels))
    right = max(same, 1.0 - same)
    fractions = " ".join(f"{f:.2f}" for f in result.state.class_fractions)
    return (
        f"{seed:>4}  {right:6.1%}  {fractions:>10}  {result.iterations:>3}  "
        f"{vdam_s:6.0f}  {seconds:6.0f}  {'yes' if right >= 0.9 else 'no'}"
    )


def speed(n: int, box: int = 64) -> None:
    px = 5.0
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((box, box, box)).astype(np.float32)
    particles = simulate(truth, n, px, 0.1, rng)
    config = InitialModelConfig(
        n_classes=1,
        box_px=box,
        pixel_size_a=px,
        initial_resolution_a=20.0,
        schedule=dataclasses.replace(
            DEFAULT_SCHEDULE, n_minibatches=2, initial_min=n, initial_max=n
        ),
    )
    state = initialise_state(config, particles, np.random.default_rng(1))
    rows = np.arange(n)
    vdam_step(config, state, particles, rows[: min(n, 50)])  # compile
    start = time.perf_counter()
    vdam_step(config, state, particles, rows)
    step_s = time.perf_counter() - start
    # the bound: the coarse pass's matrix products alone, same shapes (float32)
    coarse, _, _ = _pose_grids(config.angular_step_deg, config.oversampling)
    n_shift = 21
    radius = max(config.initial_radius_px, config.coarse_radius_fraction * 16)
    n_pix = int(np.pi * radius * radius / 2)
    a = rng.standard_normal((n * n_shift, n_pix), dtype=np.float32)
    p = rng.standard_normal((n_pix, coarse.n_rotations), dtype=np.float32)
    start = time.perf_counter()
    for block in range(0, len(a), 2048):  # same memory blocking as the search
        a[block : block + 2048] @ p
        a[block : block + 2048] @ p
    bound_s = time.perf_counter() - start
    print(
        f"box {box}, {n} particles, {coarse.n_rotations} rotations x {n_shift} "
        f"origins on {n_pix} coarse pixels"
    )
    print(
        f"  one mini-batch (E-step + back-projection + map): {n / step_s:7.1f} "
        f"particles/s; BLAS bound {n / bound_s:7.1f} particles/s; ratio "
        f"{step_s / bound_s:5.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--particles", type=int, default=1500)
    parser.add_argument("--snr", type=float, default=1.0)
    parser.add_argument("--mini-batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=150)
    parser.add_argument("--final-batch", type=int, default=300)
    parser.add_argument("--speed-particles", type=int, default=200)
    parser.add_argument("--starts", type=int, default=4)
    parser.add_argument(
        "--trial-fraction",
        type=float,
        default=1.0,
        help="of the mini-batches, a round of successive halving (1: every start "
        "runs to the end, the command's choice)",
    )
    parser.add_argument(
        "--halve-only", action="store_true", help="finalists not run to the end"
    )
    parser.add_argument("--initial-resolution-a", type=float, default=None)
    parser.add_argument("--two-classes", action="store_true")
    parser.add_argument("--class-iterations", type=int, default=5)
    parser.add_argument("--save-maps", type=Path, default=None)
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument(
        "--speed-boxes", type=int, nargs="+", default=[64, 128], help="boxes timed"
    )
    parser.add_argument("--accuracy-only", action="store_true")
    parser.add_argument(
        "--relion-bin",
        type=Path,
        default=RELION5 if RELION5.exists() else None,
        help="relion_refine to run side by side (default: the RELION 5 build "
        f"{RELION5} when present, else none)",
    )
    parser.add_argument(
        "--relion-sgd",
        action="store_true",
        help="RELION 3.1's SGD (--sgd) instead of RELION 4/5's VDAM (--grad)",
    )
    parser.add_argument(
        "--relion-iter",
        type=int,
        default=None,
        help="iterations (default: the GUI's, 200 VDAM or 300 SGD)",
    )
    parser.add_argument("--relion-threads", type=int, default=2)
    parser.add_argument(
        "--relion-timeout-s",
        type=float,
        default=2400.0,
        help="stop relion_refine after this long and report its last written map",
    )
    parser.add_argument("--no-ours", action="store_true", help="RELION alone")
    args = parser.parse_args()
    if not args.accuracy_only:
        for box in args.speed_boxes:
            speed(args.speed_particles, box)
    if not args.speed_only:
        volume, _ = load_map(DATA / "clean70SRibosome_vol_65p.mrc")
        box = 32
        px = 65 * RIBOSOME_70S_PIXEL_SIZE_A / box
        truth = rescale_volume(
            volume,
            from_pixel_size_a=RIBOSOME_70S_PIXEL_SIZE_A,
            to_pixel_size_a=px,
            box_px=box,
        )
        print(
            f"70S, box {box}, {px:.1f} Å/px, {args.particles} particles, "
            f"SNR {args.snr}, {args.mini_batches} mini-batches of {args.batch} -> "
            f"{args.final_batch}, {args.starts} starts"
        )
        if args.two_classes:
            print("seed  right  fractions  its  vdam s  secs  ok (>= 90 %)")
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                print(two_class_row(seed, args, truth, px), flush=True)
            return
        relion = args.relion_bin
        print(f"relion_refine: {relion or 'none (skipped)'}")
        print(
            "seed  true Å   found Å  ratio     cc  mirror  wall s  CPU s  "
            "start [scores] / RELION  ok"
        )
        rows = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            particles = simulate(
                truth, args.particles, px, args.snr, np.random.default_rng(seed)
            )
            if not args.no_ours:
                rows.append(accuracy_row(seed, args, truth, px, particles))
                print("ours  " + rows[-1], flush=True)
            if relion is not None:
                print(
                    "RELION" + relion_row(seed, args, truth, px, particles), flush=True
                )
        succeeded = sum(row.endswith("yes") for row in rows)
        if rows:
            print(f"ours succeeded: {succeeded}/{len(rows)}")


if __name__ == "__main__":
    main()
