"""3D classification of two conformations, ours and RELION 3.1.3's Class3D.

    nice -n 10 .venv/bin/python benchmarks/bench_class3d.py [--particles 600]
        [--snr 0.3] [--iterations 6] [--seed 3] [--relion-bin /usr/bin/relion_refine]
        [--threads 2] [--workdir DIR]

Data: the real 70S ribosome map (``$LIVESTREAM_SHARED_DATA/real``, the whole map
in a box of 32 at 10.2 Å/px) and the same map less a ball of radius 6 px (24 % of
its positive density, ``pipelines.simulate.conformations.without_region``), half
the particles each, at random poses and ±2 px shifts, a CTF each (0.8-2.5 µm),
white noise at ``--snr`` of the whole map's signal.  References: both
conformations, low-passed at 60 Å by each program (``--ini_high 60``), not on
the particles' greyscale (RELION: ``--firstiter_cc``; ours fits the scale).

Both run ``--iterations`` EM iterations with the same sampling: rotations at
15° refined at 7.5° (ours ``classification_config``; RELION ``--healpix_order 2
--oversampling 1``, as its GUI writes "7.5 degrees"), origins within 3 px on a 1 px grid (RELION ``--offset_step
2`` oversampled), T = 4, the particle diameter 0.9 of the box.  Printed: the
fraction of particles in the right class (the better of the two matchings),
wall seconds, and for ours the ratio to a lower bound measured in the same run:
the coarse pass's two real matrix products (BLAS) for every particle, shift and
coarse rotation of both classes, on the first iteration's pixels, times the
iterations run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from pipelines.class3d import (
    ClassificationOptions,
    InitialModelConfig,
    classify_particles,
)
from pipelines.class3d.classify import classification_config
from pipelines.class3d.orientations import shift_grid
from pipelines.class3d.pixels import pixel_set
from pipelines.class3d.vdam import _pose_grids
from pipelines.reconstruct import PosedParticles, write_posed_particles
from pipelines.reconstruct.outputs import write_map
from pipelines.simulate.conformations import simulate_mixture, without_region
from pipelines.simulate.volumes import (
    RIBOSOME_70S_PIXEL_SIZE_A,
    load_map,
    rescale_volume,
)

DATA = (
    Path(os.environ["LIVESTREAM_SHARED_DATA"]) / "real"
    if os.environ.get("LIVESTREAM_SHARED_DATA")
    else Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
)
BOX = 32
MICROGRAPHS = 20  # fake micrograph names: RELION groups particles by micrograph
RELION_SAMPLING = [  # 15° refined at 7.5°, origins within 3 px every 1 px
    *("--healpix_order", "2", "--oversampling", "1"),
    *("--offset_range", "3", "--offset_step", "2"),
    *("--sym", "C1", "--norm", "--scale", "--zero_mask", "--flatten_solvent"),
    *("--pad", "2"),
]


def conformations() -> tuple[np.ndarray, float]:
    volume, _ = load_map(DATA / "clean70SRibosome_vol_65p.mrc")
    px = 65 * RIBOSOME_70S_PIXEL_SIZE_A / BOX
    whole = rescale_volume(
        volume,
        from_pixel_size_a=RIBOSOME_70S_PIXEL_SIZE_A,
        to_pixel_size_a=px,
        box_px=BOX,
    )
    less = without_region(whole, distance_px=7.0, radius_px=6.0)
    return np.stack([whole, less]), px


def accuracy(found: np.ndarray, truth: np.ndarray) -> float:
    same = float(np.mean(found == truth))
    return max(same, 1.0 - same)


def blas_bound_s(config_px: float, n: int, iterations: int) -> float:
    """Seconds of the coarse pass's matrix products alone (float32, blocks of
    2048 rows as the search), for ``n`` particles, ``iterations`` times."""
    config = classification_config(2, box_px=BOX, pixel_size_a=config_px)
    coarse, _, _ = _pose_grids(config.angular_step_deg, config.oversampling)
    n_shift = len(shift_grid(config.offset_range_px, config.offset_step_px))
    pixels = pixel_set(BOX, config.initial_radius_px).n_pixels
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n * n_shift, pixels), dtype=np.float32)
    p = rng.standard_normal((pixels, 2 * coarse.n_rotations), dtype=np.float32)
    start = time.perf_counter()
    for block in range(0, len(a), 2048):  # same blocking as the search
        a[block : block + 2048] @ p
        a[block : block + 2048] @ p
    return (time.perf_counter() - start) * iterations


def write_inputs(
    folder: Path, particles: PosedParticles, maps: np.ndarray, px: float
) -> None:
    star = write_posed_particles(
        folder / "particles.star", particles, stack_name="particles.mrcs"
    )
    blocks = starfile.read(star, always_dict=True)
    table = blocks["particles"].drop(
        columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnRandomSubset"],
        errors="ignore",
    )
    table.insert(
        1,
        "rlnMicrographName",
        [f"Micrographs/mic{i % MICROGRAPHS:03d}.mrc" for i in range(len(table))],
    )
    starfile.write(
        {"optics": blocks["optics"], "particles": table}, star, overwrite=True
    )
    names = []
    for k, volume in enumerate(maps, start=1):  # a loop over references
        write_map(folder / f"ref{k}.mrc", volume, pixel_size_a=px)
        names.append(f"ref{k}.mrc")
    starfile.write(
        {"references": pd.DataFrame({"rlnReferenceImage": names})},
        folder / "refs.star",
        overwrite=True,
    )


def run_relion(
    args: argparse.Namespace, folder: Path, px: float, truth: np.ndarray
) -> str:
    binary = shutil.which(args.relion_bin) or args.relion_bin
    if not Path(binary).is_file():
        return f"relion_refine: not installed ({args.relion_bin})"
    (folder / "relion").mkdir()
    cmd = [binary, "--i", "particles.star", "--ref", "refs.star", "--o", "relion/run"]
    cmd += f"--K 2 --iter {args.iterations} --tau2_fudge 4 --ini_high 60".split()
    cmd += f"--particle_diameter {0.9 * BOX * px:.1f} --ctf --firstiter_cc".split()
    cmd += RELION_SAMPLING
    cmd += f"--j {args.threads} --pool 30 --dont_combine_weights_via_disc".split()
    cmd += ["--random_seed", str(args.seed)]
    start = time.perf_counter()
    with (folder / "relion_refine.log").open("w") as log:
        proc = subprocess.run(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return f"relion_refine failed ({proc.returncode}): {folder}/relion_refine.log"
    data = folder / "relion" / f"run_it{args.iterations:03d}_data.star"
    table = starfile.read(data, always_dict=True)["particles"]
    index = np.array([int(str(s).split("@")[0]) - 1 for s in table["rlnImageName"]])
    found = np.empty(len(truth), dtype=np.int64)
    found[index] = table["rlnClassNumber"].to_numpy() - 1
    return (
        f"relion_refine 3.1.3  {accuracy(found, truth):8.3f}  {seconds:8.1f}  "
        f"(--j {args.threads}; {' '.join(cmd[1:])})"
    )


def run_ours(
    args: argparse.Namespace,
    config: InitialModelConfig,
    maps: np.ndarray,
    particles: PosedParticles,
    truth: np.ndarray,
) -> None:
    start = time.perf_counter()
    result = classify_particles(
        config,
        maps,
        particles,
        rng=np.random.default_rng(args.seed + 1),
        options=ClassificationOptions(
            n_iterations=args.iterations, convergence_fraction=0.0
        ),
    )
    ours_s = time.perf_counter() - start
    bound_s = blas_bound_s(config.pixel_size_a, args.particles, result.iterations)
    print(
        f"livestream class3d   {accuracy(result.assignment.class_index, truth):8.3f}  "
        f"{ours_s:8.1f}  (BLAS bound {bound_s:.1f} s, ratio {ours_s / bound_s:.1f}; "
        f"{args.particles * result.iterations / ours_s:.1f} particle-iterations/s; "
        f"changed per iteration {[round(c, 3) for c in result.changed_fraction]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=600)
    parser.add_argument("--snr", type=float, default=0.3)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--relion-bin", default="/usr/bin/relion_refine")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-ours", action="store_true", help="RELION only")
    args = parser.parse_args()
    maps, px = conformations()
    half = args.particles // 2
    particles, truth = simulate_mixture(
        list(maps),
        [half, args.particles - half],
        pixel_size_a=px,
        snr=args.snr,
        rng=np.random.default_rng(args.seed),
    )
    config = classification_config(2, box_px=BOX, pixel_size_a=px)
    print(
        f"70S and 70S less 24 % of its density, box {BOX}, {px:.1f} Å/px, "
        f"{args.particles} particles, SNR {args.snr}, {args.iterations} iterations, "
        f"references low-passed at {config.initial_resolution_a:.0f} Å"
    )
    print("program              correct   seconds")
    if not args.skip_ours:
        run_ours(args, config, maps, particles, truth)
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="bench_class3d_"))
    folder.mkdir(parents=True, exist_ok=True)
    write_inputs(folder, particles, maps, px)
    print(run_relion(args, folder, px, truth))


if __name__ == "__main__":
    main()
