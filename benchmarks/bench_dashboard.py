"""What the dashboard costs the service: throughput and latency with the page off,
on with nobody looking, and on with two pages open in headless Chromium.

    .venv/bin/python benchmarks/bench_dashboard.py [--exposures N] [--pages 2]
    .venv/bin/python benchmarks/bench_dashboard.py --screenshot docs/images/dashboard.png

The service runs a 2-stage noop chain (as ``bench_service.py``), so the service's
own per-exposure work is all there is to slow down: every exposure fires five
events, each page refetches ``/api/v1/session``, ``/api/v1/exposures`` and
``/api/v1/class2d`` at most once a second after events and holds the event
stream open.  Exposures are written one after another by a thread, started
once the pages are open.  Printed per run: exposures/s from the first discovery
to the last exposure done, the settle -> final event latency (median, p95), and
the CPU time of the service's process (event loop, threads; not the workers nor
Chromium) per exposure.
The lower bound is the run with the dashboard off, in the same process; the ratio
is throughput with pages / throughput with the dashboard off (1.0 = free).
Chromium runs on the same machine here (on a facility it runs on another), so
its rendering competes for the CPU: the figure is pessimistic.  No peer: cryoSPARC
Live is not installed.

``--screenshot PATH`` instead runs the demo's real chain (motion, CTF, curation,
picking, extraction, online 2D with a small pool) on 512² movies and saves the
page as PNG once 2D classes are shown.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_service import SETTLE_S, make_config, microscope  # the same noop service
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from livestream.config import ServiceConfig
from livestream.daemon import ServiceHandle, run_service
from livestream.demo.command import add_args, demo_config
from livestream.demo.microscope import MicroscopeSettings, SimulatedMicroscope
from livestream.telemetry.reporting import EventType, ServiceEvent


def browser() -> Any:
    path, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if path is None or driver is None:
        raise SystemExit(
            "needs chromium and chromedriver (apt: chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = path
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1400,2400", "--disable-gpu"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def noop_config(root: Path, *, dashboard: bool) -> ServiceConfig:
    return make_config(root, root / "project", dashboard=dashboard)


async def one_run(
    root: Path, n: int, *, dashboard: bool, pages: int
) -> tuple[float, list[float], float]:
    """(exposures/s, latencies in s, CPU s of this process per exposure)."""
    scope = microscope(root)
    (root / "session").mkdir(parents=True, exist_ok=True)
    (root / "movies").mkdir(parents=True, exist_ok=True)
    config = noop_config(root, dashboard=dashboard)
    stop = asyncio.Event()
    settled_at: dict[str, float] = {}
    first: list[float] = []
    last: list[float] = []
    latencies: list[float] = []
    handles: list[ServiceHandle] = []
    drivers: list[Any] = []

    def listen(event: ServiceEvent) -> None:
        if event.type is EventType.DISCOVERED and not first:
            first.append(time.time())
        if event.type is EventType.EXPOSURE_DONE:
            latencies.append(time.time() - settled_at[event.exposure_id])
            if len(latencies) == n:
                last.append(time.time())
                stop.set()

    def acquire() -> None:
        while not handles:
            time.sleep(0.05)
        url = handles[0].dashboard_url
        if url is not None and pages:
            drivers.append(browser())
            for index in range(pages):
                if index:
                    drivers[0].switch_to.new_window("tab")
                drivers[0].get(url)
            time.sleep(2.0)  # the pages' first load and event stream
        for index in range(n):
            exposure = scope.acquire(index)
            assert exposure.movie_path is not None
            settled_at[exposure.exposure_id] = (
                max(
                    exposure.metadata_path.stat().st_mtime,
                    exposure.movie_path.stat().st_mtime,
                )
                + SETTLE_S
            )

    writer = threading.Thread(target=acquire)
    writer.start()
    cpu_start = time.process_time()
    try:
        await run_service(
            config,
            stop=stop,
            listeners=(listen,),
            on_started=handles.append,
            install_signal_handlers=False,
        )
    finally:
        writer.join()
        scope.close()
        for driver in drivers:
            driver.quit()
    cpu_s = time.process_time() - cpu_start
    return n / (last[0] - first[0]), latencies, cpu_s / n


def describe(name: str, rate: float, latencies: list[float], cpu_s: float) -> str:
    return (
        f"{name:<34} {rate:7.1f} exposures/s, latency median "
        f"{statistics.median(latencies) * 1e3:5.0f} ms, p95 "
        f"{np.percentile(latencies, 95) * 1e3:5.0f} ms, service CPU "
        f"{cpu_s * 1e3:5.1f} ms/exposure"
    )


async def screenshot(root: Path, path: Path, n: int) -> None:
    """The demo chain with a small 2D pool; the page saved once classes show."""
    parser = argparse.ArgumentParser()
    add_args(parser)
    args = parser.parse_args(
        ["--size-px", "512", "--workers", "2", "--project", str(root / "project")]
    )
    session, movies = root / "Supervisor_demo_EPU", root / "DoseFractions"
    config = demo_config(args, session, movies)
    config = config.model_copy(
        update={
            "class2d": config.class2d.model_copy(
                update={"min_pool": 30, "snapshot_every": 2}
            ),
            "dashboard": config.dashboard.model_copy(update={"port": 0}),
            "metrics": config.metrics.model_copy(update={"enabled": False}),
        }
    )
    scope = SimulatedMicroscope(
        session,
        movies,
        MicroscopeSettings(size_px=512, n_frames=16, n_particles=24),
        np.random.default_rng(args.seed),
    )
    stop = asyncio.Event()
    handles: list[ServiceHandle] = []
    done: list[str] = []
    snapshots: list[str] = []

    def listen(event: ServiceEvent) -> None:
        if event.type is EventType.EXPOSURE_DONE:
            done.append(event.exposure_id)
        if event.type is EventType.CLASS2D_SNAPSHOT:
            snapshots.append(event.detail)

    def shoot() -> None:
        while not handles:
            time.sleep(0.1)
        driver = browser()
        try:
            url = handles[0].dashboard_url
            assert url is not None
            driver.get(url)
            for index in range(n):
                scope.acquire(index)
                time.sleep(1.0)
            wait_until(lambda: len(done) >= n and len(snapshots) >= 1, 600)
            time.sleep(3.0)  # the page's refresh after the last event
            driver.save_screenshot(str(path))
            print(
                f"screenshot: {path} ({len(done)} exposures, {len(snapshots)} 2D snapshots)"
            )
        finally:
            driver.quit()
            stop.set()

    thread = threading.Thread(target=shoot)
    thread.start()
    try:
        await run_service(
            config,
            stop=stop,
            listeners=(listen,),
            on_started=handles.append,
            install_signal_handlers=False,
        )
    finally:
        thread.join()
        scope.close()


def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached in {timeout_s:.0f} s")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=300)
    parser.add_argument("--pages", type=int, default=2)
    parser.add_argument("--screenshot", type=Path, help="save the demo page here")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    try:
        if args.screenshot is not None:
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            asyncio.run(screenshot(root, args.screenshot.resolve(), 12))
            return
        n = args.exposures
        runs = [
            ("dashboard off (lower bound)", False, 0),
            ("dashboard on, no page", True, 0),
            (f"dashboard on, {args.pages} pages open", True, args.pages),
        ]
        rates = []
        for index, (name, on, pages) in enumerate(runs):
            rate, latencies, cpu_s = asyncio.run(
                one_run(root / f"run{index}", n, dashboard=on, pages=pages)
            )
            rates.append(rate)
            print(describe(name, rate, latencies, cpu_s), flush=True)
        print(
            f"ratio to the lower bound: no page {rates[1] / rates[0]:.2f}, "
            f"{args.pages} pages {rates[2] / rates[0]:.2f} (1.00 = no cost); "
            f"{n} exposures each"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
