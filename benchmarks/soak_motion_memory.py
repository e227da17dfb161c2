"""Memory of one long-lived motion worker over many movies (a soak).

    .venv/bin/python benchmarks/soak_motion_memory.py [--movies 40] [--seed 1]
        [--threads 2] [--bench /work/motionbench] [--formats /work/motionformats]
        [--shapes]

The service's pool worker lives for a whole session and keeps freed memory
(:func:`livestream.scheduling.allocator.keep_freed_memory`: glibc neither trims
nor maps large blocks), so a heap that fragments and grows once stays grown.
This process is set up as that worker (libgomp's idle threads sleep, freed
memory kept) and calls :func:`pipelines.motion.job.run_motion` on ``--movies``
movies drawn (seeded) from the ones found: the gain-corrected global-only movie
and the movie with local motion of ``compare_relion_motioncorr.py --workdir
BENCH``, and the int8 MRC, LZW TIFF and EER (1,000 readouts grouped by 25) of
``bench_motion.py --workdir FORMATS`` — different formats, shapes of reads and
code paths in one heap, the classic source of fragmentation.  ``--shapes`` adds
two movies cut from the gain-corrected one (written to a temporary folder before
the worker is set up): its first 30 frames (4096² × 30, with the gain) and its
centre 3072² × 40 (no gain), other array shapes in the same heap.

Per movie: CPU s, its own peak RSS (``VmHWM`` reset before each: Linux
``clear_refs`` 5), RSS after (anonymous and file-backed), glibc's ``mallinfo2``
after (``arena``: the heaps' size; ``hblkhd``: mapped blocks; ``uordblks`` in
use; ``fordblks`` free inside the heaps; ``keepcost`` trimmable top) and the
numba compilations the movie triggered (``jit``: one after the first movie is a
cache miss, and a compile inside a kept heap steps it up: docs/motion_speed.md,
*Memory over a long session*).  Summary: the largest peak and where, the mean
peak of the first and last five movies, per movie kind its peak range, and the
heap's steps after the fifth movie.  Peer: none (a peer's worker is not
long-lived); the figure to meet is the issue's 3 GB per worker at every movie,
not only the first few.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
from bench_chain import peak_gb, reset_peak
from compare_relion_motioncorr import rss_gb

from livestream.scheduling.allocator import keep_freed_memory, mallinfo
from livestream.scheduling.openmp import passive_openmp


def mallinfo_gb() -> dict[str, float]:
    """:func:`livestream.scheduling.allocator.mallinfo` in GB."""
    return {name: value / 1e9 for name, value in mallinfo().items()}


class CompileCounter:
    """numba compilations (``numba:compile`` events) since :meth:`take`."""

    def __init__(self) -> None:
        from numba.core import event

        self.count = 0
        counter = self

        class _Listener(event.Listener):  # type: ignore[misc]
            def on_start(self, ev: object) -> None:
                counter.count += 1

            def on_end(self, ev: object) -> None:
                pass

        event.register("numba:compile", _Listener())

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


@dataclass(frozen=True)
class Movie:
    kind: str
    path: Path
    gain: Path | None = None
    eer_group: int = 1


def find_movies(bench: Path, formats: Path) -> list[Movie]:
    """The benchmark movies present on this machine."""
    candidates = [
        Movie("global+gain", bench / "Movies" / "movie.mrc", bench / "gain.mrc"),
        Movie("local", bench / "local" / "movie_000.mrc"),
        Movie("texture mrc", formats / "movie_4096.mrc"),
        Movie("texture tiff", formats / "movie_4096.tif"),
        Movie("texture eer", formats / "movie_4096.eer", eer_group=25),
    ]
    return [m for m in candidates if m.path.is_file()]


def derived_movies(global_movie: Movie, folder: Path) -> list[Movie]:
    """Two movies cut from ``global_movie`` into ``folder``: its first 30 frames
    (with its gain) and its centre 3072² × 40 (no gain).  Run before the worker
    is set up: glibc's default malloc maps and unmaps these copies."""
    with mrcfile.mmap(global_movie.path, permissive=True) as mrc:
        data = mrc.data
        n, h, w = data.shape
        fewer = folder / f"movie_{h}x{w}x30.mrc"
        y0, x0 = (h - 3072) // 2, (w - 3072) // 2
        smaller = folder / "movie_3072x3072x40.mrc"
        with mrcfile.new(fewer) as out:
            out.set_data(np.array(data[: min(30, n)]))
        with mrcfile.new(smaller) as out:
            out.set_data(np.array(data[:, y0 : y0 + 3072, x0 : x0 + 3072]))
    return [
        Movie("global 30 fr", fewer, global_movie.gain),
        Movie("3072² no gain", smaller),
    ]


def run_one(movie: Movie, threads: int, out: str) -> dict[str, object]:
    from pipelines.motion.job import run_motion

    reset_peak()
    cpu, wall = time.process_time(), time.perf_counter()
    result = run_motion(
        movie.path,
        out,
        pixel_size_a=1.0,
        dose_per_frame_e_per_a2=1.0 / movie.eer_group,
        voltage_kv=300.0,
        gain_path=movie.gain,
        eer_group_dose_e_per_a2=1.0,
        patches=(5, 5),
        workers=threads,
    )
    return {
        "kind": movie.kind,
        "cpu": time.process_time() - cpu,
        "wall": time.perf_counter() - wall,
        "peak": peak_gb(),
        "after": rss_gb(),
        "local": result.local_rms_residual_px is not None,
        "malloc": mallinfo_gb(),
    }


def heap_jumps(
    arenas: list[float], kinds: list[str], warmup: int = 5, tolerance: float = 0.05
) -> list[str]:
    """Where the heap (``arena``, GB) grew by more than ``tolerance`` over its
    size after the previous movie, from movie ``warmup + 1`` on (the first
    movies grow it to the largest one's need): a heap kept by glibc never
    shrinks, so each such step is held for the rest of the session."""
    return [
        f"heap +{arenas[i] - arenas[i - 1]:.2f} GB at movie {i + 1} ({kinds[i]}), "
        f"{arenas[i - 1]:.2f} -> {arenas[i]:.2f} GB"
        for i in range(max(1, warmup), len(arenas))
        if arenas[i] - arenas[i - 1] > tolerance
    ]


def summarise(
    peaks: list[float], kinds: list[str], arenas: list[float] | None = None
) -> list[str]:
    """The summary lines: largest peak and where, first vs last five, per kind,
    and the heap's growth after the first five movies."""
    worst = int(np.argmax(peaks))
    head, tail = peaks[:5], peaks[-5:]
    lines = [
        (
            f"largest peak {peaks[worst]:.2f} GB at movie {worst + 1} ({kinds[worst]}); "
            f"mean of the first {len(head)} {np.mean(head):.2f} GB, "
            f"of the last {len(tail)} {np.mean(tail):.2f} GB"
        )
    ]
    for kind in dict.fromkeys(kinds):
        mine = [p for p, k in zip(peaks, kinds, strict=True) if k == kind]
        lines.append(
            f"  {kind:<13s} {len(mine):3d} movies, peak {min(mine):.2f}-{max(mine):.2f} GB"
        )
    if arenas:
        jumps = heap_jumps(arenas, kinds)
        lines.append(
            f"heap {arenas[0]:.2f} GB after movie 1, {max(arenas[:5]):.2f} after the "
            f"first five, {arenas[-1]:.2f} at the end; "
            + (f"{len(jumps)} later step(s):" if jumps else "no later step")
        )
        lines += [f"  {jump}" for jump in jumps]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bench", type=Path, default=Path("/work/motionbench"))
    parser.add_argument("--formats", type=Path, default=Path("/work/motionformats"))
    parser.add_argument(
        "--shapes", action="store_true", help="add two movies of other shapes"
    )
    args = parser.parse_args()
    movies = find_movies(args.bench, args.formats)
    if not movies:
        raise SystemExit(f"no benchmark movies in {args.bench} or {args.formats}")
    with tempfile.TemporaryDirectory() as derived:
        if args.shapes and movies[0].kind == "global+gain":
            movies += derived_movies(movies[0], Path(derived))
        soak(movies, args)


def soak(movies: list[Movie], args: argparse.Namespace) -> None:
    if not passive_openmp():
        print("passive_openmp() too late here: libgomp already loaded")
    if not keep_freed_memory():
        print("keep_freed_memory() not taken here: the default allocator")
    rng = np.random.default_rng(args.seed)
    order = [movies[i] for i in rng.integers(len(movies), size=args.movies)]
    print(f"{len(movies)} movies: " + ", ".join(m.kind for m in movies))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{'#':>3s} {'movie':<13s} {'CPU s':>6s} {'wall s':>6s} {'peak GB':>8s} "
        f"{'after GB':>8s} {'anon':>5s} {'file':>5s} {'arena':>6s} {'mapped':>6s} {'in use':>6s} {'free':>6s} "
        f"{'top':>6s} {'local':>5s} {'jit':>3s} {'load':>5s}"
    )
    peaks: list[float] = []
    kinds: list[str] = []
    arenas: list[float] = []
    compiled = CompileCounter()
    with tempfile.TemporaryDirectory() as out:
        for i, movie in enumerate(order, 1):
            r = run_one(movie, args.threads, out)
            jit = compiled.take()
            m = r["malloc"]
            assert isinstance(m, dict)
            cols = " ".join(
                f"{m.get(k, float('nan')):6.2f}"
                for k in ("arena", "hblkhd", "uordblks", "fordblks", "keepcost")
            )
            after = r["after"]
            assert isinstance(after, dict)
            print(
                f"{i:3d} {movie.kind:<13s} {r['cpu']:6.1f} {r['wall']:6.1f} "
                f"{r['peak']:8.2f} {after.get('VmRSS', 0.0):8.2f} "
                f"{after.get('RssAnon', 0.0):5.2f} {after.get('RssFile', 0.0):5.2f} {cols} {r['local']!s:>5} {jit:3d} "
                f"{os.getloadavg()[0]:5.1f}",
                flush=True,
            )
            peaks.append(float(r["peak"]))  # type: ignore[arg-type]
            kinds.append(movie.kind)
            arenas.append(m.get("arena", 0.0))
    print("\n".join(summarise(peaks, kinds, arenas)))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
