"""Run a simulated microscope and the live service side by side.

Example::

    livestream demo                       # 20 EPU exposures, one every 10 s
    livestream demo --exposures 5 --interval-s 2 --project /tmp/demo
    livestream demo --serialem --full-size

A simulated microscope writes an EPU (or SerialEM) session into a temporary folder
while the service processes it (motion correction, CTF estimation, curation,
picking, extraction and online 2D classification; local workers, metrics on
127.0.0.1, the web page on http://127.0.0.1:8790/ (printed as ``dashboard:``),
MQTT only with --mqtt-host).  The 2D classifier starts at 100 particles
(about five exposures) with 8 classes and writes a snapshot (class averages and a
montage PNG in ``Class2D/job007/``, a ``class2d`` event) every 3 mini-batches.
Once the ranker selects classes with 200 particles behind them, their averages
become a template set and the exposures that arrive after it are picked with the
templates (the blob -> 2D -> template loop, docs/picking.md; ``--repick`` also
re-picks the earlier ones).  The particles of the selected classes feed the online
3D initial model (``InitialModel/job008/``), which starts at 300 of them with one
class in C1 at a 32 px box and prints a line (resolution, orientation coverage,
the central slices PNG) per snapshot.  It stops after the last exposure is processed or on
Ctrl-C, prints how often the class selection flipped between snapshots and the
recall and precision of the blob and the template picker on the simulator's
particle coordinates, and leaves a project folder that ``livestream status
--project DIR`` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from livestream.class2d.live import SUMMARY_NAME
from livestream.config import ConfigError, ServiceConfig, load_config
from livestream.daemon import ServiceHandle, run_service
from livestream.demo.accuracy import PickScore, score_pickers
from livestream.demo.microscope import MicroscopeSettings, SimulatedMicroscope
from livestream.stages.params import PickParams
from livestream.telemetry.reporting import EventType, ServiceEvent
from mdcatch.records import Exposure, Software

__all__ = ["add_args", "demo_config", "main"]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exposures", type=int, default=20, help="how many (20)")
    parser.add_argument(
        "--interval-s", type=float, default=10.0, help="seconds between exposures"
    )
    parser.add_argument("--project", type=Path, default=Path("demo-project"))
    parser.add_argument("--serialem", action="store_true", help="SerialEM, not EPU")
    parser.add_argument(
        "--full-size", action="store_true", help="4096x4096 movies of 40 frames"
    )
    parser.add_argument("--size-px", type=int, help="movie size (default 1024)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--metrics-port", type=int, default=9108)
    parser.add_argument(
        "--dashboard-port", type=int, default=8790, help="the web page (0: any free)"
    )
    parser.add_argument("--mqtt-host", default="", help="MQTT broker (default: off)")
    parser.add_argument("--session", type=Path, help="write the session here")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument(
        "--repick",
        action="store_true",
        help="re-pick earlier exposures with each new template set",
    )


def demo_config(args: argparse.Namespace, session: Path, movies: Path) -> ServiceConfig:
    """Embedded defaults: fast settling, local workers, motion, CTF, curation,
    blob picking and extraction."""
    overrides: dict[str, Any] = {
        "session": {
            "path": session,
            "movie_roots": [movies] if movies != session else [],
            "settle_time_s": 1.0,
            "rescan_interval_s": 5.0,
            "orphan_timeout_s": 120.0,
            "software": "serialem" if args.serialem else "epu",
        },
        "project": {"path": args.project},
        "workers": {"n_processes": args.workers, "max_in_flight": args.workers},
        "metrics": {"port": args.metrics_port},
        "dashboard": {"port": args.dashboard_port},
        "mqtt": {"host": args.mqtt_host},
        "stages": {
            "chain": ["motion", "ctf", "curate", "pick", "extract"],
            "motion": {"patches_x": 5 if args.full_size else 1},
            # the simulator's phantom is ~60-90 Å wide at 1 Å/px; at 16 e/Å² the
            # CTF of a 1024² micrograph fits to ~7-10 Å (RELION-it's 6 Å is strict)
            "curate": {"max_ctf_resolution_a": 12.0, "max_astigmatism_a": 2000.0},
            "pick": {"diameter_min_a": 50.0, "diameter_max_a": 90.0},
        },
        # small enough that live 2D classes appear within a 20-exposure demo
        "class2d": {
            "n_classes": 8,
            "min_pool": 100,
            "snapshot_every": 3,
            "n_minibatches": 30,
            "psi_step_deg": 10.0,
            "offset_range_px": 3.0,
            "seed": args.seed,
        },
        # the first 3D map within a 20-exposure demo: a small start and box
        "class3d": {
            "start_particles": 300,
            "mini_batch": 200,
            "n_minibatches": 30,
            "snapshot_every": 5,
            "snapshot_sample": 1000,
            "box_px": 32,
            "seed": args.seed,
        },
        "templates": {"repick_earlier": args.repick},
    }
    return load_config(None, overrides)


def _describe_classes(event: ServiceEvent) -> str:
    f = event.figures
    resolution = f.get("resolution_a")
    return (
        f"2D classes: mini-batch {int(f['iteration'])}, "
        f"{int(f['particles_seen'])} particles seen, "
        f"{int(f['active_classes'])} classes active, "
        f"{int(f['selected_classes'])} selected"
        + ("" if resolution is None else f", best {resolution:.1f} Å")
        + f"; montage: {event.detail}"
    )


def _describe_model(event: ServiceEvent) -> str:
    f = event.figures
    return (
        f"3D initial model: mini-batch {int(f['iteration'])}, "
        f"{int(f['particles_seen'])} of {int(f['pool_particles'])} selected "
        f"particles seen, {f['resolution_a']:.1f} Å (half-set FSC), "
        f"{f['orientation_coverage']:.0%} of directions; slices: {event.detail}"
    )


def _describe(event: ServiceEvent, index: int, total: int) -> str:
    f = event.figures
    parts = [f"[{index:>3}/{total}] {event.exposure_id}: {event.state}"]
    if "total_motion_a" in f:
        parts.append(f"motion {f['total_motion_a']:.1f} Å")
    if "defocus_a" in f:
        parts.append(f"defocus {f['defocus_a'] / 1e4:.2f} µm")
    if "fit_resolution_a" in f:
        parts.append(f"CTF fit {f['fit_resolution_a']:.1f} Å")
    if f.get("accepted") == 0.0:
        parts.append("rejected")
    elif "n_particles" in f:
        parts.append(f"{int(f['n_particles'])} particles")
    return ", ".join(parts)


class _DemoProgress:
    """The demo's listener: a line per finished exposure, per class snapshot and
    per new template set; sets ``stop`` once every exposure has finished."""

    def __init__(self, n_exposures: int, stop: asyncio.Event, class2d: Path) -> None:
        self.n_exposures = n_exposures
        self.stop = stop
        self.class2d = class2d  # the Class2D job folder
        self.finished: set[str] = set()
        self.montages: list[str] = []
        self.selections: list[tuple[list[int], list[int]]] = []  # selected, counts
        self.template_picked: dict[str, int] = {}  # exposure -> template set
        self.models: list[str] = []  # the slices PNG of each 3D snapshot
        self.started = time.monotonic()
        self.first_model_s: float | None = None  # after the start

    def __call__(self, event: ServiceEvent) -> None:
        if event.type is EventType.CLASS2D_SNAPSHOT:
            self._snapshot(event)
            return
        if event.type is EventType.CLASS3D_SNAPSHOT:
            if self.first_model_s is None:
                self.first_model_s = time.monotonic() - self.started
            self.models.append(event.detail)
            print(_describe_model(event), flush=True)
            return
        if (
            event.type is EventType.STAGE_FINISHED
            and event.state == "done"
            and "template_set" in event.figures
        ):
            self.template_picked[event.exposure_id] = int(event.figures["template_set"])
        if event.type not in (EventType.EXPOSURE_DONE, EventType.IMPORT_QUARANTINED):
            return
        if event.exposure_id in self.finished:  # re-picked with a template set
            line = _describe(event, len(self.finished), self.n_exposures)
            print(line.replace(": done", ": re-picked", 1), flush=True)
            return
        self.finished.add(event.exposure_id)
        print(_describe(event, len(self.finished), self.n_exposures), flush=True)
        if len(self.finished) >= self.n_exposures:
            self.stop.set()

    def _snapshot(self, event: ServiceEvent) -> None:
        self.montages.append(event.detail)
        print(_describe_classes(event), flush=True)
        with contextlib.suppress(OSError, ValueError, KeyError):
            body = json.loads((self.class2d / SUMMARY_NAME).read_text())
            self.selections.append((body["selected_classes"], body["class_counts"]))
        if event.figures.get("templates_published") == 1.0:
            print(
                f"template set {int(event.figures['templates_version'])} made from "
                f"2D mini-batch {int(event.figures['iteration'])}: new exposures "
                "are picked with the selected class averages",
                flush=True,
            )


def selection_flip_rate(
    selections: list[tuple[list[int], list[int]]],
) -> tuple[float, float, float]:
    """Between successive snapshots: the fraction of classes (populated in both)
    whose selected state changed, the same weighted by their particles, and the
    fraction that was selected and then rejected (a drop)."""
    flips = drops = total = flipped_particles = particles = 0
    for (before, counts_before), (after, counts) in itertools.pairwise(selections):
        both = [
            c
            for c in range(1, len(counts) + 1)
            if counts[c - 1] > 0 and c <= len(counts_before) and counts_before[c - 1]
        ]
        changed = [c for c in both if (c in before) != (c in after)]
        flips += len(changed)
        drops += sum(c in before for c in changed)
        total += len(both)
        flipped_particles += sum(counts[c - 1] for c in changed)
        particles += sum(counts[c - 1] for c in both)
    nan = float("nan")
    return (
        flips / total if total else nan,
        flipped_particles / particles if particles else nan,
        drops / total if total else nan,
    )


def _report_loop(
    progress: _DemoProgress,
    handle: ServiceHandle | None,
    config: ServiceConfig,
    acquired: dict[str, Exposure],
    truth: dict[str, np.ndarray],
) -> None:
    """The template loop's summary: flip rate, template-picked exposures, and
    both pickers scored on the simulator's coordinates."""
    by_class, by_particle, drops = selection_flip_rate(progress.selections)
    if len(progress.selections) > 1:
        print(
            f"class selection flips between {len(progress.selections)} snapshots: "
            f"{by_class:.0%} of classes ({by_particle:.0%} of their particles); "
            f"selected, then rejected: {drops:.0%}"
        )
    current = None if handle is None else handle.templates.current
    if current is None or handle is None:
        print("no template set yet (too few selected classes or particles)")
        return
    print(
        f"template set {current.version}: classes {list(current.classes)}; "
        f"{len(progress.template_picked)} exposures picked with templates"
    )
    blob = config.stages.table_of(config.templates.pick_stage)
    if not isinstance(blob, PickParams):
        return
    scores = score_pickers(
        config.ledger_path,
        config.project.path,
        acquired,
        truth,
        {"blob": blob, "templates": handle.templates.pick_params(current)},
        pick_stage=config.templates.pick_stage,
    )
    for name, score in scores.items():
        print(_describe_score(name, score))


def _describe_score(name: str, score: PickScore) -> str:
    return (
        f"{name:>9} picker on the simulated truth: recall {score.recall:.2f}, "
        f"precision {score.precision:.2f} ({score.n_matched} of {score.n_true} "
        f"particles, {score.n_picks} picks)"
    )


def _microscope(
    args: argparse.Namespace, root: Path
) -> tuple[Path, Path, SimulatedMicroscope]:
    """``(session, movies, microscope)``: the simulated microscope under ``root``."""
    software = Software.SERIALEM if args.serialem else Software.EPU
    session = root / ("Supervisor_demo_EPU" if not args.serialem else "serialem")
    movies = root / "DoseFractions" if not args.serialem else session
    size = args.size_px or (4096 if args.full_size else 1024)
    settings = MicroscopeSettings(
        software=software,
        size_px=size,
        n_frames=40 if args.full_size else 16,
        n_particles=max(5, (size // 128) ** 2),
    )
    microscope = SimulatedMicroscope(
        session, movies, settings, np.random.default_rng(args.seed)
    )
    return session, movies, microscope


def _announcer(
    args: argparse.Namespace, session: Path, movies: Path
) -> Callable[[ServiceHandle], None]:
    def announce(handle: ServiceHandle) -> None:
        address = handle.metrics_address
        print(f"session (simulated microscope): {session}")
        if movies != session:
            print(f"movies:                         {movies}")
        print(f"project (RELION job folders):   {args.project.resolve()}")
        if address is not None:
            print(
                f"metrics:                        http://{address[0]}:{address[1]}/metrics"
            )
        if handle.dashboard_url is not None:
            print(f"dashboard: {handle.dashboard_url}")
        print(
            f"{args.exposures} exposures, one every {args.interval_s:g} s; Ctrl-C stops"
        )

    return announce


async def _demo(args: argparse.Namespace) -> int:
    own_session = args.session is None
    root = (
        Path(tempfile.mkdtemp(prefix="livestream-demo-"))
        if own_session
        else args.session
    )
    session, movies, microscope = _microscope(args, root)
    try:
        config = demo_config(args, session, movies)
    except ConfigError as exc:
        print(f"livestream demo: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    progress = _DemoProgress(
        args.exposures, stop, config.project.path / config.class2d.job
    )
    started = time.monotonic()
    acquired: dict[str, Exposure] = {}
    handles: list[ServiceHandle] = []
    announce = _announcer(args, session, movies)

    def on_started(handle: ServiceHandle) -> None:
        handles.append(handle)
        announce(handle)

    async def acquire() -> None:
        for index in range(args.exposures):
            if stop.is_set():
                return
            exposure = await asyncio.to_thread(microscope.acquire, index)
            acquired[exposure.exposure_id] = exposure
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.interval_s):
                    await stop.wait()

    try:
        async with asyncio.TaskGroup() as group:
            writer = group.create_task(acquire(), name="microscope")
            code = await run_service(
                config,
                stop=stop,
                listeners=(progress,),
                on_started=on_started,
                any_port_if_busy=True,
            )
            writer.cancel()
        _report_loop(
            progress,
            handles[0] if handles else None,
            config,
            acquired,
            microscope.truth,
        )
    finally:
        microscope.close()
        if own_session:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(
        f"{len(progress.finished)} exposures in {elapsed:.0f} s; "
        f"see: livestream status --project {args.project}"
    )
    if progress.montages:
        print(f"latest 2D class montage: {progress.montages[-1]}")
    else:
        print("no 2D class snapshot yet (too few particles or mini-batches)")
    if progress.models and progress.first_model_s is not None:
        print(
            f"first 3D map after {progress.first_model_s:.0f} s; latest 3D map "
            f"slices: {progress.models[-1]}"
        )
    else:
        print(
            f"no 3D map yet (it starts at {config.class3d.start_particles} "
            "particles of the selected 2D classes)"
        )
    return code


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(_demo(args))
