"""Compare ``pipelines.ctf.estimate`` with ASPIRE's ``estimate_ctf`` (not a test).

ASPIRE lives in its own virtual environment so that it cannot disturb the project's::

    python3 -m venv /tmp/aspire-venv && /tmp/aspire-venv/bin/pip install aspire
    .venv/bin/python benchmarks/compare_ctf_aspire.py [--aspire-python PATH] [--small]

Runs both estimators on the real Falcon micrograph in ``../shared/data/real`` and on
simulated micrographs with a known CTF, and prints defocus U/V, mean defocus,
astigmatism and run time of each (and the errors where the truth is known).  ASPIRE
reports defocus in Å and the angle in radians; its angle convention is not RELION's,
so angles are printed as given and compared only through the mean and |U - V|.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np

from pipelines.ctf.estimate import estimate_ctf
from pipelines.ctf.model import CtfParams
from pipelines.ctf.search import make_fit_band, score_candidates
from pipelines.ctf.spectrum import (
    average_amplitude_spectrum,
    radial_index,
    subtract_background,
)
from pipelines.simulate.thon import make_thon_micrograph

REAL = Path(__file__).resolve().parents[2] / "shared/data/real"
REAL_MICROGRAPH = REAL / "epu2.9_example_crop2048.mrc"

_ASPIRE_SCRIPT = """
import json, sys, time, logging
logging.disable(logging.CRITICAL)
from aspire.ctf import estimate_ctf
folder, out, pixel, cs, q0, kv = sys.argv[1:7]
t = time.perf_counter()
res = estimate_ctf(folder, pixel_size=float(pixel), cs=float(cs),
                   amplitude_contrast=float(q0), voltage=float(kv), psd_size=512,
                   g_min=30, g_max=5, output_dir=out)
seconds = time.perf_counter() - t
(name, r), = res.items()
print(json.dumps({"defocus_u_a": float(r["defocus_u"]), "defocus_v_a":
    float(r["defocus_v"]), "angle_rad": float(r["defocus_ang"]), "seconds": seconds}))
"""


def run_aspire(
    image: np.ndarray,
    pixel_size_a: float,
    cs_mm: float,
    q0: float,
    kv: float,
    python: str,
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        mrcfile.write(folder / "micrograph.mrc", image.astype(np.float32))
        out = subprocess.run(
            [python, "-c", _ASPIRE_SCRIPT, str(folder), str(Path(tmp) / "out")]
            + [str(v) for v in (pixel_size_a, cs_mm, q0, kv)],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp,  # ASPIRE writes ./logs wherever it is imported
        )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_ours(
    image: np.ndarray, pixel_size_a: float, cs_mm: float, q0: float, kv: float
) -> dict[str, float]:
    start = time.perf_counter()
    fit = estimate_ctf(
        image,
        pixel_size_a=pixel_size_a,
        voltage_kv=kv,
        cs_mm=cs_mm,
        amplitude_contrast=q0,
    )
    return {
        "defocus_u_a": fit.defocus_u_a,
        "defocus_v_a": fit.defocus_v_a,
        "angle_deg": fit.astigmatism_angle_deg,
        "fom": fit.figure_of_merit,
        "fit_res_a": fit.fit_resolution_a,
        "seconds": time.perf_counter() - start,
    }


def rotational_score(image: np.ndarray, pixel_size_a: float, mean_a: float) -> float:
    """Correlation of the rotationally averaged spectrum (30-5 Å) with CTF² at
    ``mean_a``: an estimator-neutral check of a mean defocus (astigmatism ignored)."""
    tile = 512
    amplitude, _ = average_amplitude_spectrum(image, tile)
    spectrum = subtract_background(
        amplitude, box_px=round(tile * pixel_size_a / 30.0 * np.sqrt(2.0))
    )
    radius, ky, kx = radial_index(tile)
    shell = np.rint(radius).astype(np.int64)
    off = (ky != 0) & (kx != 0)
    n = int(shell.max()) + 1
    counts = np.maximum(np.bincount(shell[off], minlength=n), 1)
    average = np.bincount(shell[off], weights=spectrum[off], minlength=n) / counts
    k = np.arange(n) / (tile * pixel_size_a)
    band = make_fit_band(
        average[None, :],
        np.zeros((1, n)),
        k[None, :],
        ((k >= 1 / 30.0) & (k <= 1 / 5.0))[None, :],
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
    )
    return float(score_candidates(band, np.array([[mean_a, 0.0, 0.0, 0.0]]))[0])


def describe(name: str, r: dict[str, float], truth: CtfParams | None) -> str:
    mean = 0.5 * (r["defocus_u_a"] + r["defocus_v_a"])
    astig = abs(r["defocus_u_a"] - r["defocus_v_a"])
    text = (
        f"  {name:7s} U {r['defocus_u_a']:8.0f}  V {r['defocus_v_a']:8.0f}  "
        f"mean {mean:8.0f}  |U-V| {astig:6.0f}  "
        + (f"angle {r['angle_deg']:6.1f} deg  " if "angle_deg" in r else "")
        + (f"angle {r['angle_rad']:6.3f} rad  " if "angle_rad" in r else "")
        + (f"FOM {r['fom']:.3f}  fit {r['fit_res_a']:.2f} A  " if "fom" in r else "")
        + f"{r['seconds']:6.2f} s"
    )
    if truth is not None:
        error = 100.0 * (mean - truth.defocus_mean_a) / truth.defocus_mean_a
        text += f"  mean error {error:+.3f} %"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aspire-python", default="/tmp/aspire-venv/bin/python")
    parser.add_argument("--small", action="store_true", help="two simulated cases")
    args = parser.parse_args()
    cases: list[tuple[str, np.ndarray, float, CtfParams | None]] = []
    if REAL_MICROGRAPH.exists():
        real = mrcfile.read(REAL_MICROGRAPH).astype(np.float32)
        cases.append(("real Falcon 0.6666 A/px, EPU 1.8 um", real, 0.6666, None))
    rng = np.random.default_rng(7)
    truths = [(8000, 0, 0), (15000, 400, 30), (22000, 800, -45), (32000, 300, 70)]
    for mean, astig, angle in truths[: 2 if args.small else 4]:
        params = CtfParams(
            defocus_u_a=mean + astig / 2,
            defocus_v_a=mean - astig / 2,
            astigmatism_angle_deg=angle,
            amplitude_contrast=0.1,
            bfactor_a2=40.0,
        )
        image = make_thon_micrograph(params, shape=(2048, 2048), rng=rng)
        label = f"simulated U {params.defocus_u_a:.0f} V {params.defocus_v_a:.0f} angle {angle}"
        cases.append((label, image, 1.0, params))
    for label, image, pixel, truth in cases:
        print(label)
        ours = run_ours(image, pixel, 2.7, 0.1, 300.0)
        print(describe("ours", ours, truth))
        try:
            aspire = run_aspire(image, pixel, 2.7, 0.1, 300.0, args.aspire_python)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"  aspire  failed: {exc}")
            continue
        print(describe("aspire", aspire, truth))
        for name, result in (("ours", ours), ("aspire", aspire)):
            mean = 0.5 * (result["defocus_u_a"] + result["defocus_v_a"])
            score = rotational_score(image, pixel, mean)
            print(
                f"  {name:7s} rotational-average CTF² correlation at its mean: {score:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
