"""The gold-standard refinement of the live 3D map, on request and at drain, and
the Rebalance Orientations of its particles.

The daemon wires it like this::

    refinement = refinement_for(config, index, reporter)  # None: [class3d] off
    events.add_listener(refinement.on_event)     # a waiting request, a new map
    task = group.create_task(refinement.run(), name="refine3d")
    ...                                          # SIGUSR1, `livestream refine-now`:
    refinement.wake()                            # serve the request file
    ...                                          # SIGTERM, after the 3D drain:
    await refinement.drain(task, deadline)       # [class3d] refine/rebalance_at_drain

**A request** is the file ``<project>/refine3d_request.json`` (its ``request_id``),
written by ``livestream refine-now``, which then sends SIGUSR1 to the daemon named
in ``<project>/livestream.pid``.  The task serves it at start, on SIGUSR1 and after
each 3D snapshot (a request made before the first map waits for it).

**A refinement** runs ``livestream refine3d`` in a child process
(:mod:`livestream.class3d.children`: killable, outside
the event loop and its interpreter lock) with the project as working folder, on
a frozen copy of the 2D selection (``Class2D/job007/run_selected.star``, the
particles the 3D pool follows) and the newest initial model (``initial_model.mrc``,
the largest class), resampled to the particles' box when the model's working box
is smaller, which the command low-passes to ``refine_lowpass_a`` (40 Å, RELION's
``--ini_high``).  It works in ``Refine3D/.job009.running/`` (beside the job
folder, so that the pipeline lists no job before a run finished); only a finished
run moves its files into the job folder (replacing the previous run's) and then
writes ``run_refine3d.json``, the marker: the event body, the served
``request_id`` and the ``key`` of its inputs (the model's snapshot iteration and
the selected particles' names).  So a crash or a kill leaves the previous result
whole, and a restart neither redoes a finished request (its id is in the marker)
nor refines again at drain what was refined (same key).

**At drain** (after the 3D model's checkpoint) a refinement in flight is given
until the service's drain deadline; then, with ``refine_at_drain``, the current
map is refined unless the marker's key is the current one; then, with
``rebalance_at_drain``, ``livestream rebalance`` runs on the newest refinement's
``run_data.star`` into the External job unless ``run_rebalance.json`` names that
refinement already.  A child still running at the deadline is killed, its
working folder removed and the reason logged: the drain never outlasts its
deadline, and an abandoned run is done at the next chance.  Each run ends in a
``refine3d`` event (schema ``livestream.refine3d/1``, docs/live3d.md) and the
``livestream_class3d_refine*`` metrics; a finished one has the job index rewrite
``default_pipeline.star``.

After each request the task also runs the live 3D classification when it is due
(:mod:`livestream.class3d.classification`, ``classes > 1``); at drain a
classification still running is stopped at once (abandoned: it runs again after
the next start), so that the drain's time goes to the refinement.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livestream.class3d.children import ChildJobs, work_folder
from livestream.class3d.classification import LiveClassification
from livestream.class3d.live import SELECTED_NAME
from livestream.class3d.live import SUMMARY_NAME as MODEL_SUMMARY_NAME
from livestream.config import Class3dSection, ServiceConfig
from livestream.project.job_index import JobIndex
from livestream.telemetry.reporting import EventType, Reporter, ServiceEvent
from pipelines.errors import StageInputError
from pipelines.extraction.particles_star import read_particles_star
from pipelines.io.outputs import write_star, write_text_atomic

__all__ = [
    "PID_NAME",
    "REBALANCE_SUMMARY_NAME",
    "REQUEST_NAME",
    "SCHEMA",
    "SUMMARY_NAME",
    "LiveRefinement",
    "read_request",
    "refinement_for",
    "write_request",
]

log = logging.getLogger(__name__)

SCHEMA = "livestream.refine3d/1"
REQUEST_NAME = "refine3d_request.json"  # in the project folder
PID_NAME = "livestream.pid"  # in the project folder, while the daemon runs
SUMMARY_NAME = "run_refine3d.json"  # the newest finished refinement (the marker)
REBALANCE_SUMMARY_NAME = "run_rebalance.json"  # the newest finished rebalance
INPUT_NAME = "run_input.star"  # the frozen selection a refinement read
REFERENCE_NAME = "run_reference.mrc"  # its start map at the particles' box
MODEL_MAP_NAME = "initial_model.mrc"  # the initial model's largest class
KILL_GRACE_S = 1.0  # after the deadline: a killed child is reaped, its end logged


def write_request(project: Path) -> dict[str, Any]:
    """Write ``<project>/refine3d_request.json`` (a new ``request_id``), atomically;
    return its body."""
    body = {
        "request_id": uuid.uuid4().hex,
        "requested_utc": dt.datetime.now(dt.UTC).isoformat(),
    }
    write_text_atomic(project / REQUEST_NAME, json.dumps(body))
    return body


def read_request(project: Path) -> dict[str, Any] | None:
    """The pending request, or ``None``; a file that is not one is an error
    naming it."""
    path = project / REQUEST_NAME
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise StageInputError(path, "request", None, f"not JSON: {error}") from error
    if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
        raise StageInputError(path, "request_id", None, "missing")
    return body


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        body = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def refinement_for(
    config: ServiceConfig, index: JobIndex, reporter: Reporter
) -> LiveRefinement | None:
    """The refinement of the service's 3D map; ``None`` when the initial model
    does not run (``[class3d]`` or ``[class2d]`` off, nothing extracted)."""
    if not (config.class3d.enabled and config.class2d.enabled):
        return None
    if index.particles_star is None:
        return None
    project = config.project.path
    return LiveRefinement(
        config.class3d,
        project,
        project / config.class2d.job / SELECTED_NAME,
        reporter,
        on_done=index.write_pipeline,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Inputs:
    """What one refinement reads, prepared in its working folder."""

    particles: Path  # the frozen selection
    reference: Path  # the start map at the particles' box
    key: str  # the model's iteration and the particles' names
    model_iteration: int
    n_particles: int


class _NotReady(Exception):
    """No map or no selection yet: nothing to refine."""


class LiveRefinement:
    """Refines the live map on request and at drain (see the module docstring)."""

    def __init__(
        self,
        section: Class3dSection,
        project: Path,
        selected_star: Path,
        reporter: Reporter,
        *,
        on_done: Callable[[], object] | None = None,
    ) -> None:
        self.section = section
        self.project = project
        self.selected_star = selected_star
        self.reporter = reporter
        self.on_done = on_done  # after a finished run: the pipeline lists it
        self.folder = project / section.refine_job
        self.rebalance_folder = project / section.rebalance_job
        self.model_folder = project / section.job
        self.children = ChildJobs(project)  # refinements and rebalances
        # the live 3D classification, checked after each snapshot (classes > 1);
        # its own children: at drain they are stopped at once
        self.classification = LiveClassification(
            section,
            project,
            selected_star,
            reporter,
            ChildJobs(project),
            on_done=on_done,
        )
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def n_runs(self) -> int:
        """Children started (refinements, rebalances, classifications)."""
        return self.children.n_runs + self.classification.children.n_runs

    # -- called by the daemon (in the event loop) --------------------------------
    def wake(self) -> None:
        """A request may be waiting (SIGUSR1)."""
        self._wake.set()

    def on_event(self, event: ServiceEvent) -> None:
        """A listener: a new 3D map may serve a request that waited for one."""
        if event.type is EventType.CLASS3D_SNAPSHOT:
            self._wake.set()

    async def run(self) -> None:
        """Serve requests until :meth:`drain`."""
        while not self._stopping:
            self._wake.clear()
            await self._guarded("a request", self._serve_request)
            if not self._stopping:
                await self._guarded(
                    "the classification", self.classification.run_if_due
                )
            if not self._stopping:
                await self._wake.wait()

    async def drain(self, task: asyncio.Task[None], deadline: float) -> None:
        """Let a refinement in flight finish until ``deadline`` (event-loop time),
        then refine and rebalance as ``[class3d]`` asks, within the same
        deadline (see the module docstring)."""
        self._stopping = True
        self.children.set_deadline(deadline)
        loop = asyncio.get_running_loop()
        # a classification is periodic: stopped now (it runs again after the next
        # start), the drain's time is the refinement's
        self.classification.children.set_deadline(loop.time())
        self._wake.set()
        # its child is killed at the deadline; a second more lets it say so
        grace = max(deadline - loop.time(), 0.0) + KILL_GRACE_S
        done, _ = await asyncio.wait([task], timeout=grace)
        if not done:
            task.cancel()
            await asyncio.wait([task])
        asked = self.section.refine_at_drain or self.section.rebalance_at_drain
        if asked and loop.time() >= deadline:
            log.warning(
                "refine3d: the drain time limit was reached before the refinement "
                "or rebalance at drain could start; done at the next drain"
            )
        if self.section.refine_at_drain and loop.time() < deadline:
            await self._guarded("the refinement at drain", self._refine_at_drain)
        if self.section.rebalance_at_drain and loop.time() < deadline:
            await self._guarded("the rebalance at drain", self._rebalance)

    async def _guarded(self, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """``await work()``; an error (a full disk, a bug) is logged with its
        traceback and the service goes on: never the service's task group."""
        try:
            await work()
        except Exception:
            log.exception("refine3d: %s stopped", what)

    # -- requests and drain --------------------------------------------------------
    async def _serve_request(self) -> None:
        try:
            request = read_request(self.project)
        except StageInputError as error:
            log.error("refine3d: %s; the request is ignored", error)
            (self.project / REQUEST_NAME).unlink(missing_ok=True)
            return
        if request is None:
            return
        request_id = request["request_id"]
        marker = _read_json(self.folder / SUMMARY_NAME)
        if marker is not None and marker.get("request_id") == request_id:
            log.info("refine3d: request %s was served already", request_id)
        elif not await self._refine("request", request_id):
            return  # not ready (kept) or abandoned at the deadline (kept)
        self._drop_request(request_id)

    def _drop_request(self, request_id: str) -> None:
        with contextlib.suppress(StageInputError):
            request = read_request(self.project)
            if request is not None and request["request_id"] == request_id:
                (self.project / REQUEST_NAME).unlink(missing_ok=True)

    async def _refine_at_drain(self) -> None:
        try:
            key = await asyncio.to_thread(self._current_key)
        except _NotReady as reason:
            log.info("refine3d at drain: %s; nothing to refine", reason)
            return
        marker = _read_json(self.folder / SUMMARY_NAME)
        if marker is not None and marker.get("key") == key:
            log.info(
                "refine3d at drain: %s is the refinement of this map and these "
                "particles already",
                self.section.refine_job,
            )
            return
        await self._refine("drain", None)

    # -- one refinement --------------------------------------------------------------
    async def _refine(self, trigger: str, request_id: str | None) -> bool:
        """One refinement; ``True`` when it ended (done or failed), ``False``
        when there was nothing to refine or it was abandoned."""
        work = work_folder(self.folder)
        try:
            inputs = await asyncio.to_thread(self._prepare, work)
        except _NotReady as reason:
            log.info("refine3d (%s): %s; waiting for it", trigger, reason)
            return False
        except (OSError, ValueError) as error:  # StageInputError is a ValueError
            return self._failed(trigger, request_id, str(error), 0.0)
        args = [
            "livestream.cli.refine3d",
            str(inputs.particles.relative_to(self.project)),
            "--ref",
            str(inputs.reference.relative_to(self.project)),
            "--out",
            str(work.relative_to(self.project)),
            "--sym",
            self.section.symmetry,
            "--ini-high-a",
            str(self.section.refine_lowpass_a),
            "--max-iterations",
            str(self.section.refine_max_iterations),
            "--json",
        ]
        if self.section.particle_diameter_a is not None:
            args += ["--particle-diameter-a", str(self.section.particle_diameter_a)]
        log.info(
            "refine3d (%s): %d particles against %s (model iteration %d)",
            trigger,
            inputs.n_particles,
            self.model_folder / MODEL_MAP_NAME,
            inputs.model_iteration,
        )
        started = time.perf_counter()
        outcome = await self.children.run(args, work)
        seconds = time.perf_counter() - started
        if outcome is None:
            return self._abandoned(trigger, request_id, work, seconds)
        if isinstance(outcome, str):
            return self._failed(trigger, request_id, outcome, seconds)
        payload = {
            "step": "refine",
            "status": "done",
            "trigger": trigger,
            "request_id": request_id,
            "job": self.section.refine_job,
            "key": inputs.key,
            "model_iteration": inputs.model_iteration,
            "symmetry": self.section.symmetry,
            "lowpass_a": self.section.refine_lowpass_a,
            "finished_utc": dt.datetime.now(dt.UTC).isoformat(),
            "seconds": round(seconds, 3),
            **self._result_fields(outcome),
        }
        await asyncio.to_thread(self._finish, work, self.folder, SUMMARY_NAME, payload)
        self.reporter.refine3d(payload)
        return True

    def _result_fields(self, outcome: dict[str, Any]) -> dict[str, Any]:
        """The command's summary with its paths moved from the working folder to
        the job folder."""
        fields: dict[str, Any] = {
            name: outcome[name]
            for name in (
                "resolution_a",
                "resolution_masked_a",
                "bfactor_a2",
                "iterations",
                "final_step_deg",
                "n_particles",
                "n_half1",
                "n_half2",
            )
        }
        for name in (
            "map_path",
            "half1_path",
            "half2_path",
            "postprocess_masked_path",
            "data_star",
            "model_star",
        ):
            fields[name] = str(self.folder / Path(outcome[name]).name)
        fields["fsc_png"] = str(self.folder / "run_fsc.png")
        return fields

    def _current_key(self) -> str:
        """The key of the current map and selection (:class:`_NotReady`: none)."""
        model = _read_json(self.model_folder / MODEL_SUMMARY_NAME)
        if model is None or not (self.model_folder / MODEL_MAP_NAME).is_file():
            raise _NotReady("no 3D map yet")
        if not self.selected_star.is_file():
            raise _NotReady(f"no {self.selected_star.name} yet")
        _, table = read_particles_star(self.selected_star)
        return _key(int(model["iteration"]), table["rlnImageName"].astype(str))

    def _prepare(self, work: Path) -> _Inputs:
        """A clean working folder with the frozen selection and the start map."""
        model = _read_json(self.model_folder / MODEL_SUMMARY_NAME)
        model_map = self.model_folder / MODEL_MAP_NAME
        if model is None or not model_map.is_file():
            raise _NotReady("no 3D map yet")
        if not self.selected_star.is_file():
            raise _NotReady(f"no {self.selected_star.name} yet")
        # the map helpers' packages load the 3D and 2D numerics (numba, scipy, pandas):
        # only when a run is prepared, not when the service imports this module
        from pipelines.reconstruct.mask import resample_map  # deferred: numerics
        from pipelines.reconstruct.outputs import write_map  # deferred: numerics
        from pipelines.simulate.volumes import load_map  # deferred: numerics

        shutil.rmtree(work, ignore_errors=True)  # an abandoned run's
        work.mkdir(parents=True)
        optics, table = read_particles_star(self.selected_star)
        particles = write_star(
            work / INPUT_NAME, {"optics": optics, "particles": table}
        )
        box = int(optics["rlnImageSize"].iloc[0])
        pixel_size_a = float(optics["rlnImagePixelSize"].iloc[0])
        volume, _ = load_map(model_map)
        reference = write_map(
            work / REFERENCE_NAME, resample_map(volume, box), pixel_size_a=pixel_size_a
        )
        iteration = int(model["iteration"])
        names = table["rlnImageName"].astype(str)
        return _Inputs(
            particles=particles,
            reference=reference,
            key=_key(iteration, names),
            model_iteration=iteration,
            n_particles=len(table),
        )

    def _finish(
        self, work: Path, folder: Path, marker: str, payload: dict[str, Any]
    ) -> None:
        ChildJobs.finish(work, folder, marker, payload)
        if self.on_done is not None:  # the pipeline lists the job with its files
            self.on_done()

    def _abandoned(
        self, trigger: str, request_id: str | None, work: Path, seconds: float
    ) -> bool:
        reason = "the drain time limit (workers.drain_timeout_s) was reached"
        log.warning(
            "refine3d (%s): abandoned after %.0f s: %s; the previous result stands "
            "and the run is done at the next chance",
            trigger,
            seconds,
            reason,
        )
        shutil.rmtree(work, ignore_errors=True)
        self.reporter.refine3d(
            self._ending("refine", "abandoned", trigger, request_id, reason, seconds)
        )
        return False

    def _failed(
        self, trigger: str, request_id: str | None, reason: str, seconds: float
    ) -> bool:
        log.error("refine3d (%s) failed: %s", trigger, reason)
        self.reporter.refine3d(
            self._ending("refine", "failed", trigger, request_id, reason, seconds)
        )
        return True  # a request that fails is not tried again by itself

    def _ending(
        self,
        step: str,
        status: str,
        trigger: str,
        request_id: str | None,
        reason: str,
        seconds: float,
    ) -> dict[str, Any]:
        return {
            "step": step,
            "status": status,
            "trigger": trigger,
            "request_id": request_id,
            "job": (
                self.section.rebalance_job
                if step == "rebalance"
                else self.section.refine_job
            ),
            "reason": reason,
            "seconds": round(seconds, 3),
        }

    # -- Rebalance Orientations ------------------------------------------------------------
    async def _rebalance(self) -> None:
        refined = _read_json(self.folder / SUMMARY_NAME)
        if refined is None:
            log.info("rebalance at drain: no finished refinement; nothing to do")
            return
        previous = _read_json(self.rebalance_folder / REBALANCE_SUMMARY_NAME)
        run_of = refined.get("finished_utc")
        if previous is not None and previous.get("refinement_utc") == run_of:
            log.info("rebalance at drain: this refinement was rebalanced already")
            return
        work = work_folder(self.rebalance_folder)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        data_star = str(refined["data_star"])
        started = time.perf_counter()
        outcome = await self.children.run(
            [
                "livestream.cli.rebalance",
                data_star,
                "--out",
                str(work.relative_to(self.project)),
                "--json",
            ],
            work,
        )
        seconds = time.perf_counter() - started
        if outcome is None or isinstance(outcome, str):
            status = "abandoned" if outcome is None else "failed"
            reason = outcome or "the drain time limit was reached"
            log.warning("rebalance at drain: %s: %s", status, reason)
            shutil.rmtree(work, ignore_errors=True)
            self.reporter.refine3d(
                self._ending("rebalance", status, "drain", None, reason, seconds)
            )
            return
        job = self.section.rebalance_job
        payload = {
            "step": "rebalance",
            "status": "done",
            "trigger": "drain",
            "request_id": None,
            "job": job,
            "refinement_utc": run_of,
            "particles_star": data_star,
            "n_in": outcome["n_in"],
            "n_rebalanced": outcome["n_rebalanced"],
            "n_excluded": outcome["n_excluded"],
            "threshold_count": outcome["threshold_count"],
            "rebalanced_path": str(
                self.rebalance_folder / Path(outcome["rebalanced_path"]).name
            ),
            "excluded_path": str(
                self.rebalance_folder / Path(outcome["excluded_path"]).name
            ),
            "finished_utc": dt.datetime.now(dt.UTC).isoformat(),
            "seconds": round(seconds, 3),
        }
        await asyncio.to_thread(
            self._finish, work, self.rebalance_folder, REBALANCE_SUMMARY_NAME, payload
        )
        self.reporter.refine3d(payload)


def _key(model_iteration: int, names: Any) -> str:
    """The model's iteration and a digest of the particles' image names."""
    digest = hashlib.sha1("\n".join(sorted(names)).encode()).hexdigest()[:16]
    return f"{model_iteration}:{len(names)}:{digest}"
