"""``livestream reconstruct`` / ``postprocess`` beside ``relion_reconstruct`` /
``relion_postprocess`` on the same particle STAR.

    nice -n 19 .venv/bin/python benchmarks/compare_relion_reconstruct.py \\
        [--relion-bin /work/relion-build/bin] [--model 8zpm.cif | --map 70S.mrc \\
        --map-pixel-size-a 5] [--box 64] [--pixel-size-a 2] [--particles 2000] \\
        [--snr 0.05] [--threads 1] [--workdir DIR]

The particles are simulated from the real CXCR4 model (PDB 8ZPM, through gemmi;
default) or a real map (``--map``, e.g. the 70S ribosome, rescaled), at uniformly
random poses and shifts (±2 px), each with its own astigmatic CTF (defocus
0.8–2.5 µm, drawn per particle and applied one particle at a time with
``pipelines.ctf.model.ctf_2d``, independently of the reconstruction code) and white
noise at ``--snr``.  They are written once, by ``write_posed_particles``, as a
RELION 3.1 STAR (``data_optics`` + ``data_particles``, ``rlnRandomSubset`` by
parity) with an MRC stack; both programs read that same file.

Each side is run as its command, timed as a whole (reading, insertion, division,
writing; wall and CPU seconds of the child processes; the CPU time is the figure to
compare on a shared machine, and the criterion uses it): ``livestream reconstruct STAR`` (half maps, FSC-weighted full map) with
``NUMBA_NUM_THREADS=--threads``, and ``relion_reconstruct --ctf`` three times
(``--subset 1``, ``--subset 2`` and all particles), which RELION runs on one
thread (its FFTW plans are single-threaded here; OMP_NUM_THREADS is set to
``--threads`` anyway).  Quality: FSC of each full map with the truth, the 0.5
crossing in Å and in shells (the criterion of issue #14: ours within one shell of
RELION's), over the whole box and inside a sphere of the box's radius (5 px edge):
both programs set their maps' corners to the background (RELION's
``softMaskOutsideMap``, which ours applies too), so the two figures now differ
only by the sphere's 5 px edge.  Post-processing: ``relion_postprocess --auto_bfac --autob_lowres 10``
and ``livestream postprocess`` on the same half maps (each program's halves in
turn) with one soft mask made from the truth (threshold, +2 px, +4 px soft edge):
resolution at the corrected FSC 0.143 and the B-factor.

Without RELION binaries only our side runs and the RELION column says why.
``benchmarks/peers/build_relion.sh`` builds RELION 5 from source; a packaged
``relion_reconstruct`` on the PATH (Debian's 3.1.3) is used otherwise.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
import starfile

from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.reconstruct import (
    PosedParticles,
    create_mask,
    fourier_shell_correlation,
    write_posed_particles,
)
from pipelines.reconstruct.outputs import write_map
from pipelines.simulate.projection import project, random_rotations
from pipelines.simulate.volumes import load_map, map_from_model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIVESTREAM_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclass(frozen=True)
class Side:
    name: str
    seconds: float
    cpu_seconds: float
    full_map: Path
    half1: Path
    half2: Path


def truth_volume(args: argparse.Namespace) -> np.ndarray:
    if args.map is None:
        return map_from_model(args.model, args.pixel_size_a, args.box)
    volume, _ = load_map(args.map)
    # resample the map to the requested pixel and box in Fourier space
    scale = args.map_pixel_size_a / args.pixel_size_a
    n = volume.shape[0]
    m = round(n * scale)
    spectrum = scipy.fft.fftshift(scipy.fft.fftn(volume))
    out = np.zeros((m, m, m), dtype=complex)
    lo, hi = (m - n) // 2, (m - n) // 2 + n
    if m >= n:
        out[lo:hi, lo:hi, lo:hi] = spectrum
    else:
        a = (n - m) // 2
        out = spectrum[a : a + m, a : a + m, a : a + m]
    resampled = np.real(scipy.fft.ifftn(scipy.fft.ifftshift(out)))
    box = np.zeros((args.box,) * 3)
    k = min(m, args.box)
    s, d = (m - k) // 2, (args.box - k) // 2
    box[d : d + k, d : d + k, d : d + k] = resampled[s : s + k, s : s + k, s : s + k]
    return (box / np.abs(box).max()).astype(np.float32)


def simulate(
    truth: np.ndarray, args: argparse.Namespace, rng: np.random.Generator
) -> PosedParticles:
    n, box, px = args.particles, args.box, args.pixel_size_a
    rotations = random_rotations(n, rng)
    shifts = rng.uniform(-2.0, 2.0, (n, 2))
    clean = project(truth, rotations, shifts_px=shifts)
    du = rng.uniform(8000.0, 25000.0, n)
    dv = du - rng.uniform(0.0, 1500.0, n)
    angle = rng.uniform(0.0, 180.0, n)
    spectra = scipy.fft.rfft2(clean)
    for i in range(n):  # data generation, independent of the code under test
        params = CtfParams(
            defocus_u_a=du[i], defocus_v_a=dv[i], astigmatism_angle_deg=angle[i]
        )
        spectra[i] *= ctf_2d((box, box), px, params)
    images = scipy.fft.irfft2(spectra, s=(box, box))
    images /= images.std()
    images += rng.standard_normal(images.shape) / np.sqrt(args.snr)
    return PosedParticles.from_arrays(
        images.astype(np.float32),
        pixel_size_a=px,
        rotations=rotations,
        origin_px=-shifts,
        defocus_u_a=du,
        defocus_v_a=dv,
        astigmatism_angle_deg=angle,
    )


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ours(star: Path, out: Path, threads: int) -> Side:
    env = {
        **os.environ,
        "NUMBA_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
    }
    start, cpu = time.perf_counter(), children_cpu_s()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "livestream.cli.main",
            "reconstruct",
            str(star),
            "--out",
            str(out),
            "--json",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, cpu = time.perf_counter() - start, children_cpu_s() - cpu
    summary = json.loads(done.stdout)
    return Side(
        "livestream",
        seconds,
        cpu,
        Path(summary["map_path"]),
        Path(summary["half1_path"]),
        Path(summary["half2_path"]),
    )


def run_relion(exe: Path, star: Path, out: Path, threads: int) -> Side:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    start, cpu = time.perf_counter(), children_cpu_s()
    for subset, name in ((1, "half1.mrc"), (2, "half2.mrc"), (-1, "full.mrc")):
        subprocess.run(
            [
                str(exe),
                "--i",
                str(star),
                "--o",
                str(out / name),
                "--ctf",
                "--subset",
                str(subset),
            ],
            env=env,
            check=True,
            capture_output=True,
            cwd=star.parent,
        )
        paths[subset] = out / name
    seconds, cpu = time.perf_counter() - start, children_cpu_s() - cpu
    return Side("relion_reconstruct", seconds, cpu, paths[-1], paths[1], paths[2])


def sphere_mask(box: int, edge_px: float = 5.0) -> np.ndarray:
    """1 inside radius box/2 - edge, a linear edge to 0 at box/2: both maps are
    compared inside it too (both mask their corners with ``softMaskOutsideMap``'s
    3 px edge beyond box/2; this mask also tapers the last 5 px inside)."""
    z, y, x = np.mgrid[:box, :box, :box] - box // 2
    radius = np.sqrt(x * x + y * y + z * z)
    return np.clip((box // 2 - radius) / edge_px, 0.0, 1.0)


def read_map(path: Path) -> np.ndarray:
    volume, _ = load_map(path)
    return volume


def postprocess_ours(side: Side, mask: Path, out: Path) -> tuple[float, float]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "livestream.cli.main",
            "postprocess",
            str(side.half1),
            str(side.half2),
            "--mask",
            str(mask),
            "--out",
            str(out),
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    summary = json.loads(done.stdout)
    return float(summary["resolution_a"]), float(summary["bfactor_a2"])


def postprocess_relion(
    exe: Path, side: Side, mask: Path, out: Path, px: float
) -> tuple[float, float]:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            str(exe),
            "--i",
            str(side.half1),
            "--i2",
            str(side.half2),
            "--mask",
            str(mask),
            "--angpix",
            str(px),
            "--auto_bfac",
            "--autob_lowres",
            "10",
            "--o",
            str(out / "postprocess"),
        ],
        check=True,
        capture_output=True,
    )
    general = starfile.read(out / "postprocess.star", always_dict=True)["general"]
    row = general.iloc[0] if hasattr(general, "iloc") else general
    return float(row["rlnFinalResolution"]), float(row["rlnBfactorUsedForSharpening"])


def relion_programs(folder: Path | None) -> dict[str, Path | None]:
    found: dict[str, Path | None] = {}
    for name in ("relion_reconstruct", "relion_postprocess"):
        exe = folder / name if folder is not None else None
        if exe is None or not exe.exists():
            which = shutil.which(name)
            exe = Path(which) if which else None
        found[name] = exe
    return found


def relion_version(exe: Path) -> str:
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    match = re.search(r"RELION version:\s*(\S+)", done.stdout + done.stderr)
    return match.group(1) if match else "unknown version"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--relion-bin", type=Path, default=Path("/work/relion-build/bin")
    )
    parser.add_argument("--model", type=Path, default=SHARED / "real" / "8zpm.cif")
    parser.add_argument("--map", type=Path, default=None)
    parser.add_argument("--map-pixel-size-a", type=float, default=5.0)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--pixel-size-a", type=float, default=2.0)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="compare_reconstruct_"))
    work.mkdir(parents=True, exist_ok=True)
    px = args.pixel_size_a
    truth = truth_volume(args)
    particles = simulate(truth, args, np.random.default_rng(args.seed))
    star = write_posed_particles(
        work / "particles.star", particles, stack_name="particles.mrcs"
    )
    mask = create_mask(
        truth,
        pixel_size_a=px,
        lowpass_a=15.0,
        threshold=0.05,
        extend_px=2.0,
        soft_edge_px=4.0,
    )
    mask_path = write_map(work / "mask.mrc", mask, pixel_size_a=px)
    source = args.map or args.model
    print(
        f"{args.particles} particles, box {args.box}, {px} Å/px, SNR {args.snr}, "
        f"truth {source.name}; threads {args.threads}; files in {work}"
    )

    sides = [run_ours(star, work / "ours", args.threads)]
    programs = relion_programs(args.relion_bin)
    relion_note = ""
    if programs["relion_reconstruct"] is None:
        relion_note = f"relion_reconstruct not in {args.relion_bin} nor on PATH"
    else:
        exe = programs["relion_reconstruct"]
        relion_note = f"{exe} ({relion_version(exe)})"
        sides.append(run_relion(exe, star, work / "relion", args.threads))
    print(f"RELION: {relion_note}")

    nyquist = args.box // 2
    print(
        f"\n{'program':<20} {'wall s':>8} {'CPU s':>8} {'particles/CPU s':>16} "
        f"{'FSC(truth)=0.5 Å':>17} {'shell':>6} {'in sphere Å':>12} {'shell':>6}"
        f"   (Nyquist {2 * px:.1f} Å, shell {nyquist})"
    )
    shells: dict[str, float] = {}
    sphere_shells: dict[str, float] = {}
    sphere = sphere_mask(args.box)
    for side in sides:
        volume = read_map(side.full_map)
        curve = fourier_shell_correlation(volume, truth, px)
        masked = fourier_shell_correlation(volume * sphere, truth, px)
        shells[side.name] = curve.crossing_index(0.5)
        sphere_shells[side.name] = masked.crossing_index(0.5)
        # each side makes three maps (2 halves + full) from one read of the STAR
        rate = args.particles / side.cpu_seconds
        print(
            f"{side.name:<20} {side.seconds:8.2f} {side.cpu_seconds:8.2f} {rate:16.0f} "
            f"{curve.crossing_a(0.5):17.2f} {shells[side.name]:6.2f} "
            f"{masked.crossing_a(0.5):12.2f} {sphere_shells[side.name]:6.2f}"
        )
    if "relion_reconstruct" in shells:
        gap = shells["relion_reconstruct"] - shells["livestream"]
        sphere_gap = sphere_shells["relion_reconstruct"] - sphere_shells["livestream"]
        faster = sides[0].cpu_seconds <= sides[1].cpu_seconds
        print(
            f"criterion (issue #14): ours within one shell of RELION at 0.5: "
            f"whole box {'yes' if gap <= 1.0 else 'NO'} ({gap:+.2f} shells), "
            f"in the sphere {'yes' if sphere_gap <= 1.0 else 'NO'} "
            f"({sphere_gap:+.2f} shells; RELION - ours); "
            f"at least as fast: {'yes' if faster else 'NO'} "
            f"(RELION CPU s / ours: {sides[1].cpu_seconds / sides[0].cpu_seconds:.2f}; "
            f"wall: {sides[1].seconds / sides[0].seconds:.2f})"
        )

    print(f"\n{'post-processing':<34} {'livestream':>20} {'relion_postprocess':>22}")
    post_exe = programs["relion_postprocess"]
    for side in sides:
        left = attempt(
            lambda side=side: postprocess_ours(
                side, mask_path, work / f"post_ours_{side.name}"
            )
        )
        right = (
            "not available"
            if post_exe is None
            else attempt(
                lambda side=side, exe=post_exe: postprocess_relion(
                    exe, side, mask_path, work / f"post_relion_{side.name}", px
                )
            )
        )
        print(f"halves of {side.name:<24} {left:>20} {right:>22}")


def attempt(run: Callable[[], tuple[float, float]]) -> str:
    """``resolution, B`` as text, or the last line the program said when it failed
    (a map whose Nyquist is 10 Å leaves no Guinier range, for one)."""
    try:
        resolution_a, bfactor_a2 = run()
    except subprocess.CalledProcessError as exc:
        err = exc.stderr or b""
        text = err if isinstance(err, str) else err.decode(errors="replace")
        said = text.strip().splitlines()
        return f"failed: {said[-1][-60:] if said else exc.returncode}"
    return f"{resolution_a:.2f} Å, B {bfactor_a2:.0f}"


if __name__ == "__main__":
    main()
