"""How stable the online 2D class selection is as the pool grows.

    .venv/bin/python benchmarks/bench_class2d_selection.py [--seeds 31 32 33]

A simulated session with junk (300 particles of 3 views of a phantom and 120 junk
boxes: empty, ice, carbon edges, aggregates, arriving mixed in 8 batches; K = 8)
is fed to the online actor, which runs up to 4 mini-batches and a snapshot after
each batch (the session of ``tests/livestream/class2d/test_selection_stability.py``).
Printed per seed and as means: the particle flip rate (particles of the earlier
pool whose selected state changed between two snapshots), its maximum, the drop
rate (selected, then rejected), classes selected under the minimum support, junk
kept and particles lost at the end, the class flip rate (classes populated in
both snapshots whose selected state changed, as ``livestream demo`` prints it for
the live demo), and the wall time.  No peer: RELION's ranker is not run online.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.livestream.class2d.test_selection_stability import _follow_selection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[31, 32, 33])
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            result = _follow_selection(Path(folder), seed)
            result["seconds"] = time.perf_counter() - started
        results.append(result)
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()))
    mean = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
    print("mean:    " + ", ".join(f"{k} {v:.4g}" for k, v in mean.items()))


if __name__ == "__main__":
    main()
