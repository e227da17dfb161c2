"""Memory of one long-lived motion worker over many movies (a soak).

    .venv/bin/python benchmarks/soak_motion_memory.py [--movies 40] [--seed 1]
        [--threads 2] [--bench /work/motionbench] [--formats /work/motionformats]

The service's pool worker lives for a whole session and keeps freed memory
(:func:`livestream.scheduling.allocator.keep_freed_memory`: glibc neither trims
nor maps large blocks), so a heap that fragments and grows once stays grown.
This process is set up as that worker (libgomp's idle threads sleep, freed
memory kept) and calls :func:`pipelines.motion.job.run_motion` on ``--movies``
movies drawn (seeded) from the ones found: the gain-corrected global-only movie
and the movie with local motion of ``compare_relion_motioncorr.py --workdir
BENCH``, and the int8 MRC, LZW TIFF and EER (1,000 readouts grouped by 25) of
``bench_motion.py --workdir FORMATS`` — different formats, shapes of reads and
code paths in one heap, the classic source of fragmentation.

Per movie: CPU s, its own peak RSS (``VmHWM`` reset before each: Linux
``clear_refs`` 5), RSS after, and glibc's ``mallinfo2`` after (``arena``: the
main heap's size; ``hblkhd``: mapped blocks; ``uordblks`` in use; ``fordblks``
free inside the heap; ``keepcost`` trimmable top).  Summary: the largest peak and
where, the mean peak of the first and last five movies, per movie kind its peak
range.  Peer: none (a peer's worker is not long-lived); the figure to meet is the
issue's 3 GB per worker at every movie, not only the first few.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_chain import peak_gb, reset_peak
from compare_relion_motioncorr import rss_gb

from livestream.scheduling.allocator import keep_freed_memory
from livestream.scheduling.openmp import passive_openmp


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def mallinfo_gb() -> dict[str, float]:
    """glibc's ``mallinfo2()`` (main arena plus the others), in GB; empty where
    the C library has none (musl, macOS, glibc < 2.33)."""
    try:
        libc = ctypes.CDLL(None)
        function = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    function.restype = _Mallinfo2
    info = function()
    return {
        name: getattr(info, name) / 1e9
        for name in ("arena", "hblkhd", "uordblks", "fordblks", "keepcost")
    }


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
        "after": rss_gb().get("VmRSS", 0.0),
        "local": result.local_rms_residual_px is not None,
        "malloc": mallinfo_gb(),
    }


def summarise(peaks: list[float], kinds: list[str]) -> list[str]:
    """The summary lines: largest peak and where, first vs last five, per kind."""
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
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bench", type=Path, default=Path("/work/motionbench"))
    parser.add_argument("--formats", type=Path, default=Path("/work/motionformats"))
    args = parser.parse_args()
    if not passive_openmp():
        print("passive_openmp() too late here: libgomp already loaded")
    if not keep_freed_memory():
        print("keep_freed_memory() not taken here: the default allocator")
    movies = find_movies(args.bench, args.formats)
    if not movies:
        raise SystemExit(f"no benchmark movies in {args.bench} or {args.formats}")
    rng = np.random.default_rng(args.seed)
    order = [movies[i] for i in rng.integers(len(movies), size=args.movies)]
    print(f"{len(movies)} movies: " + ", ".join(m.kind for m in movies))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{'#':>3s} {'movie':<13s} {'CPU s':>6s} {'wall s':>6s} {'peak GB':>8s} "
        f"{'after GB':>8s} {'arena':>6s} {'mapped':>6s} {'in use':>6s} {'free':>6s} "
        f"{'top':>6s} {'local':>5s} {'load':>5s}"
    )
    peaks: list[float] = []
    kinds: list[str] = []
    with tempfile.TemporaryDirectory() as out:
        for i, movie in enumerate(order, 1):
            r = run_one(movie, args.threads, out)
            m = r["malloc"]
            assert isinstance(m, dict)
            cols = " ".join(
                f"{m.get(k, float('nan')):6.2f}"
                for k in ("arena", "hblkhd", "uordblks", "fordblks", "keepcost")
            )
            print(
                f"{i:3d} {movie.kind:<13s} {r['cpu']:6.1f} {r['wall']:6.1f} "
                f"{r['peak']:8.2f} {r['after']:8.2f} {cols} {r['local']!s:>5} "
                f"{os.getloadavg()[0]:5.1f}",
                flush=True,
            )
            peaks.append(float(r["peak"]))  # type: ignore[arg-type]
            kinds.append(movie.kind)
    print("\n".join(summarise(peaks, kinds)))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
