"""The warm worker of ``compare_relion_motioncorr.py`` on one movie only: the
bound, ``--runs`` calls of ``run_motion`` in one fresh process, the bound again,
CPU s per phase (unless ``--no-profile``).  The same function as that
benchmark's warm mode (``warm_worker``, with its defaults: glibc keeping freed
memory and, where that benchmark sets it, OpenMP's passive wait), without its
CLI runs and its second movie: for alternating before/after runs of one path
(e.g. the local-motion movie).

    .venv/bin/python benchmarks/warm_local_motion.py \\
        [--movie /work/motionbench/local/movie_000.mrc] [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_motion import in_process
from compare_relion_motioncorr import print_warm, warm_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--movie", type=Path, default=Path("/work/motionbench/local/movie_000.mrc")
    )
    parser.add_argument("--gain", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    value = in_process(
        warm_worker,
        args.movie,
        args.gain,
        args.threads,
        args.runs,
        not args.no_profile,
        True,  # keep_freed_memory, as the service's pool worker
    )
    print_warm(f"{args.movie.name} (malloc keeping freed memory)", value, None)


if __name__ == "__main__":
    main()
