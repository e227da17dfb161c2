"""Compare ``livestream class2d`` with RELION's ``relion_refine --grad`` (VDAM 2D).

Both run on the same simulated particle set (known views, psi, shifts and CTF), with
the same K, box, pose sampling and number of mini-batches::

    nice -n 19 .venv/bin/python benchmarks/compare_relion_class2d.py \\
        [--relion-bin /work/relion-build/bin/relion_refine] [--map 70S.mrc] \\
        [--box 64] [--classes 50] [--particles 3000] [--views 10] [--snr 0.1] \\
        [--mini-batches 200] [--threads 2] [--workdir DIR]

Sampling: ours psi every 6° and shifts on a 1 px grid within 5 px; RELION
``--psi_step 12 --offset_step 2 --oversampling 1 --offset_range 5`` (the same 6° /
1 px after its one level of adaptive oversampling), the rest as RELION 4's GUI writes
a VDAM Class2D job (plus ``--cpu``, its vectorised CPU path).  Speed: wall and CPU
seconds of each whole run and particle E-steps per second (the sum of the mini-batch
sizes plus the final pass over all particles; for RELION the subset sizes its log
reports per iteration, checked against its schedule as read from
``MlOptimiser::updateSubsetSize``).  Quality: assignment accuracy against the true
views (each class mapped to its majority view) and, per true view, the best
rotation- and shift-searched correlation with any class average.  Without a RELION
binary only our side runs and the RELION column says why.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import starfile

from pipelines.extraction.particles_star import write_particles_star
from pipelines.simulate.particle_sets import (
    SyntheticSet,
    simulate_views,
    write_particle_set,
)
from pipelines.simulate.view_metrics import best_rotated_correlation
from pipelines.simulate.volumes import (
    RIBOSOME_70S_PIXEL_SIZE_A,
    load_map,
    phantom_volume,
    rescale_volume,
)

REPO = Path(__file__).resolve().parents[1]
STACK_REL = "Extract/particles.mrcs"
LIVESTREAM_MAIN = "import sys; from livestream.cli.main import main; sys.exit(main())"
MICROGRAPHS = 20
# the VDAM Class2D job RELION 4's GUI writes (pipeline_jobs.cpp); 6° / 1 px fine
# sampling after one level of adaptive oversampling
RELION_VDAM_2D = (
    "--grad --class_inactivity_threshold 0.1 --grad_write_iter 10 --iter {iter} "
    "--K {k} --tau2_fudge 2 --particle_diameter {diameter_a} --zero_mask "
    "--flatten_solvent --center_classes --oversampling 1 --psi_step 12 "
    "--offset_range 5 --offset_step 2 --norm --scale --ctf --j {threads} --pool 30 "
    "--pad 2 --dont_combine_weights_via_disc --random_seed {seed}"
)  # fake micrograph names: RELION groups particles by micrograph


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One classifier's run on the shared particle set."""

    name: str
    seconds: float
    cpu_seconds: float  # user + system of the child process (robust to a busy host)
    particle_steps: int
    class_of_particle: np.ndarray  # (n,) 0-based class per input particle
    averages: np.ndarray  # (K, box, box)
    command: str

    @property
    def particles_per_second(self) -> float:
        return self.particle_steps / self.seconds


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_volume(
    args: argparse.Namespace, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """``(volume (box,)*3, pixel_size_a)``: the map resampled to the box, or a phantom."""
    if args.map is None:
        pixel_size_a = 4.0 * 64 / args.box
        return phantom_volume(args.box, pixel_size_a, rng), pixel_size_a
    volume, map_pixel_size_a = load_map(args.map)
    map_pixel_size_a = map_pixel_size_a or RIBOSOME_70S_PIXEL_SIZE_A
    pixel_size_a = map_pixel_size_a * volume.shape[0] / args.box  # same field of view
    volume = rescale_volume(
        volume,
        from_pixel_size_a=map_pixel_size_a,
        to_pixel_size_a=pixel_size_a,
        box_px=args.box,
    )
    return volume, pixel_size_a


def normalise_background(images: np.ndarray) -> np.ndarray:
    """Background (outside 0.75 of the half box, RELION's ``--bg_radius`` default)
    to mean 0 and sd 1 per particle, as ``relion_preprocess`` leaves extracted ones."""
    box = images.shape[-1]
    y, x = np.mgrid[:box, :box] - box // 2
    outside = np.hypot(y, x) > 0.75 * box / 2
    background = images[:, outside]
    mean = background.mean(axis=1)[:, None, None]
    sd = background.std(axis=1)[:, None, None]
    normalised: np.ndarray = ((images - mean) / sd).astype(np.float32)
    return normalised


def write_inputs(folder: Path, data: SyntheticSet, pixel_size_a: float) -> Path:
    """The particles STAR both programs read (image names relative to ``folder``)."""
    particles = replace(
        data.particles, images=normalise_background(data.particles.images)
    )
    data = replace(data, particles=particles)
    optics, particles = write_particle_set(folder, STACK_REL, data, pixel_size_a)
    n = len(particles)
    particles.insert(
        1,
        "rlnMicrographName",
        [f"Micrographs/mic{i % MICROGRAPHS:03d}.mrc" for i in range(n)],
    )
    return write_particles_star(folder / "particles.star", optics, particles)


def particle_numbers(table: pd.DataFrame) -> np.ndarray:
    """0-based stack index of each row, from ``rlnImageName`` ``n@stack``."""
    return np.array([int(str(s).split("@")[0]) - 1 for s in table["rlnImageName"]])


def classes_from_data_star(path: Path, n: int) -> np.ndarray:
    table = starfile.read(path, always_dict=True)["particles"]
    out = np.full(n, -1, dtype=int)
    out[particle_numbers(table)] = table["rlnClassNumber"].to_numpy(int) - 1
    if np.any(out < 0):
        raise ValueError(f"{path}: {int(np.sum(out < 0))} particles have no class")
    return out


def read_stack(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as mrc:
        return np.asarray(mrc.data, dtype=np.float32)


def relion_subset_sizes(n: int, n_iter: int) -> np.ndarray:
    """Particles RELION 4's 2D VDAM E-steps in each iteration 1..n_iter (its
    ``updateSubsetSize``: 0.5 % -> 5 % linearly between the initial 30 % and final 20 %
    of the iterations; all particles in the last one)."""
    ini = int(max(min(n * 0.005, 10000), 200))
    fin = int(max(min(n * 0.05, 100000), 1000))
    ini_iter = int(n_iter * 0.3)
    between = n_iter - ini_iter - int(n_iter * 0.2)
    sizes = []
    for it in range(1, n_iter + 1):
        if it < ini_iter:
            size = ini
        elif it < ini_iter + between:
            size = ini + round((it - ini_iter) / between * (fin - ini))
        else:
            size = fin
        sizes.append(n if (it == n_iter or size >= n) else size)
    return np.array(sizes)


def logged_subset_sizes(log: Path, n: int) -> np.ndarray:
    """Particles per iteration as RELION logs them ("Gradient optimisation iteration
    I of M with P particles"; without "with": all ``n``)."""
    pattern = re.compile(
        r"Gradient optimisation iteration (\d+)(?: of \d+)?(?: with (\d+))?"
    )
    sizes = {}
    for match in pattern.finditer(log.read_text(errors="replace")):
        sizes[int(match[1])] = int(match[2]) if match[2] else n
    return np.array([sizes[k] for k in sorted(sizes)])


def run_relion(
    args: argparse.Namespace, folder: Path, n: int, diameter_a: float
) -> RunResult | str:
    """Run ``relion_refine --grad``; a ``RunResult`` or the reason it could not run."""
    binary = shutil.which(args.relion_bin) if args.relion_bin else None
    if binary is None:
        return f"RELION not run: no relion_refine at --relion-bin {args.relion_bin!r}"
    out = folder / "relion"
    out.mkdir(exist_ok=True)
    cmd = [binary, "--i", "particles.star", "--o", "relion/run"]
    cmd += RELION_VDAM_2D.format(
        iter=args.mini_batches,
        k=args.classes,
        diameter_a=f"{diameter_a:.1f}",
        threads=args.threads,
        seed=args.seed,
    ).split()
    if not args.relion_no_cpu:
        cmd.append("--cpu")
    log = out / "relion_refine.log"
    cpu0 = children_cpu_s()
    t0 = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.run(cmd, cwd=folder, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    cpu_seconds = children_cpu_s() - cpu0
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-5:]
        return f"RELION failed (exit {proc.returncode}), see {log}: {' | '.join(tail)}"
    last = f"run_it{args.mini_batches:03d}"
    sizes = logged_subset_sizes(log, n)
    expected = relion_subset_sizes(n, args.mini_batches)
    if not np.array_equal(sizes, expected):
        print(
            f"warning: RELION logged subset sizes {sizes.tolist()} differ from its "
            f"schedule as read from the source {expected.tolist()}",
            file=sys.stderr,
        )
    return RunResult(
        name="RELION",
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        particle_steps=int(sizes.sum()),
        class_of_particle=classes_from_data_star(out / f"{last}_data.star", n),
        averages=read_stack(out / f"{last}_classes.mrcs"),
        command=" ".join(cmd),
    )


def run_ours(args: argparse.Namespace, folder: Path, n: int) -> RunResult:
    out = folder / "ours"
    cmd = [sys.executable, "-c", LIVESTREAM_MAIN, "class2d", "particles.star"]
    cmd += f"--classes {args.classes} --mini-batches {args.mini_batches}".split()
    cmd += ["--seed", str(args.seed), "--json", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cpu0 = children_cpu_s()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    cpu_seconds = children_cpu_s() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"livestream class2d failed: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return RunResult(
        name="livestream",
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        particle_steps=int(summary["particles_processed"]),
        class_of_particle=classes_from_data_star(Path(summary["data_star"]), n),
        averages=read_stack(Path(summary["classes_mrcs"])),
        command=" ".join(cmd),
    )


def assignment_accuracy(classes: np.ndarray, views: np.ndarray) -> float:
    """Fraction of particles whose class's majority view is their true view."""
    correct = sum(
        int(np.bincount(views[classes == k]).max()) for k in np.unique(classes)
    )
    return correct / len(views)


def view_correlations(averages: np.ndarray, views: np.ndarray) -> np.ndarray:
    """Per true view, the best rotated correlation with any non-blank class average."""
    usable = [a for a in averages if np.std(a) > 0]
    return np.array(
        [max(best_rotated_correlation(a, v) for a in usable) for v in views]
    )


def git_state() -> str:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "status",
            "--porcelain",
            "pipelines/class2d",
            "livestream/cli/class2d.py",
        ],
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    changed = [line[3:] for line in dirty if line.strip()]
    return f"{head}" + (f" + uncommitted {', '.join(changed)}" if changed else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--relion-bin",
        default="relion_refine",
        help="relion_refine (path or name on PATH)",
    )
    parser.add_argument(
        "--relion-no-cpu",
        action="store_true",
        help="omit --cpu (RELION built without ALTCPU)",
    )
    parser.add_argument("--map", type=Path, default=None, help="MRC map (else phantom)")
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--particles", type=int, default=3000)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--mini-batches", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-ours", action="store_true")
    args = parser.parse_args()

    folder = args.workdir or Path(tempfile.mkdtemp(prefix="compare_relion_"))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    volume, pixel_size_a = make_volume(args, rng)
    data = simulate_views(
        volume,
        n_views=args.views,
        n_particles=args.particles,
        pixel_size_a=pixel_size_a,
        snr=args.snr,
        rng=rng,
    )
    write_inputs(folder, data, pixel_size_a)
    diameter_a = (0.9 * args.box - 4) * pixel_size_a  # our default mask diameter
    print(
        f"{args.particles} particles, box {args.box} px at {pixel_size_a:.2f} Å, "
        f"{args.views} views, snr {args.snr}, K {args.classes}, "
        f"{args.mini_batches} mini-batches, mask {diameter_a:.0f} Å, in {folder}; "
        f"livestream at {git_state()}",
        flush=True,
    )
    results: list[RunResult] = []
    relion = run_relion(args, folder, args.particles, diameter_a)
    if isinstance(relion, str):
        print(relion, flush=True)
    else:
        results.append(relion)
    if not args.skip_ours:
        results.append(run_ours(args, folder, args.particles))

    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        corr = view_correlations(r.averages, data.views)
        rows[r.name] = {
            "seconds": round(r.seconds, 1),
            "cpu_seconds": round(r.cpu_seconds, 1),
            "particle_steps": r.particle_steps,
            "particles_per_second": round(r.particles_per_second, 1),
            "particles_per_cpu_second": round(r.particle_steps / r.cpu_seconds, 1),
            "accuracy": round(
                assignment_accuracy(r.class_of_particle, data.view_index), 4
            ),
            "view_corr_min": round(float(corr.min()), 4),
            "view_corr_mean": round(float(corr.mean()), 4),
            "nonempty_classes": len(np.unique(r.class_of_particle)),
            "command": r.command,
        }
        print(f"{r.name}: {r.command}", flush=True)
    names = list(rows)
    print(f"\n{'':26s}" + "".join(f"{name:>14s}" for name in names))
    for key in (
        "seconds",
        "cpu_seconds",
        "particle_steps",
        "particles_per_second",
        "particles_per_cpu_second",
        "accuracy",
        "view_corr_min",
        "view_corr_mean",
        "nonempty_classes",
    ):
        print(f"{key:26s}" + "".join(f"{rows[name][key]:>14}" for name in names))
    if "RELION" in rows and "livestream" in rows:
        speedup = rows["RELION"]["seconds"] / rows["livestream"]["seconds"]
        print(f"{'wall-time speed-up':26s}{speedup:>14.2f}x (RELION s / livestream s)")
        cpu = rows["RELION"]["cpu_seconds"] / rows["livestream"]["cpu_seconds"]
        print(f"{'CPU-time speed-up':26s}{cpu:>14.2f}x")
    (folder / "comparison.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
