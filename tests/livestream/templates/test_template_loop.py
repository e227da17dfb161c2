"""The blob -> 2D -> template loop in a real service on a small simulated session:
a template set made from a class2d event body, new exposures picked with it, the
earlier ones re-picked on SIGHUP (a real service process, SIGKILLed during the
re-pick, then restarted), and particles.star and the particle pool exactly once
throughout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from prometheus_client.parser import text_string_to_metric_families

from livestream.class2d.pool import ParticlePool
from livestream.config import ServiceConfig
from livestream.daemon import ServiceHandle, run_service
from livestream.demo.microscope import MicroscopeSettings, SimulatedMicroscope
from livestream.templates.live import choose_classes
from pipelines.io.outputs import write_mrc
from tests.livestream.service_fixtures import (
    service_config,
    start_service,
    wait_for,
    write_config_file,
)

pytestmark = pytest.mark.slow

POOL_STAR = "Extract/job006/particles.star"


def _config(root: Path, *, metrics: bool = False, **templates: Any) -> ServiceConfig:
    return service_config(
        root / "session",
        root / "movies",
        root / "project",
        metrics={"enabled": metrics, "port": 0},
        workers={"n_processes": 1, "max_in_flight": 2, "max_attempts": 1},
        stages={
            "chain": ["motion", "ctf", "curate", "pick", "extract"],
            "motion": {"patches_x": 1},
            # accept every exposure: this test is about picking
            "curate": {"max_ctf_resolution_a": 50.0, "max_astigmatism_a": 5000.0},
            "pick": {"diameter_min_a": 50.0, "diameter_max_a": 90.0},
        },
        class2d={"enabled": False},
        templates={"min_particles": 2, **templates},
    )


def _sql(project: Path, query: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(project / "livestream.sqlite", timeout=5) as db:
        return db.execute(query, args).fetchall()


def _n_done(project: Path) -> int:
    if not (project / "livestream.sqlite").exists():
        return 0
    try:
        rows = _sql(project, "SELECT count(*) FROM exposures WHERE done_unix_s > 0")
    except sqlite3.OperationalError:
        return 0
    return int(rows[0][0])


def _picks(project: Path) -> dict[str, dict[str, float]]:
    rows = _sql(project, "SELECT exposure_id, figures FROM stages WHERE stage='pick'")
    return {eid: json.loads(f) for eid, f in rows}


async def _serve(
    config: ServiceConfig,
    until: Callable[[], bool],
    during: Callable[[ServiceHandle], Any] | None = None,
    timeout_s: float = 240.0,
) -> None:
    """Run the service in-process; ``during(handle)`` once started; stop when
    ``until()`` holds."""
    stop = asyncio.Event()
    handles: list[ServiceHandle] = []
    service = asyncio.create_task(
        run_service(
            config,
            stop=stop,
            on_started=handles.append,
            install_signal_handlers=False,
        )
    )
    try:
        async with asyncio.timeout(timeout_s):
            while not handles:
                await asyncio.sleep(0.05)
            if during is not None:
                await during(handles[0])
            while not until():
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        assert await service == 0


def _templates_gauge(handle: ServiceHandle, name: str = "version") -> float:
    """``livestream_templates_<name>`` from a real scrape of ``/metrics``."""
    assert handle.metrics_address is not None
    host, port = handle.metrics_address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"livestream_templates_{name}":
                return float(sample.value)
    raise AssertionError(f"livestream_templates_{name} not exported")


def _class_averages(project: Path, target: Path) -> dict[str, Any]:
    """Two 'class averages' (even and odd particles of the pool, averaged) and
    the class2d event body that selects them."""
    _, particles = _read_pool(project)
    images = []
    for name in particles["rlnImageName"]:
        number, stack = name.split("@")
        with mrcfile.mmap(project / stack, mode="r") as mrc:
            images.append(np.asarray(mrc.data[int(number) - 1], dtype=np.float32))
            pixel_size_a = float(mrc.voxel_size.x)
    stack = np.stack(images)
    averages = np.stack([stack[0::2].mean(axis=0), stack[1::2].mean(axis=0)])
    write_mrc(target, averages, pixel_size_a=pixel_size_a, float16=False)
    n = len(stack)
    return {
        "iteration": 12,
        "selected_classes": [1, 2],
        "class_counts": [(n + 1) // 2, n // 2],
        "selected_particles": n,
        "classes_mrcs": str(target),
    }


def _read_pool(project: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    blocks = starfile.read(project / POOL_STAR, always_dict=True)
    return blocks["optics"], blocks["particles"]


def _extracted(project: Path) -> dict[str, int]:
    """Micrograph name -> particles the ledger's extract rows say it has."""
    rows = _sql(
        project,
        "SELECT m.outputs, e.figures FROM stages e JOIN stages m ON"
        " m.exposure_id = e.exposure_id AND m.stage = 'motion'"
        " WHERE e.stage = 'extract' AND e.state = 'done'",
    )
    return {
        json.loads(m)["micrograph"]: int(json.loads(f)["n_particles"]) for m, f in rows
    }


def test_choose_classes_needs_support_and_keeps_the_most_populated() -> None:
    section = _config(Path("/tmp/x")).templates.model_copy(
        update={"min_selected_classes": 2, "min_particles": 50, "max_templates": 2}
    )
    body = {"selected_classes": [2, 5, 7], "class_counts": [0, 30, 0, 0, 10, 0, 40]}
    assert choose_classes(body, section) == ((7, 2), 80)
    assert choose_classes({**body, "selected_classes": [7]}, section) is None
    assert choose_classes({**body, "selected_particles": 49}, section) is None


async def test_template_loop_picks_new_and_repicks_earlier_exactly_once(  # noqa: PLR0915 (a scripted session)
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    microscope = SimulatedMicroscope(
        tmp_path / "session",
        tmp_path / "movies",
        MicroscopeSettings(size_px=512, n_frames=12, n_particles=10, write_chunks=1),
        np.random.default_rng(5),
    )
    try:
        for index in range(3):
            microscope.acquire(index)
        # 1. blob picking
        await _serve(_config(tmp_path), lambda: _n_done(project) == 3)
        blob_optics, blob_pool = _read_pool(project)
        assert len(blob_pool) > 0
        assert all("template_set" not in f for f in _picks(project).values())
        old_star = tmp_path / "blob_particles.star"
        starfile.write({"optics": blob_optics, "particles": blob_pool}, old_star)
        pool = ParticlePool(project)
        assert pool.feed(old_star) == len(blob_pool)
        body = _class_averages(project, tmp_path / "classes.mrcs")

        # 2. the class2d event makes template set 1; a new exposure uses it
        async def publish(handle: ServiceHandle) -> None:
            field = await handle.templates.after_snapshot(body)
            assert field is not None
            assert field["version"] == 1
            assert field["published"]
            assert field["classes"] == [1, 2]
            assert _templates_gauge(handle) == 1.0
            again = await handle.templates.after_snapshot(body)
            assert again is not None
            assert not again["published"]  # the same classes: no new set
            other = {**body, "selected_classes": [2]}  # one snapshot of a flip
            flipped = await handle.templates.after_snapshot(
                {**other, "class_counts": [0, body["selected_particles"]]}
            )
            assert flipped is not None
            assert (flipped["version"], flipped["published"]) == (1, False)
            await asyncio.to_thread(microscope.acquire, 3)

        await _serve(
            _config(tmp_path, metrics=True), lambda: _n_done(project) == 4, publish
        )
        picks = _picks(project)
        template_picked = [e for e, f in picks.items() if f.get("template_set") == 1]
        assert len(template_picked) == 1  # the new one; earlier ones not re-picked
        stored = _sql(project, "SELECT version, iteration, path FROM template_sets")
        assert stored == [(1, 12, "AutoPick/job005/templates/templates_v001.mrcs")]
        with mrcfile.open(project / stored[0][2]) as mrc:
            assert mrc.data.shape[0] == 2

        # 3. a real service process; repick_earlier set in its file and SIGHUP
        # re-pick the earlier three; SIGKILL mid-way
        config_file = write_config_file(tmp_path / "live.toml", _config(tmp_path))
        log = tmp_path / "service.log"
        process = start_service(config_file, log)

        def n_pick_attempts() -> int:
            rows = _sql(project, "SELECT count(*) FROM attempts WHERE stage = 'pick'")
            return int(rows[0][0])

        try:
            wait_for(lambda: "service ready" in log.read_text(), 120, "the service")
            await asyncio.sleep(2.0)
            assert n_pick_attempts() == 4  # without repick_earlier: nothing re-picked
            config = _config(tmp_path, repick_earlier=True)
            write_config_file(config_file, config)
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: n_pick_attempts() > 4, 120, "a re-pick attempt")
            os.killpg(process.pid, signal.SIGKILL)
        finally:
            process.wait()
        assert _n_done(project) < 4  # killed during the re-pick

        # 4. restart: the re-pick finishes, exactly once
        def all_repicked() -> bool:
            figures = _picks(project).values()
            return _n_done(project) == 4 and all(
                f.get("template_set") == 1 for f in figures
            )

        await _serve(config, all_repicked)
    finally:
        microscope.close()

    # motion and CTF ran once per exposure; pick twice for the three earlier
    for stage, expected in (("motion", 1), ("ctf", 1)):
        done = _sql(
            project,
            "SELECT exposure_id, count(*) FROM attempts WHERE stage = ?"
            " AND outcome = 'done' GROUP BY exposure_id",
            stage,
        )
        assert sorted(n for _, n in done) == [expected] * 4
    pick_done = _sql(
        project,
        "SELECT count(*) FROM attempts WHERE stage = 'pick' AND outcome = 'done'",
    )
    assert pick_done[0][0] >= 7  # 4 + 3 re-picks (one may have been cut short)

    _, new_pool = _read_pool(project)
    assert new_pool["rlnImageName"].is_unique
    stacks = {name.split("@")[1] for name in new_pool["rlnImageName"]}
    assert all(stack.endswith("_tpl1.mrcs") for stack in stacks)
    per_micrograph = new_pool.groupby("rlnMicrographName").size().to_dict()
    assert per_micrograph == {m: n for m, n in _extracted(project).items() if n}
    coordinates = new_pool[["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"]]
    assert not coordinates.duplicated().any()

    # the classifier's pool: the blob particles are retired, the new ones added
    added = pool.feed(project / POOL_STAR)
    assert added == len(new_pool)
    assert pool.n_retired_last == len(blob_pool)
    assert pool.n_active == len(new_pool)
    assert all(s.endswith("_tpl1.mrcs") for s in pool.stacks[pool.active_rows()])
    assert pool.feed(project / POOL_STAR) == 0  # fed again: nothing changes
    assert pool.n_active == len(new_pool)


async def test_guard_keeps_the_blob_picker_when_the_templates_pick_nothing(
    tmp_path: Path,
) -> None:
    """A set whose templates pick nothing on the last exposures (a threshold no
    NCC reaches) is not used: no set is stored, the next exposure is blob-picked,
    and the trial changes no ledger row and no particle."""
    project = tmp_path / "project"
    microscope = SimulatedMicroscope(
        tmp_path / "session",
        tmp_path / "movies",
        MicroscopeSettings(size_px=512, n_frames=12, n_particles=10, write_chunks=1),
        np.random.default_rng(7),
    )
    try:
        for index in range(2):
            microscope.acquire(index)
        await _serve(_config(tmp_path), lambda: _n_done(project) == 2)
        blob_picks = _picks(project)
        blob_extracted = _extracted(project)
        n_blob = sum(int(f["n_picks"]) for f in blob_picks.values())
        assert n_blob > 0
        body = _class_averages(project, tmp_path / "classes.mrcs")

        async def publish(handle: ServiceHandle) -> None:
            field = await handle.templates.after_snapshot(body)
            assert field is not None
            assert (field["version"], field["published"]) == (0, False)
            guard = dict(field["guard"])
            # the blob picks at or above each exposure's median
            assert n_blob / 2 <= guard.pop("blob_better_half") <= n_blob
            assert guard == {
                "exposures": 2,
                "blob_picks": n_blob,  # the trial re-ran the stage's blob picker
                "template_picks": 0,
                "ratio": 0.0,
                "min_pick_ratio": 0.5,
                "blob_recovered": 0.0,
                "min_blob_recovered": 0.85,
                "accepted": False,
            }
            assert handle.templates.current is None
            assert _templates_gauge(handle) == 0.0
            assert _templates_gauge(handle, "rejected_total") == 1.0
            await asyncio.to_thread(microscope.acquire, 2)

        config = _config(tmp_path, metrics=True, threshold_sd=1000.0)
        await _serve(config, lambda: _n_done(project) == 3, publish)
    finally:
        microscope.close()

    assert _sql(project, "SELECT count(*) FROM template_sets") == [(0,)]
    templates = project / "AutoPick/job005/templates"
    assert sorted(p.name for p in templates.iterdir()) == ["candidate_it000012.mrcs"]
    picks = _picks(project)
    assert len(picks) == 3
    assert all("template_set" not in f for f in picks.values())  # blob, the new too
    assert {e: picks[e] for e in blob_picks} == blob_picks  # the trial wrote nothing
    attempts = _sql(
        project, "SELECT count(*) FROM attempts WHERE stage IN ('pick', 'extract')"
    )
    assert attempts == [(6,)]  # pick and extract once per exposure
    extracted = _extracted(project)
    assert {m: extracted[m] for m in blob_extracted} == blob_extracted
    _, pool = _read_pool(project)
    assert pool["rlnImageName"].is_unique
    per_micrograph = pool.groupby("rlnMicrographName").size().to_dict()
    assert per_micrograph == {m: n for m, n in extracted.items() if n}
