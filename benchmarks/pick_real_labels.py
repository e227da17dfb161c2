"""The labelled real micrographs of ``bench_pick_real.py``: loading them, checking
the labels (``--check-labels``), the label-average ceiling, overlays and matching
picks to labels.

A sibling module of the benchmark (imported as ``pick_real_labels``; the script's
folder is on ``sys.path`` when it runs).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage, signal
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from pipelines.ctf.estimate import estimate_ctf
from pipelines.ctf.model import CtfParams


@dataclass(frozen=True, slots=True, kw_only=True)
class Micrograph:
    dataset: str
    name: str
    image: np.ndarray
    labels_xy: np.ndarray  # (n, 2) x_px, y_px
    pixel_size_a: float
    diameter_range_a: tuple[float, float]
    particle_diameter_px: float  # measured (see fetch_picking_data.py)
    # estimated with pipelines/ctf when the manifest gives the optics (float MRC)
    ctf: CtfParams | None = None


# -> (n, 2) picks x_px, y_px, and their scores (None: the peer gives none we read)
Picker = Callable[[Micrograph], tuple[np.ndarray, np.ndarray | None]]


def load_micrographs(cache: Path) -> list[Micrograph]:
    manifest = cache / "manifest.json"
    if not manifest.exists():
        raise SystemExit(
            f"{manifest} missing: run benchmarks/data/fetch_picking_data.py"
        )
    out = []
    for entry in json.loads(manifest.read_text()):
        path = cache / entry["micrograph"]
        if path.suffix == ".mrc":
            with mrcfile.open(path, permissive=True) as mrc:
                image = np.asarray(mrc.data, dtype=np.float32)
        else:
            image = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        labels = np.loadtxt(cache / entry["coordinates"], delimiter=",", ndmin=2)
        low, high = entry["diameter_range_a"]
        ctf = None
        if "optics" in entry:  # a raw micrograph: its CTF, as the live stage has it
            ctf = estimate_ctf(
                image,
                pixel_size_a=float(entry["pixel_size_a"]),
                voltage_kv=float(entry["optics"]["voltage_kv"]),
                cs_mm=float(entry["optics"]["cs_mm"]),
            ).params
        out.append(
            Micrograph(
                dataset=entry["dataset"],
                name=path.stem,
                image=image,
                labels_xy=labels.reshape(-1, 2),
                pixel_size_a=float(entry["pixel_size_a"]),
                diameter_range_a=(float(low), float(high)),
                particle_diameter_px=float(entry["particle_diameter_px"]),
                ctf=ctf,
            )
        )
    return out


def select(
    micrographs: list[Micrograph], datasets: list[str] | None, limit: int | None
) -> list[Micrograph]:
    """The micrographs of the data sets named (by a part of the name), at most
    ``limit`` of each, in the manifest's order."""
    out: list[Micrograph] = []
    for mic in micrographs:
        if datasets and not any(d in mic.dataset for d in datasets):
            continue
        if limit is None or sum(m.dataset == mic.dataset for m in out) < limit:
            out.append(mic)
    return out


def match_tolerance_px(mic: Micrograph) -> float:
    """A pick matches a label within half the particle's radius."""
    return 0.25 * mic.particle_diameter_px


def _high_passed(image: np.ndarray, diameter_px: float) -> np.ndarray:
    """The micrograph minus its background (Gaussian of two diameters), in robust
    SDs: what the label check and the label-average template work on."""
    flat = image - ndimage.gaussian_filter(image, 2.0 * diameter_px)
    centred = flat - np.median(flat)
    return np.asarray(centred / (1.4826 * np.median(np.abs(centred))))


def label_average(
    micrographs: list[Micrograph],
    half_box_px: int,
    transform: Callable[[np.ndarray, tuple[int, int]], np.ndarray] | None = None,
) -> np.ndarray:
    """Mean of the boxes centred on the labels (optionally moved by ``transform``
    first), each micrograph high-passed and in robust SDs: ``(2h, 2h)``."""
    total = np.zeros((2 * half_box_px, 2 * half_box_px))
    count = 0
    for mic in micrographs:
        flat = _high_passed(mic.image, mic.particle_diameter_px)
        xy = (
            mic.labels_xy if transform is None else transform(mic.labels_xy, flat.shape)
        )
        cols, rows = np.rint(xy).astype(int).T
        h = half_box_px
        inside = (
            (rows >= h)
            & (rows < flat.shape[0] - h)
            & (cols >= h)
            & (cols < flat.shape[1] - h)
        )
        offsets = np.arange(-h, h)
        rows, cols = rows[inside], cols[inside]
        for start in range(0, len(rows), 64):  # 64 boxes at a time (memory)
            boxes = flat[
                rows[start : start + 64, None, None] + offsets[None, :, None],
                cols[start : start + 64, None, None] + offsets[None, None, :],
            ]
            total += boxes.sum(axis=0)
        count += len(rows)
    return total / max(count, 1)


def radial_profile(average: np.ndarray) -> np.ndarray:
    """Mean of ``average`` in 1-px rings about its centre, less the mean of the
    three outermost rings (the local background)."""
    h = average.shape[0] // 2
    yy, xx = np.mgrid[-h:h, -h:h]
    ring = np.hypot(yy, xx).astype(int).ravel()
    sums = np.bincount(ring, weights=average.ravel())
    profile = np.asarray(sums / np.maximum(np.bincount(ring), 1))[:h]
    return profile - profile[-3:].mean()


def check_labels(micrographs: list[Micrograph]) -> None:
    """Are the labels in the micrographs' pixel frame, and how large is the
    particle?  The label-centred average must show a particle at its centre that
    the same labels transposed, flipped in y or moved by a particle diameter do not;
    its edge (where the core's contrast has fallen to a tenth) is the particle's
    radius, and the labels' nearest-neighbour spacing bounds the diameter."""
    for dataset in sorted({m.dataset for m in micrographs}):
        mics = [m for m in micrographs if m.dataset == dataset]
        d = mics[0].particle_diameter_px
        h = round(1.5 * d)
        controls: dict[
            str, Callable[[np.ndarray, tuple[int, int]], np.ndarray] | None
        ] = {
            "as given": None,
            "x and y swapped": lambda xy, shape: xy[:, ::-1],
            "y flipped": lambda xy, shape: np.column_stack(
                [xy[:, 0], shape[0] - 1 - xy[:, 1]]
            ),
            "moved by one diameter": lambda xy, shape, d=d: xy + d,
        }
        print(f"{dataset}: label-centred average, contrast within 3 px of the centre")
        for name, transform in controls.items():
            profile = radial_profile(label_average(mics, h, transform))
            print(f"  {name:22s} {profile[:3].mean():+.3f} robust SD")
        profile = radial_profile(label_average(mics, h))
        core = profile[:3].mean()
        edge = int(np.argmax(np.abs(profile) < 0.1 * abs(core)))  # first such ring
        spacing = np.concatenate(
            [cKDTree(m.labels_xy).query(m.labels_xy, k=2)[0][:, 1] for m in mics]
        )
        print(
            f"  core edge at {edge} px (diameter about {2 * edge} px); label spacing "
            f"5th / 50th percentile {np.percentile(spacing, 5):.0f} / "
            f"{np.median(spacing):.0f} px; particle diameter used "
            f"{d:.0f} px (tolerance {match_tolerance_px(mics[0]):.0f} px)"
        )
        print("  profile:", " ".join(f"{v:+.3f}" for v in profile[: 2 * edge + 2]))


def make_label_average_picker(micrographs: list[Micrograph]) -> Picker:
    """Not a picker: the data's ceiling.  The template is the label-centred average
    of the OTHER micrographs of the data set (leave one out); the score is its
    correlation with the high-passed micrograph, peaks at least 0.75 diameter
    apart.  Only its label-tuned column means anything (it has no threshold)."""
    h_of = {m.name: round(0.75 * m.particle_diameter_px) for m in micrographs}

    def picker(mic: Micrograph) -> tuple[np.ndarray, np.ndarray | None]:
        others = [
            m for m in micrographs if m.dataset == mic.dataset and m.name != mic.name
        ]
        if not others:  # a one-micrograph data set: no leave-one-out template
            return np.zeros((0, 2)), np.zeros(0)
        template = label_average(others, h_of[mic.name])
        template -= template.mean()
        flat = _high_passed(mic.image, mic.particle_diameter_px)
        score = signal.fftconvolve(flat, template[::-1, ::-1], mode="same")
        window = max(3, int(0.75 * mic.particle_diameter_px) | 1)
        peak = score >= ndimage.maximum_filter(score, size=window)
        rows, cols = np.nonzero(peak)
        return np.column_stack([cols, rows]).astype(np.float64), score[rows, cols]

    return picker


def write_overlay(path: Path, mic: Micrograph, picks: dict[str, np.ndarray]) -> None:
    """PNG: the micrograph low-passed at a fifth of the particle, the labels as green
    circles of the particle's diameter, each picker's picks as coloured dots."""
    smooth = ndimage.gaussian_filter(mic.image, 0.1 * mic.particle_diameter_px)
    smooth -= ndimage.gaussian_filter(smooth, 2.0 * mic.particle_diameter_px)
    low, high = np.percentile(smooth, [1, 99])
    grey = np.clip((smooth - low) / (high - low) * 255, 0, 255).astype(np.uint8)
    picture = Image.fromarray(grey).convert("RGB")
    draw = ImageDraw.Draw(picture)
    r = mic.particle_diameter_px / 2
    for x, y in mic.labels_xy:
        draw.ellipse([x - r, y - r, x + r, y + r], outline=(0, 255, 0))
    colours = [(255, 60, 60), (60, 140, 255), (255, 200, 0), (255, 0, 255)]
    for row, ((name, xy), colour) in enumerate(
        zip(sorted(picks.items()), colours, strict=False)
    ):
        draw.text((4, 4 + 12 * row), name, fill=colour)
        for x, y in xy:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def count_matches(labels: np.ndarray, picks: np.ndarray, tolerance_px: float) -> int:
    """One-to-one matches within ``tolerance_px`` (optimal assignment)."""
    if len(labels) == 0 or len(picks) == 0:
        return 0
    d = np.hypot(
        labels[:, None, 0] - picks[None, :, 0], labels[:, None, 1] - picks[None, :, 1]
    )
    cost = np.where(d <= tolerance_px, d, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return int(np.count_nonzero(d[rows, cols] <= tolerance_px))
