"""Throughput, latency and memory of the service itself, with stages that do nothing.

    .venv/bin/python benchmarks/bench_service.py [--small] [--exposures N]

1. Backlog: N exposures already on disk (tiny EPU XML + tiny MRC movie); the
   service discovers, settles, parses, records and runs a 2-stage noop chain on a
   local process pool.  Prints exposures per second through watcher -> ledger ->
   scheduler -> events, and the ratio to a lower bound measured in the same run:
   the same noop stages called directly in this process (no watching, no ledger,
   no pool).
2. Memory: resident set size every 10 % of the backlog; the growth per exposure
   over the second half must stay small (flat) for N = 10,000.
3. Live: exposures written one by one at a fixed rate while the service runs;
   latency from a file settling (its last write + the settle time) to the
   exposure's final event: median and 95th percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from livestream.config import ServiceConfig, load_config
from livestream.daemon import run_service
from livestream.demo.microscope import MicroscopeSettings, SimulatedMicroscope
from livestream.stages.params import NoopParams
from livestream.stages.registry import StageTask, run_stage
from livestream.telemetry.reporting import EventType, ServiceEvent

SETTLE_S = 0.05


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_config(root: Path, project: Path, *, dashboard: bool = False) -> ServiceConfig:
    """A 2-stage noop chain on ``root``'s session (also bench_dashboard.py's)."""
    return load_config(
        None,
        {
            "session": {
                "path": root / "session",
                "movie_roots": [root / "movies"],
                "settle_time_s": SETTLE_S,
                "rescan_interval_s": 3600.0,
                "polling": "false",
            },
            "project": {"path": project},
            "workers": {"n_processes": 2, "max_in_flight": 16},
            "metrics": {"enabled": False},
            "dashboard": {"enabled": dashboard, "port": 0},
            "stages": {
                "chain": ["a", "b"],
                "a": {"kind": "noop", "payload_bytes": 16},
                "b": {"kind": "noop", "payload_bytes": 16},
            },
        },
    )


def microscope(root: Path) -> SimulatedMicroscope:
    settings = MicroscopeSettings(
        size_px=8, n_frames=2, noise_only=True, write_chunks=1, chunk_pause_s=0.0
    )
    return SimulatedMicroscope(
        root / "session", root / "movies", settings, np.random.default_rng(1)
    )


def lower_bound(root: Path, n: int) -> float:
    """Exposures/s of the same noop stages called directly, without the service."""
    scope = microscope(root / "bound")
    exposures = [scope.acquire(i) for i in range(n)]
    scope.close()
    project = root / "bound-project"
    start = time.perf_counter()
    for exposure in exposures:
        for stage in ("a", "b"):
            run_stage(
                StageTask(
                    stage=stage,
                    kind="noop",
                    params=NoopParams(payload_bytes=16),
                    exposure=replace(exposure, extra={}),
                    project_path=project,
                )
            )
    return n / (time.perf_counter() - start)


async def backlog(root: Path, n: int) -> tuple[float, list[tuple[int, int]]]:
    scope = microscope(root)
    t0 = time.perf_counter()
    for index in range(n):
        scope.acquire(index, movie_first=bool(index % 2))
    scope.close()
    print(f"wrote {n} exposures in {time.perf_counter() - t0:.1f} s")
    config = make_config(root, root / "project")
    stop = asyncio.Event()
    done = 0
    samples: list[tuple[int, int]] = []
    step = max(1, n // 10)

    def listen(event: ServiceEvent) -> None:
        nonlocal done
        if event.type is EventType.EXPOSURE_DONE:
            done += 1
            if done % step == 0:
                samples.append((done, rss_bytes()))
            if done == n:
                stop.set()

    start = time.perf_counter()
    await run_service(
        config, stop=stop, listeners=(listen,), install_signal_handlers=False
    )
    return n / (time.perf_counter() - start), samples


async def live(root: Path, n: int, interval_s: float) -> list[float]:
    scope = microscope(root)
    config = make_config(root, root / "project")
    stop = asyncio.Event()
    settled_at: dict[str, float] = {}
    latencies: list[float] = []

    def listen(event: ServiceEvent) -> None:
        if event.type is EventType.EXPOSURE_DONE:
            latencies.append(time.time() - settled_at[event.exposure_id])
            if len(latencies) == n:
                stop.set()

    def acquire() -> None:
        time.sleep(1.0)
        for index in range(n):
            exposure = scope.acquire(index)
            assert exposure.movie_path is not None
            last_write = max(
                exposure.metadata_path.stat().st_mtime,
                exposure.movie_path.stat().st_mtime,
            )
            settled_at[exposure.exposure_id] = last_write + SETTLE_S
            time.sleep(interval_s)

    writer = threading.Thread(target=acquire)
    writer.start()
    await run_service(
        config, stop=stop, listeners=(listen,), install_signal_handlers=False
    )
    writer.join()
    scope.close()
    return latencies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="1,000 exposures")
    parser.add_argument("--exposures", type=int, default=None)
    args = parser.parse_args(argv)
    n = args.exposures or (1_000 if args.small else 10_000)
    root = Path(tempfile.mkdtemp(prefix="bench-service-"))
    try:
        bound = lower_bound(root, min(n, 500))
        rate, samples = asyncio.run(backlog(root / "backlog", n))
        print(
            f"backlog: {rate:.1f} exposures/s through watcher -> ledger -> scheduler -> events"
        )
        print(
            f"lower bound: the same noop stages called directly (one process, fsync-bound): {bound:.1f} exposures/s; ratio {rate / bound:.2f}"
        )
        print(
            "memory (exposures done -> RSS MiB): "
            + ", ".join(f"{d}: {r / 2**20:.1f}" for d, r in samples)
        )
        if len(samples) >= 4:
            half = samples[len(samples) // 2 - 1 :]
            slope = (half[-1][1] - half[0][1]) / max(1, half[-1][0] - half[0][0])
            print(f"memory growth over the second half: {slope:.0f} bytes/exposure")
        latencies = asyncio.run(live(root / "live", 60 if args.small else 200, 0.05))
        print(
            f"live: settle -> final event latency median {statistics.median(latencies) * 1e3:.0f} ms, "
            f"p95 {np.percentile(latencies, 95) * 1e3:.0f} ms over {len(latencies)} exposures"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
