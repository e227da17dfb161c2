"""Recall and precision of the pickers on real, hand-labelled micrographs.

    .venv/bin/python benchmarks/data/fetch_picking_data.py      # once
    .venv/bin/python benchmarks/bench_pick_real.py [--cache DIR] [--per-micrograph]

For every data set of ``<cache>/manifest.json`` (see ``benchmarks/data/``) and every
micrograph: our blob picker, the learned picker (a classifier self-trained on the
blob picker's candidates of that micrograph) and our template picker at their defaults (only the
pixel size and the diameter range given, no CTF: the labelled PNGs carry none), and
the peers where installed: topaz's pretrained model (``topaz-em``: ``topaz
preprocess`` and ``topaz extract`` at their defaults, the ``resnet16`` model and
threshold -6, on one CPU thread; ``topaz-4A`` downsamples to about 4 Å/px instead)
and RELION's LoG picker (``relion_autopick --LoG``, at its default threshold; "not
found" when RELION is not on the PATH).  Topaz scores every pixel with its network
(4.0 TFLOP for a 1024² micrograph): minutes of CPU per micrograph; ``--topaz-micrographs
N`` runs it on the first N of each data set only.

A pick matches a label when their centres are within half the particle's radius
(the particle's diameter is measured per data set, see ``--check-labels`` and
``benchmarks/data/fetch_picking_data.py``), one to one (an optimal assignment);
recall = matched labels / labels, precision = matched picks / picks, pooled over the
micrographs of a data set.  The template picker is fed projections of the 70S
ribosome map of ``../shared/data/real`` (5 Å/px, the nearest real map we ship).

``--check-labels`` verifies the labels before anything is scored: the average of
the boxes centred on the labels must show a particle that the same labels swapped
in x/y, flipped in y or moved by a diameter do not, and its radial profile gives the
particle's size.  ``--overlays DIR`` writes pictures of labels and picks.

``label-average`` is not a picker but the data's ceiling for any picker that scores
a patch by its likeness to a particle: the template is the label-centred average of
the other micrographs (leave one out), correlated with the high-passed micrograph;
only its label-tuned column is meaningful.

The last column is each picker tuned on the labels: the score threshold (over all
micrographs of the run, from the picks the default run returned) that maximises F1,
as the issue quotes RELION's LoG at a tuned threshold.  It says what the scores can
separate, not what a user gets.  ``blob-2sd`` (not a default) is the blob picker at
its threshold floor, so that its tuned threshold can also be lower than the default.

``blob-2d-template`` is the service's blob -> 2D -> template loop on each data
set, with the service's functions and defaults (``pick_real_loop.py``): blob picks,
extraction, the online 2D actor, the ranker's selection, template set 1, then the
template picker on every micrograph; its time column is the template picker's
alone (the loop's parts are printed above the table).  ``--loop-diagnose`` also
prints where the set's scores put the labelled particles, the other peaks and the
decoys (``pick_real_diagnose.py``).

Time per micrograph (wall), its CPU time (this process's and its children's, user
and system: what the picker costs whatever else the shared machine runs), and the
wall time's ratio to a lower bound measured in the same run: one forward real FFT of
the micrograph (every picker must at least look at all of it).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import scipy.fft
import starfile
from pick_real_diagnose import diagnose_loops
from pick_real_labels import (  # a sibling module (this script's folder)
    Micrograph,
    Picker,
    check_labels,
    count_matches,
    load_micrographs,
    make_label_average_picker,
    match_tolerance_px,
    select,
    write_overlay,
)
from pick_real_loop import TemplateLoop, make_loop_picker, print_loops

from livestream.stages.params import PickParams
from pipelines.picking.blob import pick_blob
from pipelines.picking.learned import pick_learned
from pipelines.picking.template import pick_template
from pipelines.simulate.projection import project, random_rotations
from pipelines.simulate.volumes import load_map

TOPAZ_PARTICLE_PX = 24.0  # topaz downsamples (by an integer) to about this
MIN_THRESHOLD_SD = 2.0  # the lowest threshold worth reporting (label-tuned column)
FIXED_THRESHOLD_SD = 4.5  # blob-4.5sd: the live stage's old fixed default
# the shared real data (as tests/conftest.py: LIVESTREAM_SHARED_DATA, else beside
# the checkout)
SHARED_DATA = Path(
    os.environ.get(
        "LIVESTREAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"
    )
)
RIBOSOME_MAP = SHARED_DATA / "real/clean70SRibosome_vol_65p.mrc"
RIBOSOME_MAP_PIXEL_A = 5.0  # ASPIRE's RELION tutorial uses --angpix 5 for this map


@dataclass(frozen=True, slots=True, kw_only=True)
class Score:
    n_labels: int
    n_picks: int
    n_matched: int
    seconds: float
    cpu_seconds: float  # this process's and its children's (topaz, RELION) CPU time


def blob_picker(mic: Micrograph) -> tuple[np.ndarray, np.ndarray | None]:
    """With the micrograph's CTF where the data set has one (the live stage's path)."""
    picks = pick_blob(
        mic.image,
        pixel_size_a=mic.pixel_size_a,
        diameter_range_a=mic.diameter_range_a,
        ctf=mic.ctf,
    )
    return np.column_stack([picks.x_px, picks.y_px]), picks.score


def blob_picker_low(mic: Micrograph) -> tuple[np.ndarray, np.ndarray | None]:
    """The blob picker at its threshold floor (2 SD): for the label-tuned column."""
    picks = pick_blob(
        mic.image,
        pixel_size_a=mic.pixel_size_a,
        diameter_range_a=mic.diameter_range_a,
        threshold_sd=MIN_THRESHOLD_SD,
        ctf=mic.ctf,
    )
    return np.column_stack([picks.x_px, picks.y_px]), picks.score


def blob_picker_live(mic: Micrograph) -> tuple[np.ndarray, np.ndarray | None]:
    """As the live pick stage runs it at its defaults: with the CTF and the stage's
    default ``threshold_sd`` (``PickParams``, ``livestream/stages/params.py``: None,
    chosen per micrograph); without a CTF, as ``blob``."""
    if mic.ctf is None:
        return blob_picker(mic)
    picks = pick_blob(
        mic.image,
        pixel_size_a=mic.pixel_size_a,
        diameter_range_a=mic.diameter_range_a,
        threshold_sd=PickParams().threshold_sd,
        ctf=mic.ctf,
    )
    return np.column_stack([picks.x_px, picks.y_px]), picks.score


def blob_picker_fixed(mic: Micrograph) -> tuple[np.ndarray, np.ndarray | None]:
    """The live stage with the explicit ``threshold_sd = 4.5`` (its default until
    the per-micrograph threshold), with the CTF where the data set has one."""
    picks = pick_blob(
        mic.image,
        pixel_size_a=mic.pixel_size_a,
        diameter_range_a=mic.diameter_range_a,
        threshold_sd=FIXED_THRESHOLD_SD,
        ctf=mic.ctf,
    )
    return np.column_stack([picks.x_px, picks.y_px]), picks.score


def blob_picker_no_ctf(mic: Micrograph) -> tuple[np.ndarray, np.ndarray | None]:
    """The blob picker's LoG mode even where the data set has a CTF."""
    picks = pick_blob(
        mic.image, pixel_size_a=mic.pixel_size_a, diameter_range_a=mic.diameter_range_a
    )
    return np.column_stack([picks.x_px, picks.y_px]), picks.score


def learned_picker(mic: Micrograph) -> tuple[np.ndarray, np.ndarray | None]:
    """The blob candidates, then the classifier self-trained on this micrograph's
    own candidates (``pipelines/picking/learned.py``): no labels, defaults."""
    picks = pick_learned(
        mic.image, pixel_size_a=mic.pixel_size_a, diameter_range_a=mic.diameter_range_a
    )
    return np.column_stack([picks.x_px, picks.y_px]), picks.score


def make_template_picker() -> Picker:
    volume, _ = load_map(RIBOSOME_MAP)
    views = np.asarray(project(volume, random_rotations(50, np.random.default_rng(0))))

    def template_picker(mic: Micrograph) -> tuple[np.ndarray, np.ndarray | None]:
        picks = pick_template(
            mic.image,
            views,
            pixel_size_a=mic.pixel_size_a,
            diameter_a=float(np.mean(mic.diameter_range_a)),
            ctf=None,
            template_pixel_size_a=RIBOSOME_MAP_PIXEL_A,
        )
        return np.column_stack([picks.x_px, picks.y_px]), picks.score

    return template_picker


def topaz_scale(mic: Micrograph) -> int:
    """Topaz's downsampling factor: the integer that makes the particle about
    ``TOPAZ_PARTICLE_PX`` across (topaz's tutorial: a 150-Å particle downsampled 8x to
    5.3 Å/px, 28 px, well inside the pretrained models' 71-px receptive field).  On
    EMPIAR-10017 (108 px) 4, to 7.1 Å/px; on EMPIAR-10947 (24 px) 1 (5.4 Å/px): both
    in the 4-8 Å/px range the tutorial gives for the pretrained models; on our float
    MRC (60 px at 0.67 Å/px) 2."""
    return max(1, round(mic.particle_diameter_px / TOPAZ_PARTICLE_PX))


def topaz_scale_4a(mic: Micrograph) -> int:
    """The integer downsampling nearest 4 Å/px (topaz's tutorial: the pretrained models
    assume 4-8 Å/px, ~4 for small and medium particles): 6 on our float MRC (a 10-px
    particle), 2 on EMPIAR-10017 (2048²), 1 on EMPIAR-10947."""
    return max(1, round(4.0 / mic.pixel_size_a))


def make_topaz_picker(
    scale_of: Callable[[Micrograph], int] = topaz_scale,
) -> Picker | None:
    """``topaz preprocess`` then ``topaz extract`` at topaz's defaults (its pretrained
    ``resnet16`` model, extraction threshold -6), on the CPU (``-d -1``) with one
    thread (``-j 1`` and ``OMP_NUM_THREADS=1``): with PyTorch's default of one
    thread per core, on the shared 2-core machine under load its OpenMP threads wait
    for each other (the GMM normalisation of ``preprocess``, thousands of small
    reductions, 93 s instead of 7 s on one 1024² micrograph, load 7), and the
    model's convolutions run no faster with two threads than with one there."""
    beside = Path(sys.executable).parent / "topaz"  # the same virtual environment
    topaz = str(beside) if beside.exists() else shutil.which("topaz")
    if topaz is None:
        return None
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def topaz_picker(mic: Micrograph) -> tuple[np.ndarray, np.ndarray | None]:
        scale = scale_of(mic)
        radius_px = round(mic.particle_diameter_px / 2 / scale)
        with tempfile.TemporaryDirectory() as tmp:
            mrc_path = Path(tmp) / f"{mic.name}.mrc"
            with mrcfile.new(mrc_path) as mrc:
                mrc.set_data(mic.image.astype(np.float32))
            out = Path(tmp) / "picks.txt"
            subprocess.run(
                [topaz, "preprocess", "-d", "-1", "-j", "1", "-s", str(scale),
                 "-o", f"{tmp}/pre", str(mrc_path)],
                check=True, capture_output=True, env=env,
            )  # fmt: skip
            subprocess.run(
                [topaz, "extract", "-d", "-1", "-j", "1", "-r", str(radius_px),
                 "-o", str(out), f"{tmp}/pre/{mic.name}.mrc"],
                check=True, capture_output=True, env=env,
            )  # fmt: skip
            table = np.genfromtxt(out, skip_header=1, usecols=(1, 2, 3), ndmin=2)
        table = table.reshape(-1, 3).astype(np.float64)
        return table[:, :2] * scale, table[:, 2]

    return topaz_picker


def make_relion_log_picker() -> Picker | None:
    """RELION's LoG picker (``relion_autopick --LoG``) at the GUI's defaults (low-pass
    20 Å, threshold adjustment 0, upper threshold 999) over the same diameter range."""
    executable = shutil.which("relion_autopick")
    if executable is None:
        return None

    def relion_log_picker(mic: Micrograph) -> tuple[np.ndarray, np.ndarray | None]:
        with tempfile.TemporaryDirectory(prefix="relion_log_") as tmp:
            folder = Path(tmp)
            (folder / "Micrographs").mkdir()
            with mrcfile.new(folder / "Micrographs" / f"{mic.name}.mrc") as mrc:
                mrc.set_data(mic.image.astype(np.float32))
                mrc.voxel_size = mic.pixel_size_a
            (folder / "micrographs.star").write_text(
                "data_optics\nloop_\n_rlnOpticsGroupName\n_rlnOpticsGroup\n"
                "_rlnMicrographPixelSize\n_rlnVoltage\n_rlnSphericalAberration\n"
                f"_rlnAmplitudeContrast\nopticsGroup1 1 {mic.pixel_size_a} 300 2.7 0.1\n\n"
                "data_micrographs\nloop_\n_rlnMicrographName\n_rlnOpticsGroup\n"
                f"Micrographs/{mic.name}.mrc 1\n"
            )
            low, high = mic.diameter_range_a
            subprocess.run(
                [
                    executable, "--i", "micrographs.star", "--odir", "AutoPick/",
                    "--pickname", "autopick", "--LoG", "--LoG_diam_min", str(low),
                    "--LoG_diam_max", str(high), "--angpix", str(mic.pixel_size_a),
                    "--shrink", "0", "--lowpass", "20", "--LoG_adjust_threshold", "0",
                    "--LoG_upper_threshold", "999",
                ],
                cwd=folder, check=True, capture_output=True, timeout=600,
            )  # fmt: skip
            out = folder / "AutoPick" / "Micrographs" / f"{mic.name}_autopick.star"
            table = starfile.read(out)
            if isinstance(table, dict):
                table = next(iter(table.values()))
        xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=np.float64)
        score = table["rlnAutopickFigureOfMerit"].to_numpy(dtype=np.float64)
        return xy, score

    return relion_log_picker


def best_threshold(
    found: list[tuple[Micrograph, np.ndarray, np.ndarray]],
) -> tuple[float, float, float]:
    """(threshold, recall, precision) at the score threshold that maximises F1 over
    all micrographs: the picker tuned on the labels (not a default)."""
    scores = np.concatenate([s for _, _, s in found])
    best = (float("nan"), 0.0, 0.0)
    if scores.size == 0:
        return best
    best_f1 = -1.0
    for threshold in np.unique(np.quantile(scores, np.linspace(0.0, 0.98, 50))):
        n_labels = n_picks = matched = 0
        for mic, picks, s in found:
            kept = picks[s >= threshold]
            n_labels += len(mic.labels_xy)
            n_picks += len(kept)
            tol = match_tolerance_px(mic)
            matched += count_matches(mic.labels_xy, kept, tol)
        recall, precision = matched / max(n_labels, 1), matched / max(n_picks, 1)
        f1 = 2 * recall * precision / max(recall + precision, 1e-12)
        if f1 > best_f1:
            best_f1, best = f1, (float(threshold), recall, precision)
    return best


def cpu_seconds() -> float:
    """CPU seconds (user and system) of this process and of its finished children:
    what a picker costs whatever else the machine runs (on the shared machine under
    load a ``nice``d picker's wall time is mostly waiting)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def fft_bound_s(image: np.ndarray) -> float:
    scipy.fft.rfft2(image)  # plan / warm
    start = time.perf_counter()
    scipy.fft.rfft2(image)
    return time.perf_counter() - start


def run_picker(
    name: str,
    picker: Picker,
    micrographs: list[Micrograph],
    rows: list[tuple[str, Micrograph, Score]],
    per_micrograph: bool,
    picks_dir: Path | None = None,
) -> list[tuple[Micrograph, np.ndarray, np.ndarray | None]]:
    """Run ``picker`` on every micrograph, append the scores to ``rows``; the picks
    with their scores (for the label-tuned column and the overlays), also written to
    ``picks_dir/<picker>/<micrograph>.csv`` as each micrograph finishes where given
    (a long run's picks survive its interruption)."""
    found: list[tuple[Micrograph, np.ndarray, np.ndarray | None]] = []
    for mic in micrographs:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        picks, scores = picker(mic)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds() - cpu_start
        found.append((mic, picks, scores))
        score = Score(
            n_labels=len(mic.labels_xy),
            n_picks=len(picks),
            n_matched=count_matches(mic.labels_xy, picks, match_tolerance_px(mic)),
            seconds=seconds,
            cpu_seconds=cpu,
        )
        rows.append((name, mic, score))
        if per_micrograph:
            print(
                f"{name:10s} {mic.name[:40]:40s} labels {score.n_labels:4d} "
                f"picks {score.n_picks:4d} matched {score.n_matched:4d} recall "
                f"{score.n_matched / max(score.n_labels, 1):.2f} precision "
                f"{score.n_matched / max(score.n_picks, 1):.2f} {seconds:.2f} s "
                f"(CPU {cpu:.2f} s)",
                flush=True,
            )
        if picks_dir is not None:  # x, y, score per pick (score NaN where none)
            folder = picks_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            column = np.full(len(picks), np.nan) if scores is None else scores
            np.savetxt(
                folder / f"{mic.name}.csv",
                np.column_stack([picks, column]),
                delimiter=",",
                header=f"x_px,y_px,score; {seconds:.3f} s, CPU {cpu:.3f} s",
            )
    return found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache/livestream/picking"
    )
    parser.add_argument("--per-micrograph", action="store_true")
    parser.add_argument(
        "--pickers",
        nargs="*",
        default=[
            "blob",
            "learned",
            "template",
            "topaz",
            "relion-log",
            "label-average",
        ],
    )
    parser.add_argument(
        "--datasets", nargs="*", help="only data sets whose name contains one of these"
    )
    parser.add_argument(
        "--max-micrographs", type=int, help="at most this many per data set"
    )
    parser.add_argument(
        "--topaz-micrographs",
        type=int,
        help="topaz (minutes per micrograph on a loaded 2-core CPU) on at most this "
        "many per data set (default: all)",
    )
    parser.add_argument(
        "--picks-dir",
        type=Path,
        help="write each picker's picks and scores here, one CSV per micrograph",
    )
    parser.add_argument(
        "--loop-set",
        choices=["first", "last"],
        default="first",
        help="blob-2d-template: the service's first template set (default) or "
        "the selection after 2D's whole pass budget",
    )
    parser.add_argument(
        "--loop-sets-dir",
        type=Path,
        help="blob-2d-template: keep each data set's template set here and reuse "
        "it on the next run with the same micrographs (2D is not run again)",
    )
    parser.add_argument(
        "--loop-diagnose",
        action="store_true",
        help="blob-2d-template: where the set's NCC scores the labelled particles "
        "against the other peaks and the decoys (pick_real_diagnose.py)",
    )
    parser.add_argument(
        "--montages",
        type=Path,
        help="blob-2d-template: write each data set's template averages here",
    )
    parser.add_argument(
        "--check-labels",
        action="store_true",
        help="print the label-frame and particle-size check, then exit",
    )
    parser.add_argument(
        "--overlays",
        type=Path,
        help="write PNGs of labels and picks of the first 3 micrographs of each "
        "data set here",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    micrographs = select(
        load_micrographs(args.cache), args.datasets, args.max_micrographs
    )
    if args.check_labels:
        check_labels(micrographs)
        return
    loops: dict[str, TemplateLoop | None] = {}
    factories: dict[str, Callable[[], Picker | None]] = {
        "blob": lambda: blob_picker,
        "blob-2sd": lambda: blob_picker_low,
        "blob-live": lambda: blob_picker_live,
        "blob-4.5sd": lambda: blob_picker_fixed,
        "blob-no-ctf": lambda: blob_picker_no_ctf,
        "learned": lambda: learned_picker,
        "template": make_template_picker,
        "topaz": make_topaz_picker,
        "topaz-4A": lambda: make_topaz_picker(topaz_scale_4a),
        "relion-log": make_relion_log_picker,
        "label-average": lambda: make_label_average_picker(micrographs),
        "blob-2d-template": lambda: make_loop_picker(
            micrographs,
            which=args.loop_set,
            montage_dir=args.montages,
            sets_dir=args.loop_sets_dir,
            built=loops,
        ),
    }
    overlaid = {m.name for m in select(micrographs, None, 3)}
    overlay_picks: dict[str, dict[str, np.ndarray]] = {}
    rows: list[tuple[str, Micrograph, Score]] = []
    tuned: dict[tuple[str, str], tuple[float, float, float]] = {}
    for name in args.pickers:
        picker = factories[name]()
        if picker is None:
            print(f"{name}: not found")
            continue
        limit = args.topaz_micrographs if name.startswith("topaz") else None
        found = run_picker(
            name,
            picker,
            select(micrographs, None, limit),
            rows,
            args.per_micrograph,
            args.picks_dir,
        )
        for mic, picks, _ in found:
            if mic.name in overlaid and name != "label-average":
                overlay_picks.setdefault(mic.name, {})[name] = picks
        for dataset in dict.fromkeys(m.dataset for m, _, _ in found):
            scored = [
                (m, p, s) for m, p, s in found if m.dataset == dataset and s is not None
            ]
            if scored:
                tuned[name, dataset] = best_threshold(scored)
    if args.overlays:
        for mic in micrographs:
            if mic.name in overlaid:
                path = args.overlays / f"{mic.name}.png"
                write_overlay(path, mic, overlay_picks.get(mic.name, {}))
    bound = {m.name: fft_bound_s(m.image) for m in micrographs}
    print_loops(loops)
    if args.loop_diagnose:
        diagnose_loops(micrographs, loops)
    print_table(rows, args.pickers, tuned, bound)


def print_table(
    rows: list[tuple[str, Micrograph, Score]],
    pickers: list[str],
    tuned: dict[tuple[str, str], tuple[float, float, float]],
    bound: dict[str, float],
) -> None:
    """The markdown table: one row per data set and picker, pooled."""
    print()
    print(
        "| data set | picker | micrographs | labels | picks | recall | precision "
        "| s / micrograph | CPU s / micrograph | / FFT bound "
        "| label-tuned: threshold, recall, precision |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for dataset in sorted({m.dataset for _, m, _ in rows}):
        for name in pickers:
            mine = [(m, s) for n, m, s in rows if n == name and m.dataset == dataset]
            if not mine:
                continue
            n_labels = sum(s.n_labels for _, s in mine)
            n_picks = sum(s.n_picks for _, s in mine)
            matched = sum(s.n_matched for _, s in mine)
            seconds = float(np.mean([s.seconds for _, s in mine]))
            cpu = float(np.mean([s.cpu_seconds for _, s in mine]))
            ratio = float(np.mean([s.seconds / bound[m.name] for m, s in mine]))
            print(
                f"| {dataset} | {name} | {len(mine)} | {n_labels} | {n_picks} "
                f"| {matched / max(n_labels, 1):.2f} | {matched / max(n_picks, 1):.2f} "
                f"| {seconds:.2f} | {cpu:.2f} | {ratio:.0f} "
                f"| {tuned_text(tuned.get((name, dataset)))} |"
            )


def tuned_text(tuned: tuple[float, float, float] | None) -> str:
    if tuned is None:
        return "-"
    threshold, recall, precision = tuned
    return f"{threshold:.3g}, {recall:.2f}, {precision:.2f}"


if __name__ == "__main__":
    main()
