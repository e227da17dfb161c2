"""Time to extract one micrograph's particles, against the FFTs it cannot avoid.

    .venv/bin/python benchmarks/bench_extract.py [--small] [--workers W]

Default: a 4096 x 4096 micrograph at 1.0 Å/px with 500 picks, 384 px boxes
Fourier-cropped to RELION-it's box (128 px, 3.0 Å), normalised and written as a
float16 stack.  ``--small``: 2048 x 2048 with 120 picks.

Lower bound, measured in the same run with the same workers: the forward real FFT
of every box and the inverse real FFT of every cropped box (the Fourier crop);
the ratio is what the gather, contrast inversion, normalisation and the float16
write cost on top.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft

from pipelines.extraction.extract import downscaled_box_px, extract_particles
from pipelines.io.outputs import write_mrc
from pipelines.picking.picks import Picks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2048 x 2048, 120 picks")
    parser.add_argument("--workers", type=int, default=-1)
    args = parser.parse_args()
    size, n = (2048, 120) if args.small else (4096, 500)
    pixel_a, box = 1.0, 384
    small_box = downscaled_box_px(box, pixel_a)
    rng = np.random.default_rng(2)
    image = rng.normal(size=(size, size)).astype(np.float32)
    xy = rng.uniform(0, size, (n, 2))
    picks = Picks(
        x_px=xy[:, 0],
        y_px=xy[:, 1],
        score=np.ones(n),
        power=np.ones(n),
        diameter_a=np.full(n, 250.0),
        pixel_size_a=pixel_a,
        shape=(size, size),
    )
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        out = extract_particles(
            image,
            picks,
            pixel_size_a=pixel_a,
            box_px=box,
            diameter_a=250.0,
            downscale_box_px=small_box,
            workers=args.workers,
        )
        write_mrc(
            Path(folder) / "stack.mrcs", out.images, pixel_size_a=out.pixel_size_a
        )
        elapsed = time.perf_counter() - start
    kept = len(out.images)
    boxes = rng.random((kept, box, box), dtype=np.float32)
    start = time.perf_counter()
    spectrum = scipy.fft.rfft2(boxes, axes=(-2, -1), workers=args.workers)
    cropped = np.ascontiguousarray(spectrum[:, :small_box, : small_box // 2 + 1])
    scipy.fft.irfft2(
        cropped, s=(small_box, small_box), axes=(-2, -1), workers=args.workers
    )
    bound = time.perf_counter() - start
    print(f"micrograph {size} x {size} at {pixel_a} Å/px, workers={args.workers}")
    print(
        f"extract {kept} particles ({out.n_skipped_edge} skipped at the edge), "
        f"box {box} -> {small_box} px: {elapsed:.3f} s/micrograph, "
        f"{kept / elapsed:.0f} particles/s; FFT bound {bound:.3f} s; "
        f"ratio {elapsed / bound:.1f}"
    )


if __name__ == "__main__":
    main()
