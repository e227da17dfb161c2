"""The service: start-up, reconciliation, the main loop, shutdown.

Start-up opens the ledger, reconciles it with the project folder, starts metrics,
MQTT and the executor, and tells systemd READY.  The main loop is a named
:class:`asyncio.TaskGroup` of the watcher, the scheduler, the MQTT feed of
events and the periodic summary (systemd STATUS and WATCHDOG); the web page
(:mod:`livestream.dashboard`, ``[dashboard]``) is served in the same loop and closed
after the drain.  SIGTERM or SIGINT set
the ``stop`` event: the watcher stops taking work, in-flight stages get
``workers.drain_timeout_s`` to finish, the rest are cancelled and put back to
``pending`` (checkpoint), the online 2D classifier (:mod:`livestream.class2d.live`,
when ``[class2d]`` is enabled and the chain extracts particles) and the online 3D
initial model (:mod:`livestream.class3d.live`, ``[class3d]``, fed the 2D selection)
finish their mini-batch and checkpoint, and the function returns 0.  A second signal exits at
once with :data:`EXIT_FORCED` (reconciliation cleans up on the next start).
SIGHUP sets the ``reload`` event: the config file is read again and changed
curation thresholds re-evaluate every past exposure
(:mod:`livestream.curation.reload`), and ``[templates]`` applies at once (with
``repick_earlier``, earlier exposures are re-picked with the current template set,
:mod:`livestream.templates.live`).  SIGUSR1 sets the ``refine`` event: a request
written by ``livestream refine-now`` (which sends it, finding the daemon in
``<project>/livestream.pid``) runs a gold-standard refinement of the current 3D map
(:mod:`livestream.class3d.refinement`); at drain, after the 3D model's
checkpoint, ``[class3d] refine_at_drain`` / ``rebalance_at_drain`` run within the
same drain deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from livestream.class2d.live import Class2dLive, class2d_for, drain_class2d
from livestream.class3d.live import Class3dLive, class3d_for, drain_class3d
from livestream.class3d.refinement import PID_NAME, LiveRefinement, refinement_for
from livestream.config import ServiceConfig
from livestream.curation.reload import CurationReload
from livestream.dashboard.server import DashboardServer, DashboardSources
from livestream.intake.pairing import Intake, session_folders
from livestream.intake.watcher import SessionWatcher
from livestream.ledger.reconcile import ReconcileReport, reconcile_ledger
from livestream.ledger.store import Ledger
from livestream.ledger.summary import LedgerSummary, summarize_ledger
from livestream.project.job_index import JobIndex, index_targets
from livestream.project.movies import link_movies
from livestream.project.pipeline_jobs import pipeline_for
from livestream.scheduling.executors import DaskExecutor, LocalExecutor, create_executor
from livestream.scheduling.pause import PauseGate, watch_project_disk
from livestream.scheduling.scheduler import Scheduler, SchedulerSettings
from livestream.stages.registry import Chain, build_chain
from livestream.telemetry.broadcast import Broadcaster, Listener, open_publisher
from livestream.telemetry.recorder import MetricsRecorder
from livestream.telemetry.reporting import Reporter
from livestream.telemetry.systemd_notify import Notifier
from livestream.templates.live import TemplateFeed
from pipelines.io.outputs import write_text_atomic

__all__ = ["EXIT_FORCED", "ServiceHandle", "run_service"]

log = logging.getLogger(__name__)

EXIT_FORCED = 130
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
SUMMARY_INTERVAL_S = 5.0


@dataclass(slots=True)
class ServiceHandle:
    """What a caller embedding the service (demo, tests) can look at."""

    reporter: Reporter
    reconcile: ReconcileReport
    scheduler: Scheduler
    watcher: SessionWatcher
    index: JobIndex
    curation: CurationReload
    templates: TemplateFeed
    class2d: Class2dLive | None = None  # None: disabled or no extraction stage
    class3d: Class3dLive | None = None  # None: disabled, or no 2D classes
    refinement: LiveRefinement | None = None  # None: as class3d
    metrics_address: tuple[str, int] | None = None  # None: metrics off
    dashboard_url: str | None = None  # None: dashboard off


@dataclass(frozen=True, slots=True)
class _Telemetry:
    """The sinks the daemon holds, and the front the service core reports to."""

    reporter: Reporter
    events: Broadcaster
    notifier: Notifier
    recorder: MetricsRecorder | None


def _summary_text(summary: LedgerSummary, depth: int, in_flight: int) -> str:
    """The systemd STATUS line (also the MQTT status ``summary``)."""
    return (
        f"{summary.n_done}/{summary.n_exposures} exposures done, "
        f"{in_flight} running, {depth} queued, "
        f"{summary.exposures_per_hour:.0f}/h"
    )


def _force_exit() -> None:
    os._exit(EXIT_FORCED)


async def run_service(
    config: ServiceConfig,
    *,
    stop: asyncio.Event | None = None,
    reload: asyncio.Event | None = None,
    refine: asyncio.Event | None = None,
    listeners: tuple[Listener, ...] = (),
    on_started: Callable[[ServiceHandle], None] | None = None,
    install_signal_handlers: bool = True,
    any_port_if_busy: bool = False,
    retry_quarantined: bool = False,
    force_exit: Callable[[], None] = _force_exit,
) -> int:
    """Run until ``stop`` is set (or a signal arrives); return the exit status.

    ``retry_quarantined`` gives quarantined stages a fresh set of attempts
    (imports are always re-checked: a fixed file is picked up again).  Setting
    ``reload`` (SIGHUP does) re-reads the config file and applies changed curation
    thresholds to every past exposure.  Setting ``refine`` (SIGUSR1 does) serves
    a refinement request (``livestream refine-now``).  With the signal handlers
    the daemon's process id is in ``<project>/livestream.pid`` while it runs.
    """
    stop = stop if stop is not None else asyncio.Event()
    reload = reload if reload is not None else asyncio.Event()
    refine = refine if refine is not None else asyncio.Event()
    project = config.project.path
    project.mkdir(parents=True, exist_ok=True)
    chain = build_chain(config.stages)
    ledger = Ledger(config.ledger_path)
    report = reconcile_ledger(ledger, project, retry_quarantined=retry_quarantined)
    log.info("reconciled ledger: %s", report)
    recorder: MetricsRecorder | None = None
    executor: LocalExecutor | DaskExecutor | None = None
    loop = asyncio.get_running_loop()
    if install_signal_handlers:

        def on_signal() -> None:
            if stop.is_set():
                force_exit()
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        loop.add_signal_handler(signal.SIGUSR1, refine.set)
        _write_pid_file(project)
    try:
        if config.metrics.enabled:
            recorder = MetricsRecorder.serve(
                config.metrics, any_port_if_busy=any_port_if_busy
            )
            recorder.declare_stages(["import", *chain.names])
        notifier = Notifier.from_env()
        executor = await create_executor(
            config.workers.n_processes,
            config.workers.start_method,
            config.workers.dask_scheduler_address,
            config.workers.slurm,
            keep_freed_memory=config.workers.keep_freed_memory,
        )
        async with (
            open_publisher(
                config.mqtt,
                config.session.path.name or "session",
                metrics=None if recorder is None else recorder.metrics,
                store=ledger,  # events survive a kill (only with an [mqtt] host)
            ) as publisher,
            contextlib.AsyncExitStack() as servers,  # the dashboard, when on
        ):
            events = Broadcaster(publisher, listeners=listeners)
            reporter = Reporter(events, metrics=recorder, notifier=notifier)
            await _serve(
                config,
                ledger,
                _Telemetry(reporter, events, notifier, recorder),
                executor,
                chain,
                report,
                (stop, reload, refine),
                on_started,
                (servers, any_port_if_busy),
            )
    finally:
        if install_signal_handlers:
            for signum in _SIGNALS:
                loop.remove_signal_handler(signum)
            (project / PID_NAME).unlink(missing_ok=True)
        if executor is not None:  # a no-op after a clean drain
            await executor.close(cancel=True)
        if recorder is not None:
            recorder.close()
        ledger.close()
    return 0


async def _serve(
    config: ServiceConfig,
    ledger: Ledger,
    telemetry: _Telemetry,
    executor: LocalExecutor | DaskExecutor,
    chain: Chain,
    report: ReconcileReport,
    events: tuple[asyncio.Event, asyncio.Event, asyncio.Event],
    on_started: Callable[[ServiceHandle], None] | None,
    servers: tuple[contextlib.AsyncExitStack, bool],
) -> None:
    stop, reload, refine = events
    reporter, notifier = telemetry.reporter, telemetry.notifier
    recorder = telemetry.recorder
    workers = config.workers
    # Two collaborations go both ways: a closure, passed at construction, names
    # the partner built just after (neither runs before the task group starts).
    gate = PauseGate()  # closed while the project disk is full
    scheduler = Scheduler(
        ledger,
        chain,
        executor,
        reporter,
        SchedulerSettings(
            project_path=config.project.path,
            max_in_flight=workers.max_in_flight,
            max_attempts=workers.max_attempts,
            retry_backoff_s=workers.retry_backoff_s,
            newest_share=workers.newest_share,
        ),
        # a curate result whose thresholds changed while it ran is decided again
        recurate=lambda exposure_id, stage: curation.recurate(exposure_id, stage),
        gate=gate,
    )
    intake = Intake(
        ledger,
        chain=chain.names,
        offer=scheduler.offer,
        reporter=reporter,
        orphan_timeout_s=config.session.orphan_timeout_s,
        path_map=config.session.path_map,
        # an mdoc names its movie, possibly outside the watched folders
        expect_movie=lambda path: watcher.expect_movie(path),
        folders=session_folders(config.session),
        gate=gate,
    )
    watcher = SessionWatcher(
        config.session,
        intake.on_settled,
        on_rescan=intake.quarantine_orphans,
        on_unreadable=intake.on_unreadable,
    )
    disk_watch = watch_project_disk(
        gate, config.project, None if recorder is None else recorder.metrics
    )
    reporter.set_workers(executor.n_workers())
    # the project reaches the movies as RELION's does: through a link inside it
    await asyncio.to_thread(link_movies, config.project.path, config.session.path)
    index = JobIndex(
        ledger.path,
        config.project.path,
        index_targets(chain),
        min_interval_s=config.project.index_interval_s,
        pipeline=pipeline_for(config, chain, sys.argv),
    )
    await asyncio.to_thread(index.write_logged)  # right after a restart, too
    telemetry.events.add_listener(index.on_event)
    curation = CurationReload(config, ledger, chain, scheduler, reporter, index)
    curation.publish_counts()
    telemetry.events.add_listener(curation.on_event)
    templates = TemplateFeed(
        config, ledger, chain, scheduler, reporter, index, curation.reread
    )
    await templates.start()  # the stored set picks again after a restart
    class2d = class2d_for(
        config, index, reporter, after_snapshot=templates.after_snapshot
    )
    class3d = class3d_for(config, index, reporter)
    refinement = refinement_for(config, index, reporter)
    if refinement is not None:
        telemetry.events.add_listener(refinement.on_event)  # each 3D snapshot
    if class3d is not None:
        telemetry.events.add_listener(class3d.on_event)  # each 2D snapshot
        if recorder is not None:
            recorder.metrics.class3d.start_particles(config.class3d.start_particles)
    dashboard = await _start_dashboard(
        config, telemetry, scheduler, curation, stop, servers
    )
    handle = ServiceHandle(
        reporter,
        report,
        scheduler,
        watcher,
        index,
        curation,
        templates,
        class2d,
        class3d,
        refinement,
        metrics_address=recorder.address if recorder is not None else None,
        dashboard_url=None if dashboard is None else dashboard.url,
    )
    if on_started is not None:
        on_started(handle)

    summaries = _Summaries(ledger, scheduler, gate, reporter, config.project.path)
    reloads = (asyncio.Event(), asyncio.Event())  # curation, templates

    async with asyncio.TaskGroup() as group:
        scheduling = group.create_task(scheduler.run(), name="scheduler")
        background = [
            group.create_task(watcher.run(), name="watcher"),
            group.create_task(telemetry.events.run(), name="events"),
            group.create_task(summaries.run(notifier), name="summary"),
            group.create_task(index.run(), name="job-index"),
            group.create_task(curation.run(reloads[0]), name="curation-reload"),
            group.create_task(templates.run(reloads[1]), name="templates-reload"),
            group.create_task(_fan_out(reload, reloads), name="reload"),
            group.create_task(disk_watch.run(), name="disk-watch"),
        ]
        classifying = (
            None
            if class2d is None
            else group.create_task(class2d.run(), name="class2d")
        )
        modelling = (
            None
            if class3d is None
            else group.create_task(class3d.run(), name="class3d")
        )
        refining = _start_refinement(group, refinement, refine, background)
        notifier.ready()
        log.info("service ready: %s -> %s", config.session.path, config.project.path)
        await stop.wait()
        # -- shutdown: stop taking work, drain with a time limit, checkpoint ------
        drain_deadline = asyncio.get_running_loop().time() + workers.drain_timeout_s
        notifier.stopping()
        if class2d is not None:
            class2d.request_stop()  # its mini-batch ends while stages drain
        if class3d is not None:
            class3d.request_stop()
        background[0].cancel()
        summaries.publish("draining")
        scheduler.stop_taking_work()
        await _drain_stages(scheduling, scheduler, executor, workers.drain_timeout_s)
        await _drain_actors(
            drain_deadline, classifying, modelling, (refinement, refining)
        )
        await asyncio.to_thread(index.finish)  # always, at shutdown: jobs Succeeded
        summaries.publish("stopped")
        await telemetry.events.flush()
        for task in background:
            task.cancel()
    with contextlib.suppress(ValueError):
        reporter.set_queue(0, 0)


def _start_refinement(
    group: asyncio.TaskGroup,
    refinement: LiveRefinement | None,
    refine: asyncio.Event,
    background: list[asyncio.Task[None]],
) -> asyncio.Task[None] | None:
    """The refinement's task; its request forwarder joins ``background``."""
    if refinement is None:
        return None
    forward = _forward(refine, refinement.wake)
    background.append(group.create_task(forward, name="refine-requests"))
    return group.create_task(refinement.run(), name="refine3d")


async def _drain_actors(
    deadline: float,
    classifying: asyncio.Task[None] | None,
    modelling: asyncio.Task[None] | None,
    refining: tuple[LiveRefinement | None, asyncio.Task[None] | None],
) -> None:
    """The 2D and 3D actors' last mini-batch and checkpoint, then the refinement
    and rebalance at drain when asked, all by ``deadline`` (event-loop time)."""
    if classifying is not None:
        await drain_class2d(classifying, deadline)
    if modelling is not None:
        await drain_class3d(modelling, deadline)
    refinement, task = refining
    if refinement is not None and task is not None:
        await refinement.drain(task, deadline)


async def _forward(source: asyncio.Event, call: Callable[[], None]) -> None:
    """Call ``call`` each time ``source`` is set (SIGUSR1)."""
    while True:
        await source.wait()
        source.clear()
        call()


def _write_pid_file(project: Path) -> None:
    """``<project>/livestream.pid``: where ``livestream refine-now`` finds the
    daemon to signal."""
    try:
        write_text_atomic(project / PID_NAME, f"{os.getpid()}\n")
    except OSError as error:  # the service runs on; refine-now cannot signal it
        log.warning("cannot write %s: %s", project / PID_NAME, error)


async def _fan_out(source: asyncio.Event, targets: tuple[asyncio.Event, ...]) -> None:
    """Set every one of ``targets`` each time ``source`` is set (SIGHUP)."""
    while True:
        await source.wait()
        source.clear()
        for target in targets:
            target.set()


async def _start_dashboard(
    config: ServiceConfig,
    telemetry: _Telemetry,
    scheduler: Scheduler,
    curation: CurationReload,
    stop: asyncio.Event,
    servers: tuple[contextlib.AsyncExitStack, bool],
) -> DashboardServer | None:
    """The web page (docs/dashboard.md), closed by ``servers`` after the drain."""
    if not config.dashboard.enabled:
        return None
    stack, any_port_if_busy = servers
    dashboard = await DashboardServer.start(
        config,
        DashboardSources(
            thresholds=lambda: curation.thresholds,
            queue=lambda: (scheduler.in_flight, scheduler.depth),
            stopping=stop.is_set,
        ),
        any_port_if_busy=any_port_if_busy,
    )
    stack.push_async_callback(dashboard.close)
    telemetry.events.add_listener(dashboard.on_event)
    log.info("dashboard: %s", dashboard.url)
    return dashboard


class _Summaries:
    """The ledger summary, sent to systemd STATUS and MQTT every few seconds."""

    def __init__(
        self,
        ledger: Ledger,
        scheduler: Scheduler,
        gate: PauseGate,
        reporter: Reporter,
        project: Path,
    ) -> None:
        self._ledger = ledger
        self._scheduler = scheduler
        self._gate = gate
        self._reporter = reporter
        self._project = project

    def publish(self, state: str) -> None:
        summary = summarize_ledger(self._ledger)
        paused = self._gate.describe()
        text = _summary_text(summary, self._scheduler.depth, self._scheduler.in_flight)
        self._reporter.summary(
            state,
            text + (f", {paused}" if paused else ""),
            counts=summary.exposures,
            exposures_per_hour=summary.exposures_per_hour,
            project=self._project,
        )

    async def run(self, notifier: Notifier) -> None:
        """Ping the systemd watchdog and publish, at least every watchdog period."""
        period = notifier.watchdog_ping_period_s()
        interval = (
            SUMMARY_INTERVAL_S if period is None else min(period, SUMMARY_INTERVAL_S)
        )
        while True:
            notifier.watchdog()
            self.publish("running")
            await asyncio.sleep(interval)


async def _drain_stages(
    scheduling: asyncio.Task[None],
    scheduler: Scheduler,
    executor: LocalExecutor | DaskExecutor,
    timeout_s: float,
) -> None:
    """Let the stages in flight finish within ``timeout_s``, then cancel them."""
    done, _ = await asyncio.wait([scheduling], timeout=timeout_s)
    if not done:
        log.warning(
            "drain time limit %.0f s reached: cancelling %d stage(s)",
            timeout_s,
            scheduler.in_flight,
        )
        scheduler.cancel_in_flight()
        await executor.close(cancel=True)
        await asyncio.wait([scheduling])
    else:
        await executor.close(cancel=False)
