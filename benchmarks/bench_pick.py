"""Time to pick one micrograph, against the FFTs the picker cannot avoid.

    .venv/bin/python benchmarks/bench_pick.py [--small] [--templates N] [--workers W]

Default: a 4096 x 4096 micrograph at 1.0 Å/px, particles 250 Å across (the blob
picker searches 200-300 Å, without a CTF (LoG) and with one (CTF-matched local
energy)), 100 templates x 36 in-plane angles for the template picker (the number of
views the 70S accuracy needs).  ``--small``: 2048 x 2048 and 10 templates.  The micrograph is white noise
with dark blobs; timings do not depend on its content beyond the number of peaks.

Lower bound, measured in the same run with the same workers: one forward real FFT
of the full micrograph (needed to Fourier-crop it) plus, at the picking size, one
inverse real FFT per scale (blob picker, and the learned picker, which must at
least find the blob candidates; with a CTF also the band-pass inverse
and the energy's forward FFT) or per template and angle (template
picker: every correlation map is one inverse FFT).  The ratio is what the rest
(template FFTs, local statistics, peak finding, NMS) costs on top.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.fft

from pipelines.ctf.model import CtfParams
from pipelines.picking.blob import pick_blob
from pipelines.picking.filters import downscale_shape
from pipelines.picking.learned import pick_learned
from pipelines.picking.template import DEFAULT_ANGLES_DEG, pick_template

DIAMETER_A = 250.0


def fft_bound_s(
    shape: tuple[int, int], small: tuple[int, int], n_inverse: int, workers: int
) -> float:
    rng = np.random.default_rng(0)
    image = rng.random(shape, dtype=np.float32)
    small_ft = scipy.fft.rfft2(rng.random(small, dtype=np.float32))
    start = time.perf_counter()
    scipy.fft.rfft2(image, workers=workers)
    batch = 32
    stack = np.broadcast_to(small_ft, (min(batch, n_inverse), *small_ft.shape)).copy()
    done = 0
    while done < n_inverse:
        k = min(batch, n_inverse - done)
        scipy.fft.irfft2(stack[:k], s=small, axes=(-2, -1), workers=workers)
        done += k
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small", action="store_true", help="2048 x 2048, 10 templates"
    )
    parser.add_argument("--templates", type=int, default=None)
    parser.add_argument("--workers", type=int, default=-1)
    args = parser.parse_args()
    size = 2048 if args.small else 4096
    n_templates = args.templates or (10 if args.small else 100)
    pixel_a = 1.0
    rng = np.random.default_rng(1)
    image = rng.normal(size=(size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    for cx, cy in rng.uniform(200, size - 200, (20, 2)):  # a few dark blobs
        image -= 0.3 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 80.0**2))
    del yy, xx
    box = 320
    grid = np.arange(box) - box // 2
    disc = (grid[:, None] ** 2 + grid[None] ** 2 <= 125**2).astype(np.float32)
    templates = np.stack([np.roll(disc, k, axis=1) for k in range(n_templates)])

    # warm up (numba's non-maximum suppression, FFT plans) so neither picker pays it
    pick_learned(
        image[:512, :512], pixel_size_a=pixel_a, diameter_range_a=(200.0, 300.0)
    )
    start = time.perf_counter()
    blob = pick_blob(
        image,
        pixel_size_a=pixel_a,
        diameter_range_a=(200.0, 300.0),
        workers=args.workers,
    )
    blob_s = time.perf_counter() - start
    blob_small = downscale_shape(image.shape, 20.0 / pixel_a)
    blob_bound = fft_bound_s(image.shape, blob_small, 5, args.workers)

    start = time.perf_counter()
    learned = pick_learned(
        image,
        pixel_size_a=pixel_a,
        diameter_range_a=(200.0, 300.0),
        workers=args.workers,
    )
    learned_s = time.perf_counter() - start

    start = time.perf_counter()
    blob_ctf = pick_blob(
        image,
        pixel_size_a=pixel_a,
        diameter_range_a=(200.0, 300.0),
        ctf=CtfParams(defocus_u_a=20000.0, defocus_v_a=20000.0),
        workers=args.workers,
    )
    blob_ctf_s = time.perf_counter() - start
    ctf_small = downscale_shape(image.shape, 10.0 / pixel_a)
    ctf_bound = fft_bound_s(image.shape, ctf_small, 5 + 2, args.workers)

    start = time.perf_counter()
    tmpl = pick_template(
        image,
        templates,
        pixel_size_a=pixel_a,
        diameter_a=DIAMETER_A,
        ctf=None,
        workers=args.workers,
    )
    tmpl_s = time.perf_counter() - start
    tmpl_small = downscale_shape(image.shape, DIAMETER_A / 24.0 / pixel_a, fast=True)
    n_maps = n_templates * len(DEFAULT_ANGLES_DEG)
    tmpl_bound = fft_bound_s(image.shape, tmpl_small, n_maps, args.workers)

    print(f"micrograph {size} x {size} at {pixel_a} Å/px, workers={args.workers}")
    print(
        f"blob picker     {blob_s:8.3f} s/micrograph  ({len(blob)} picks)  "
        f"FFT bound {blob_bound:.3f} s  ratio {blob_s / blob_bound:.1f}"
    )
    print(
        f"learned picker  {learned_s:8.3f} s/micrograph  ({len(learned)} picks)  "
        f"FFT bound {blob_bound:.3f} s  ratio {learned_s / blob_bound:.1f}  "
        f"(blob candidates + classifier: {learned_s / blob_s:.1f} x blob)"
    )
    print(
        f"blob + CTF      {blob_ctf_s:8.3f} s/micrograph  ({len(blob_ctf)} picks)  "
        f"FFT bound {ctf_bound:.3f} s  ratio {blob_ctf_s / ctf_bound:.1f}"
    )
    print(
        f"template picker {tmpl_s:8.3f} s/micrograph  ({len(tmpl)} picks, "
        f"{n_templates} templates x {len(DEFAULT_ANGLES_DEG)} angles at {tmpl_small})  "
        f"FFT bound {tmpl_bound:.3f} s  ratio {tmpl_s / tmpl_bound:.1f}"
    )


if __name__ == "__main__":
    main()
