"""Two conformations separated from particles alone: consensus refinement, then 3D
classification without alignment (RELION's Class3D ``--skip_align``).

    nice -n 10 .venv/bin/python benchmarks/bench_skip_align.py [--particles 1000 5000]
        [--snr 0.3 1] [--seed 1] [--starts 4] [--iterations 30] [--limit-a 40]
        [--relion-bin /usr/bin/relion_refine] [--no-relion]

Data: the real 70S ribosome map (``$LIVESTREAM_SHARED_DATA/real``, the whole map
in a box of 32 at 10.2 Å/px) and the same map less a ball of radius 6 px (24 % of
its positive density), half the particles each, random poses, ±2 px shifts, a CTF
each, white noise at the SNR of the whole map's signal
(``pipelines.simulate.conformations``).  The particles' poses are thrown away;
``pipelines.class3d.refine.refine`` (``livestream refine3d``) refines all of them
against one map from a 40 Å low-pass of the whole conformation (the consensus
refinement), and ``classify_without_alignment`` (``livestream class3d
--skip-align --classes 2``) classifies them at those poses.

The peer, where installed (``--relion-bin``, RELION 3.1.3 here): ``relion_refine``
Class3D with ``--skip_align --K 2`` on the same particles at the same consensus
poses (STAR with ``rlnAngleRot/Tilt/Psi``, ``rlnOriginX/YAngst``), from the
consensus map (``--firstiter_cc``, RELION's random split), T = 4,
``--strict_highres_exp`` at the same limit, ``--iter`` as ours, ``--j 2``.

Printed per (particles, SNR): the consensus refinement's median pose error and
seconds; the fraction of particles in the right class under the better matching
of classes to conformations, the same classification at the true poses (what
the poses cost), seconds, and the ratio to a lower bound measured in the same
run: per iteration one projection per particle per class (the gather kernel)
and one insertion per particle (the reconstruction's kernel; a particle whose
class is certain is inserted into that class only), the work no skip-align EM
can avoid, times the iterations run over all starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import starfile
from bench_class3d import BOX, MICROGRAPHS, accuracy, conformations

from pipelines.class3d.classify import classification_config
from pipelines.class3d.expectation import project_pixels
from pipelines.class3d.pixels import padded_transforms, pixel_set, soft_circle
from pipelines.class3d.refine import RefineConfig, refine
from pipelines.class3d.skip_align import (
    DEFAULT_RESOLUTION_A,
    SkipAlignClassification,
    SkipAlignOptions,
    classify_without_alignment,
)
from pipelines.class3d.state import InitialModelConfig
from pipelines.class3d.vdam import reference_transforms
from pipelines.reconstruct import PosedParticles, write_posed_particles
from pipelines.reconstruct.backproject import insert_transforms
from pipelines.reconstruct.outputs import write_map
from pipelines.simulate.conformations import simulate_mixture


def angle_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    trace = np.einsum("nij,nij->n", a, b)
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def bound_seconds(
    config: InitialModelConfig,
    particles: PosedParticles,
    limit_a: float,
    iterations: int,
) -> float:
    """One projection per particle per class and one insertion per particle
    (a particle whose posterior is certain goes into one class), ``iterations``
    times (the fastest of two passes)."""
    pixels = pixel_set(config.box_px, config.shell_of(limit_a))
    rows = np.arange(particles.n_particles)
    mask = soft_circle(config.box_px, config.mask_radius_px)
    fimages, ctf2 = padded_transforms(particles, rows, mask, config.padding)
    maps = np.zeros((config.n_classes, BOX, BOX, BOX), dtype=np.float32)
    transforms = reference_transforms(config, maps)
    best = np.inf
    for _ in range(2):  # the first pass also compiles
        start = time.perf_counter()
        for k in range(config.n_classes):  # a loop over classes
            project_pixels(
                transforms[k : k + 1], particles.rotations, pixels, config.padding
            )
        insert_transforms(
            fimages, ctf2, rows, particles.rotations, box_px=BOX, padding=2
        )
        best = min(best, time.perf_counter() - start)
    return best * iterations


def run_relion(
    args: argparse.Namespace,
    posed: PosedParticles,
    consensus_map: np.ndarray,
    truth: np.ndarray,
    px: float,
) -> str:
    """RELION's Class3D --skip_align on ``posed``: correct and seconds."""
    binary = shutil.which(args.relion_bin) or args.relion_bin
    if not Path(binary).is_file():
        return f"relion_refine: not installed ({args.relion_bin})"
    folder = Path(tempfile.mkdtemp(prefix="bench_skip_align_"))
    star = write_posed_particles(
        folder / "particles.star", posed, stack_name="particles.mrcs"
    )
    blocks = starfile.read(star, always_dict=True)
    table = blocks["particles"]
    table.insert(
        1,
        "rlnMicrographName",
        [f"Micrographs/mic{i % MICROGRAPHS:03d}.mrc" for i in range(len(table))],
    )
    starfile.write(
        {"optics": blocks["optics"], "particles": table}, star, overwrite=True
    )
    write_map(folder / "consensus.mrc", consensus_map, pixel_size_a=px)
    (folder / "relion").mkdir()
    cmd = [binary, "--i", "particles.star", "--ref", "consensus.mrc"]
    cmd += ["--o", "relion/run", "--K", "2", "--skip_align"]
    cmd += f"--iter {args.iterations} --tau2_fudge 4 --ini_high 60".split()
    cmd += ["--strict_highres_exp", f"{args.limit_a:g}", "--ctf", "--firstiter_cc"]
    cmd += ["--particle_diameter", f"{0.9 * BOX * px:.1f}", "--pad", "2"]
    cmd += ["--norm", "--scale", "--zero_mask", "--flatten_solvent", "--sym", "C1"]
    cmd += ["--j", "2", "--pool", "30", "--dont_combine_weights_via_disc"]
    cmd += ["--random_seed", str(args.seed)]
    start = time.perf_counter()
    with (folder / "relion_refine.log").open("w") as log:
        proc = subprocess.run(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return f"relion_refine failed ({proc.returncode}): {folder}/relion_refine.log"
    data = folder / "relion" / f"run_it{args.iterations:03d}_data.star"
    found_table = starfile.read(data, always_dict=True)["particles"]
    index = np.array(
        [int(str(s).split("@")[0]) - 1 for s in found_table["rlnImageName"]]
    )
    found = np.empty(len(truth), dtype=np.int64)
    found[index] = found_table["rlnClassNumber"].to_numpy() - 1
    return (
        f"relion_refine 3.1.3 --skip_align: {accuracy(found, truth):.3f} correct, "
        f"{seconds:.1f} s (files in {folder})"
    )


def consensus(
    particles: PosedParticles, start_map: np.ndarray, px: float
) -> tuple[PosedParticles, np.ndarray, float, float]:
    """The particles at the poses of a consensus refinement from ``start_map``
    (low-passed to 40 Å by the refinement); its median angle error, seconds."""
    n = particles.n_particles
    unposed = dataclasses.replace(
        particles, rotations=np.tile(np.eye(3), (n, 1, 1)), origin_px=np.zeros((n, 2))
    )
    start = time.perf_counter()
    result = refine(unposed, start_map, RefineConfig(box_px=BOX, pixel_size_a=px))
    seconds = time.perf_counter() - start
    posed = dataclasses.replace(
        particles,
        rotations=result.rotations,
        origin_px=result.origin_px,
        subset=result.subset,
    )
    error = float(np.median(angle_error_deg(result.rotations, particles.rotations)))
    return posed, result.reconstruction.full, error, seconds


def classify(
    config: InitialModelConfig, particles: PosedParticles, args: argparse.Namespace
) -> tuple[SkipAlignClassification, float]:
    start = time.perf_counter()
    result = classify_without_alignment(
        config,
        particles,
        rng=np.random.default_rng(args.seed + 1),
        options=SkipAlignOptions(
            n_iterations=args.iterations,
            n_starts=args.starts,
            resolution_a=args.limit_a,
        ),
    )
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--snr", type=float, nargs="+", default=[0.3, 1.0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--starts", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--limit-a", type=float, default=DEFAULT_RESOLUTION_A)
    parser.add_argument("--relion-bin", default="/usr/bin/relion_refine")
    parser.add_argument("--no-relion", action="store_true")
    args = parser.parse_args()
    maps, px = conformations()
    config = classification_config(2, box_px=BOX, pixel_size_a=px)
    print(
        f"70S and 70S less 24 % of its density, box {BOX}, {px:.1f} Å/px; consensus "
        f"refinement from the whole map at 40 Å; skip-align K=2, {args.starts} "
        f"starts, <= {args.iterations} iterations, limit {args.limit_a:.0f} Å"
    )
    print(
        "particles   SNR  pose err°  refine s  correct  (true poses)  iterations"
        "  classify s  bound s  ratio  chosen start (log-likelihoods)"
    )
    for n in args.particles:  # a loop over set sizes
        for snr in args.snr:  # a loop over noise levels
            particles, truth = simulate_mixture(
                list(maps),
                [n // 2, n - n // 2],
                pixel_size_a=px,
                snr=snr,
                rng=np.random.default_rng(args.seed),
            )
            posed, consensus_map, error, refine_s = consensus(particles, maps[0], px)
            result, seconds = classify(config, posed, args)
            at_truth, _ = classify(config, particles, args)
            # every start's iterations, the consensus and the final maps
            iterations = sum(result.start_iterations) + 2
            bound = bound_seconds(config, posed, args.limit_a, 1)
            done = "+".join(str(i) for i in result.start_iterations)
            lls = " ".join(f"{v:.0f}" for v in result.start_log_likelihoods)
            print(
                f"{n:9d}  {snr:4.2f}  {error:9.1f}  {refine_s:8.1f}  "
                f"{accuracy(result.assignment.class_index, truth):7.3f}  "
                f"({accuracy(at_truth.assignment.class_index, truth):.3f})  "
                f"{done:>10s}  {seconds:10.1f}  {bound:.3f}/it  "
                f"{seconds / (bound * iterations):.1f}*  "
                f"{result.chosen_start + 1} ({lls})",
                flush=True,
            )
            if not args.no_relion:
                print("    " + run_relion(args, posed, consensus_map, truth, px))


if __name__ == "__main__":
    main()
