"""The template picker's score on real micrographs: the whitened NCC, the plain
correlation and partial whitening, with templates from 2D-like averages.

    .venv/bin/python benchmarks/bench_template_score.py [--cache DIR]
        [--loop-set NPZ] [--datasets 10017 10947 ours] [--max-micrographs N]
        [--variants ncc:1 correlation:0 correlation:0.5]

A variant is ``score:whitening`` (``pick_template``'s ``score`` and
``whitening``; docs/picking.md, *Template*), each run with the picker's
per-micrograph threshold, the data set's CTF where it has one, the pick stage's
defaults otherwise, and scored against the labels (``pick_real_labels.py``: a
match within half the particle's radius, one to one).  Templates:

* a data set named by ``--loop-set`` (an ``.npz`` kept by ``bench_pick_real.py
  --loop-sets-dir``; the file name says which set): the live loop's template set;
* every other data set: leave one micrograph out; the boxes at the labels of the
  other micrographs (background of two diameters removed, contrast inverted,
  phase-flipped where the set has a CTF, box 1.5 × the largest diameter) in
  ``--classes`` k-means classes of their low-passed pixels: class-like averages,
  the labels' stand-in for the 2D classes.  A data set of one micrograph (ours) is
  cut into its left and right halves, each picked with the other's averages.

Also printed, per variant, what the guard (``livestream/templates/guard.py``)
measures without labels: the share of the blob picker's better half of picks
that the templates found (``blob_recovered``) and the counts.  Time per
micrograph and its ratio to one forward FFT of the micrograph (the lower bound
any picker pays) are printed with each row.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.fft
from pick_real_labels import (  # a sibling module (this script's folder)
    Micrograph,
    count_matches,
    load_micrographs,
    match_tolerance_px,
    select,
)
from pick_real_loop import read_loop
from scipy import ndimage
from scipy.cluster.vq import kmeans2

from livestream.stages.params import PickParams
from livestream.templates.guard import blob_recovered
from pipelines.ctf.model import ctf_2d
from pipelines.picking.blob import pick_blob
from pipelines.picking.filters import fourier_crop
from pipelines.picking.template import TemplateScore, pick_template


@dataclass(frozen=True, slots=True)
class Variant:
    score: TemplateScore
    whitening: float

    @property
    def name(self) -> str:
        return f"{self.score}:{self.whitening:g}"


def parse_variant(text: str) -> Variant:
    score, whitening = text.split(":")
    if score not in ("ncc", "correlation"):
        raise argparse.ArgumentTypeError(f"score {score!r}: ncc or correlation")
    return Variant(score, float(whitening))  # type: ignore[arg-type]


def halves(mic: Micrograph) -> list[Micrograph]:
    """The left and right halves of a micrograph, each with its labels."""
    half = mic.image.shape[1] // 2
    out = []
    for name, start, stop in (("left", 0, half), ("right", half, 2 * half)):
        x = mic.labels_xy[:, 0]
        inside = (x >= start) & (x < stop)
        labels = mic.labels_xy[inside] - np.array([start, 0.0])
        image = np.ascontiguousarray(mic.image[:, start:stop])
        out.append(
            replace(mic, name=f"{mic.name}_{name}", image=image, labels_xy=labels)
        )
    return out


def _white_flat(mic: Micrograph) -> np.ndarray:
    """Background of two diameters removed, contrast inverted (white particles),
    phase-flipped with the micrograph's CTF where it has one."""
    image = mic.image.astype(np.float64)
    flat = image - ndimage.gaussian_filter(image, 2.0 * mic.particle_diameter_px)
    if mic.ctf is not None:
        flip = np.sign(ctf_2d(flat.shape, mic.pixel_size_a, mic.ctf))
        flat = scipy.fft.irfft2(scipy.fft.rfft2(flat) * flip, s=flat.shape)
    flat = -(flat - np.median(flat))
    return np.asarray(flat / (1.4826 * np.median(np.abs(flat))), dtype=np.float32)


def label_class_averages(
    others: list[Micrograph], n_classes: int, seed: int = 0
) -> np.ndarray:
    """``(k, box, box)`` averages of k-means classes of the boxes at the labels of
    ``others`` (module doc), box 1.5 x the largest diameter."""
    mic0 = others[0]
    half = max(4, round(0.75 * mic0.diameter_range_a[1] / mic0.pixel_size_a))
    offsets = np.arange(-half, half)
    boxes = []
    for mic in others:
        flat = _white_flat(mic)
        cols, rows = np.rint(mic.labels_xy).astype(int).T
        inside = (
            (rows >= half)
            & (rows < flat.shape[0] - half)
            & (cols >= half)
            & (cols < flat.shape[1] - half)
        )
        rows, cols = rows[inside], cols[inside]
        boxes.append(
            flat[
                rows[:, None, None] + offsets[None, :, None],
                cols[:, None, None] + offsets[None, None, :],
            ]
        )
    stack = np.concatenate(boxes).astype(np.float32)
    small = fourier_crop(stack, (16, 16)).reshape(len(stack), -1).astype(np.float64)
    small -= small.mean(axis=1, keepdims=True)
    _, label = kmeans2(small, n_classes, seed=seed, minit="++")
    averages = [stack[label == k].mean(axis=0) for k in range(n_classes)]
    counts = np.bincount(label, minlength=n_classes)
    return np.asarray([a for a, c in zip(averages, counts, strict=True) if c > 0])


def add(
    totals: dict[tuple[int, str], list[float]],
    groups: set[int],
    name: str,
    *values: float,
) -> None:
    """Add one micrograph's figures to each group's totals."""
    for group in groups:
        total = totals.setdefault((group, name), [0.0] * len(values))
        for k, value in enumerate(values):
            total[k] += value


def fft_bound_s(image: np.ndarray) -> float:
    start = time.perf_counter()
    scipy.fft.rfft2(image.astype(np.float32))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache/livestream/picking"
    )
    parser.add_argument("--loop-set", type=Path, action="append", default=[])
    parser.add_argument("--datasets", nargs="*", default=["10017", "10947", "ours"])
    parser.add_argument("--max-micrographs", type=int)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument(
        "--also-first",
        type=int,
        default=0,
        help="also print the totals of each data set's first N micrographs",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        type=parse_variant,
        default=[
            parse_variant(v) for v in ("ncc:1", "correlation:0", "correlation:0.5")
        ],
    )
    args = parser.parse_args()
    pick = PickParams()
    micrographs = select(
        load_micrographs(args.cache), args.datasets, args.max_micrographs
    )
    loops = {path.name: read_loop(path) for path in args.loop_set}
    rows: list[str] = []
    for dataset in dict.fromkeys(m.dataset for m in micrographs):
        mine = [m for m in micrographs if m.dataset == dataset]
        slug = "".join(c if c.isalnum() else "_" for c in dataset).lower()
        loop = next((v for k, v in loops.items() if k.startswith(slug)), None)
        if loop is None and len(mine) == 1:
            mine = halves(mine[0])
        source = "loop set" if loop is not None else f"{args.classes} label classes"
        # (micrographs, picker) -> picks, matched, recovered, / bound, sure, labels
        totals: dict[tuple[int, str], list[float]] = {}

        for index, mic in enumerate(mine):
            groups = {len(mine)} | (
                {args.also_first} if index < args.also_first else set()
            )
            groups -= {0}
            bound = fft_bound_s(mic.image)
            start = time.perf_counter()
            blob = pick_blob(
                mic.image,
                pixel_size_a=mic.pixel_size_a,
                diameter_range_a=mic.diameter_range_a,
                threshold_sd=pick.threshold_sd,
                downscale_to_a=pick.downscale_to_a,
                ctf=mic.ctf,
            )
            blob_s = time.perf_counter() - start
            tol = match_tolerance_px(mic)
            blob_xy = np.column_stack([blob.x_px, blob.y_px])
            matched = count_matches(mic.labels_xy, blob_xy, tol)
            add(
                totals,
                groups,
                "blob",
                len(blob),
                matched,
                0,
                blob_s / bound,
                0,
                len(mic.labels_xy),
            )
            if loop is not None:
                templates, tps_a = loop.templates, loop.template_pixel_size_a
            else:
                others = [m for m in mine if m.name != mic.name]
                templates, tps_a = label_class_averages(others, args.classes), None
            for variant in args.variants:
                start = time.perf_counter()
                found = pick_template(
                    mic.image,
                    templates,
                    pixel_size_a=mic.pixel_size_a,
                    diameter_a=float(np.mean(mic.diameter_range_a)),
                    ctf=mic.ctf,
                    template_pixel_size_a=tps_a,
                    downscale_to_a=pick.downscale_to_a,
                    score=variant.score,
                    whitening=variant.whitening,
                )
                seconds = time.perf_counter() - start
                xy = np.column_stack([found.x_px, found.y_px])
                got = count_matches(mic.labels_xy, xy, tol)
                guard_tol_px = 0.25 * float(np.mean(mic.diameter_range_a))
                guard_tol_px /= mic.pixel_size_a
                recovered, n_sure = blob_recovered(blob, found, guard_tol_px)
                confirmed, _ = blob_recovered(found, blob, guard_tol_px)
                add(
                    totals,
                    groups,
                    variant.name,
                    len(found),
                    got,
                    recovered * n_sure,
                    seconds / bound,
                    n_sure,
                    len(mic.labels_xy),
                )
                print(
                    f"{dataset[:24]:24s} {mic.name[:30]:30s} {variant.name:15s} "
                    f"picks {len(found):5d} R {got / max(len(mic.labels_xy), 1):.2f} "
                    f"P {got / max(len(found), 1):.2f} blob_recovered {recovered:.2f}"
                    f" (reverse {confirmed:.2f})"
                    f" | blob picks {len(blob)} R "
                    f"{matched / max(len(mic.labels_xy), 1):.2f} P "
                    f"{matched / max(len(blob), 1):.2f} | {seconds:.1f} s",
                    flush=True,
                )
        for (group, name), values in sorted(totals.items(), key=lambda kv: kv[0][0]):
            picks, matched, rec, ratio, n_sure, n_labels = values
            recall, precision = matched / max(n_labels, 1), matched / max(picks, 1)
            f1 = 2 * recall * precision / max(recall + precision, 1e-12)
            guard = f"{rec / n_sure:.2f}" if name != "blob" else "-"
            rows.append(
                f"| {dataset} | {group} | {source} | {name} | {int(picks)} | "
                f"{recall:.2f} / {precision:.2f} | {f1:.2f} | {guard} | "
                f"{ratio / group:.0f} |"
            )
    print(
        "\n| data set | micrographs | templates | score:whitening | picks | R / P | F1"
        " | blob_recovered | / FFT bound |\n| --- | --- | --- | --- | --- | --- | ---"
        " | --- | --- |"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
