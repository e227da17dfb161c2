"""Our pickers against a peer (ASPIRE's APPLE) on simulated micrographs.

    .venv/bin/python benchmarks/compare_pickers.py [--small] [--views N] [--peer-python PY]

Micrographs are simulated (:mod:`pipelines.simulate`) from the real 70S ribosome
map in ``../shared/data/real`` at 5 Å/px (about 250 Å across), with random poses and
the CTF at 1, 2 and 3 µm defocus, without ice texture; white Gaussian noise is then
added for a per-particle SNR of 0.1, 0.075 and 0.05 (``--snr``), where the SNR is the
conventional one (:mod:`pipelines.picking.snr`): the variance of the noise-free image
after the CTF in the map's own 65 px (325 Å) box about each particle, over the noise
variance.  A pick counts when it lies within 0.2 x 250 Å of a true centre (greedy
one-to-one matching).  Pickers: our blob picker (200-300 Å, CTF-matched local
energy with the true CTF, the live pick stage's default threshold: chosen per
micrograph), our template picker (``--views`` projections of the same
map at other random poses, CTF-aware, target-decoy threshold), and APPLE (ASPIRE) when
``--peer-python`` (default ``/tmp/aspire-venv/bin/python``) imports ``aspire``.
"inner" columns count only truth and picks at least 100 px from the edges, the
region APPLE searches.
This is a comparison, not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
from scipy.spatial import cKDTree

from livestream.stages.params import PickParams
from pipelines.ctf.model import CtfParams
from pipelines.picking.blob import pick_blob
from pipelines.picking.picks import Picks
from pipelines.picking.snr import noise_sd_for_snr
from pipelines.picking.template import pick_template
from pipelines.simulate.micrograph import MicrographParams, simulate_micrograph
from pipelines.simulate.projection import project, random_rotations
from pipelines.simulate.volumes import load_map

# the shared real data (as tests/conftest.py: LIVESTREAM_SHARED_DATA, else beside
# the checkout)
DATA = (
    Path(
        os.environ.get(
            "LIVESTREAM_SHARED_DATA",
            Path(__file__).resolve().parents[2] / "shared" / "data",
        )
    )
    / "real"
)
PIXEL_A = 5.0
DIAMETER_A = 250.0

# APPLE with its default 99/100 px margins; tau1/tau2 (its training-window counts)
# must be given for micrographs this small, else its SVM loop runs out of windows.
APPLE_SCRIPT = """
import json, sys, logging
logging.disable(logging.CRITICAL)
from aspire.apple.apple import Apple
apple = Apple(particle_size=int(sys.argv[2]), output_dir=None, n_processes=1,
              tau1=200, tau2=1200)
centers = apple.process_micrograph_centers(sys.argv[1])
print(json.dumps([[float(x), float(y)] for x, y in centers]))
"""
INNER_MARGIN_PX = 100  # APPLE does not look closer to the edge than this


def match(
    truth: np.ndarray, picks: np.ndarray, tolerance_px: float
) -> tuple[float, float]:
    """Greedy one-to-one matching, closest pairs first: (recall, precision)."""
    if len(picks) == 0:
        return 0.0, 0.0
    pairs = cKDTree(truth).sparse_distance_matrix(
        cKDTree(picks), tolerance_px, output_type="ndarray"
    )
    pairs = pairs[np.argsort(pairs["v"])]
    used_t: set[int] = set()
    used_p: set[int] = set()
    for i, j, _ in pairs:  # only the close pairs
        if i not in used_t and j not in used_p:
            used_t.add(int(i))
            used_p.add(int(j))
    return len(used_t) / len(truth), len(used_p) / len(picks)


def simulate(
    volume: np.ndarray,
    size: int,
    snr: float,
    defocus_a: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, CtfParams]:
    ctf = CtfParams(
        defocus_u_a=defocus_a + 300,
        defocus_v_a=defocus_a - 300,
        astigmatism_angle_deg=20,
    )
    params = MicrographParams(
        shape_px=(size, size),
        pixel_size_a=PIXEL_A,
        n_particles=int(45 * (size / 1024) ** 2),
        ctf=ctf,
        ice_phase_sd_rad=0.0,
    )
    clean, truth = simulate_micrograph(params, rng, volume=volume)
    centres = np.array([[p.x_px, p.y_px] for p in truth.particles])
    noise_sd = noise_sd_for_snr(clean, centres, box_px=volume.shape[-1], snr=snr)
    noise = rng.normal(0.0, noise_sd, clean.shape)
    return (clean + noise).astype(np.float32), centres, ctf


def inner(points: np.ndarray, size: int) -> np.ndarray:
    """The points at least ``INNER_MARGIN_PX`` from every edge."""
    keep = np.all(
        (points >= INNER_MARGIN_PX) & (points < size - INNER_MARGIN_PX), axis=1
    )
    return points[keep]


def run_apple(python: str, image: np.ndarray) -> np.ndarray | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mic.mrc"
        with mrcfile.new(path) as mrc:  # no pixel size: APPLE wants none
            mrc.set_data(image.astype(np.float32))
        size_px = str(int(DIAMETER_A / PIXEL_A))
        done = subprocess.run(
            [python, "-c", APPLE_SCRIPT, str(path), size_px],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
            cwd=folder,  # ASPIRE writes its logs into the working folder
        )
    if done.returncode != 0:
        print(f"  APPLE failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return np.array(json.loads(done.stdout.strip().splitlines()[-1])).reshape(-1, 2)


def run_ours(
    name: str, image: np.ndarray, templates: np.ndarray, ctf: CtfParams
) -> Picks:
    if name == "blob":
        return pick_blob(  # the live pick stage's default threshold (per micrograph)
            image,
            pixel_size_a=PIXEL_A,
            diameter_range_a=(200.0, 300.0),
            ctf=ctf,
            threshold_sd=PickParams().threshold_sd,
        )
    return pick_template(
        image, templates, pixel_size_a=PIXEL_A, diameter_a=DIAMETER_A, ctf=ctf
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="768 px, 2 µm only")
    parser.add_argument("--views", type=int, default=100)
    parser.add_argument("--snr", type=float, nargs="+", default=[0.1, 0.075, 0.05])
    parser.add_argument("--peer-python", default="/tmp/aspire-venv/bin/python")
    args = parser.parse_args()
    volume, _ = load_map(DATA / "clean70SRibosome_vol_65p.mrc")
    volume = volume / volume.std()
    rng = np.random.default_rng(7)
    templates = project(volume, random_rotations(args.views, np.random.default_rng(1)))
    peer = Path(args.peer_python).exists()
    size = 768 if args.small else 1024
    defoci = (20000.0,) if args.small else (10000.0, 20000.0, 30000.0)
    tolerance = 0.2 * DIAMETER_A / PIXEL_A
    print(
        f"{size} x {size} px at {PIXEL_A} Å/px, 70S ribosome, tolerance {tolerance} px"
    )
    print(f"{'SNR':>5} {'defocus':>8} {'picker':>9} {'picks':>6} {'true':>5} "
          f"{'recall':>7} {'precision':>9} {'inner R':>8} {'inner P':>8} "
          f"{'seconds':>8}")  # fmt: skip
    for snr in args.snr:
        for defocus_a in defoci:
            image, centres, ctf = simulate(volume, size, snr, defocus_a, rng)
            results: dict[str, tuple[np.ndarray | None, float]] = {}
            for name in ("blob", "template"):
                start = time.perf_counter()
                picks = run_ours(name, image, templates, ctf)
                results[name] = (
                    np.column_stack([picks.x_px, picks.y_px]),
                    time.perf_counter() - start,
                )
            if peer:
                start = time.perf_counter()
                results["APPLE"] = (
                    run_apple(args.peer_python, image),
                    time.perf_counter() - start,
                )
            for name, (points, seconds) in results.items():
                if points is None:
                    continue
                recall, precision = match(centres, points, tolerance)
                inner_r, inner_p = match(
                    inner(centres, size), inner(points, size), tolerance
                )
                print(
                    f"{snr:5.3f} {defocus_a / 1e4:6.1f}µm {name:>9} {len(points):6d} "
                    f"{len(centres):5d} {recall:7.2f} {precision:9.2f} "
                    f"{inner_r:8.2f} {inner_p:8.2f} {seconds:8.2f}"
                )


if __name__ == "__main__":
    main()
