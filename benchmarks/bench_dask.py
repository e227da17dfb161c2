"""Scheduling overhead of the executors: the local process pool and Dask clusters.

    .venv/bin/python benchmarks/bench_dask.py [--tasks 64] [--stage-s 0.25]
        [--workers 1 2] [--dask-workers 1 2 4] [--exposure-stage-s 20]

Each configuration runs the same ``--tasks`` real stage tasks (the ``noop`` kind
through :func:`livestream.stages.registry.run_stage`, sleeping ``--stage-s`` in the
worker, writing its small output file atomically) through the service's own
executor (:mod:`livestream.scheduling.executors`) with twice as many tasks in
flight as workers, as the scheduler keeps them.  The lower bound, from the same
numbers: ``tasks × stage_s / workers``.  Overhead per task is
``(wall − bound) × workers / tasks``: submit, pickle, scheduler, transfer, result,
and the stage's own file write.  In CPU: all the run's processes' CPU during the
tasks, less what they burn idle (measured for 15 s just before) over the same wall
time, per task (``CPU ms/task``): the part of the overhead that scales with the
tasks, not with the clock.  A real exposure is five stage tasks (motion, ctf,
curate, pick, extract); the overhead of those five is printed against
``--exposure-stage-s`` seconds of stage time per exposure (the stage time of one
real-size exposure on one worker; see docs/throughput.md), the issue's target being
at most 1 %.  Peer: none (cryoSPARC Live and RELION's scheduler are not scriptable
here); the lower bound is the comparison.

``--real N`` runs N real-size exposures instead (``--small``: 1024² x 20), each as
the five real stage tasks of ``bench_chain.py``'s chain submitted one after the
other through each executor, twice as many exposures in flight as workers.  The
overhead is counted in CPU seconds, which mean something on a loaded machine
where a few milliseconds of wall time do not: the CPU of every process of the run
(this one, with the Dask scheduler and nannies of a local cluster and the event
loop; the pool's or the cluster's worker processes) over the run, less the CPU of
the stage's own threads during the stage calls, per exposure.  The stage's threads
are measured in the worker around ``run_stage``: the process's CPU less that of
its other Python threads (Dask's event loop with its periodic callbacks, the
watch threads), read from /proc; that part is printed on its own (``in worker``),
the executor's background during the stages.  The workers' idle wall time (wall x
workers less the stages' wall time) is printed too.  Before the exposures, the
executor's processes are left idle for 30 s: their CPU then (heartbeats,
monitors, in % of one core) times an exposure's wall time is what that background
costs per exposure at that rate.

Dask rows run under the service's Dask settings and scheduler
(:mod:`livestream.scheduling.dask_settings`, :mod:`livestream.scheduling.
dask_scheduler`; the default), the same settings with Dask's own scheduler class
(``--dask-config dask-scheduler``: a worker heartbeat every 0.5 s), the service's
with its workers on glibc's default ``malloc`` (``--dask-config service-glibc``:
``[workers] keep_freed_memory = false``; the others keep freed memory as the pool
workers do) or Dask's defaults (``--dask-config defaults``), or several in the
order given (``--dask-config service dask-scheduler defaults``).

The overhead per exposure is split in two (``--real``): the idle rate times the
exposure's wall time (``idle x wall s``: what the executor's processes burn by the
clock, heartbeats, ticks and monitors, whether a stage runs or not) and the rest
(``per task s``: submitting, the scheduler's and the worker's work for each task,
what the stage's threads lose to the executor's); the first scales with the wall
time an exposure takes, so with the machine's load, the second with the tasks.
A second line per executor attributes the run's CPU, beyond each thread's own idle
rate: this process's main thread (the event loop of the client, a local cluster's
scheduler and nannies) and its other threads, the workers' main threads (a Dask
worker's event loop; a pool worker's stage) and their other threads (a Dask
worker's task thread with the stage's numba and FFT threads), less the stage's
CPU where the stage runs.

    .venv/bin/python benchmarks/bench_dask.py --real 2 [--small] [--workers 1]
        [--dask-workers 1] [--dask-config service defaults] [--keep DIR]

``--idle R`` measures only the idle executors, R rounds of each in turn (the same
executor selection): the CPU over 30 s of this process (with the client, the
scheduler and the nannies of a local cluster) and of the worker processes, and
their wake-ups per second (voluntary context switches of their threads, counted by
the kernel), which do not depend on the machine's load as the CPU does.

    .venv/bin/python benchmarks/bench_dask.py --idle 3 --workers 1
        --dask-workers 1 --dask-config dask-scheduler service
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from bench_chain import CHAIN, exposure_of, make_movies

from livestream.ledger.schema import StageResult
from livestream.scheduling.dask_settings import local_cluster
from livestream.scheduling.executors import DaskExecutor, Executor, LocalExecutor
from livestream.stages.params import NoopParams
from livestream.stages.registry import run_stage
from livestream.stages.task import StageTask
from mdcatch.records import Exposure, Optics, Software

STAGES_PER_EXPOSURE = 5
IDLE_S = 30.0  # --real: how long the idle executor's CPU is measured
NOOP_IDLE_S = 15.0  # noop tasks: the same, before the tasks


def _tasks(root: Path, n: int, sleep_s: float) -> list[StageTask]:
    movie = root / "movie.tiff"
    movie.write_bytes(b"\0" * 1024)
    params = NoopParams(sleep_s=sleep_s)
    tasks = []
    for index in range(n):
        exposure = Exposure(
            exposure_id=f"e{index:05d}",
            software=Software.EPU,
            metadata_path=root / f"e{index:05d}.xml",
            movie_path=movie,
            acquired_utc=datetime(2026, 1, 1, tzinfo=UTC),
            optics=Optics(voltage_kv=300.0, pixel_size_a=1.0),
            exposure_time_s=2.0,
            total_dose_e_per_a2=40.0,
            n_frames=40,
            target_defocus_um=1.5,
            extra={},
        )
        tasks.append(
            StageTask(
                stage="bench",
                kind="noop",
                params=params,
                exposure=exposure,
                project_path=root / "project",
            )
        )
    return tasks


async def _run_all(
    executor: Executor, tasks: list[StageTask], in_flight: int
) -> tuple[float, float, float]:
    """Wall and CPU seconds (all the run's processes) of ``tasks``, and the CPU
    per second the same processes burn idle just before."""
    gate = asyncio.Semaphore(in_flight)

    async def one(task: StageTask) -> None:
        async with gate:
            await executor.run(run_stage, task)

    # warm-up: start every worker process and import the stages once
    await asyncio.gather(*(one(task) for task in tasks[:in_flight]))
    await asyncio.sleep(2.0)  # what the start and the warm-up leave settles
    cpu = tree_cpu_s()
    await asyncio.sleep(NOOP_IDLE_S)
    idle_cpu_per_s = (tree_cpu_s() - cpu) / NOOP_IDLE_S
    cpu = tree_cpu_s()
    started = time.perf_counter()
    await asyncio.gather(*(one(task) for task in tasks))
    wall = time.perf_counter() - started
    return wall, tree_cpu_s() - cpu, idle_cpu_per_s


def _report(
    name: str,
    workers: int,
    wall: float,
    cpu: float,
    idle_cpu_per_s: float,
    args: argparse.Namespace,
) -> dict[str, float]:
    bound = args.tasks * args.stage_s / workers
    per_task_ms = max(wall - bound, 0.0) * workers / args.tasks * 1000
    per_exposure_pct = (
        100 * STAGES_PER_EXPOSURE * per_task_ms / 1000 / args.exposure_stage_s
    )
    # CPU per task beyond what the processes burn idle over the same wall time
    cpu_ms = (cpu - idle_cpu_per_s * wall) / args.tasks * 1000
    print(
        f"{name:<36} {workers:>7} {args.tasks / wall:>9.2f} {wall / bound:>9.3f}"
        f" {per_task_ms:>14.1f} {per_exposure_pct:>13.3f}"
        f" {100 * idle_cpu_per_s:>10.2f} {cpu_ms:>12.1f}",
        flush=True,
    )
    return {"per_task_ms": per_task_ms, "per_exposure_pct": per_exposure_pct}


async def _executors(
    workers: list[int], dask_workers: list[int], dask_config: list[str]
) -> AsyncIterator[tuple[str, int, Executor]]:
    """Each executor measured, in turn, closed after its rows: the service's
    local process pool with each of ``workers``, then a local Dask cluster of
    processes with each of ``dask_workers``: the service's
    (:func:`~livestream.scheduling.dask_settings.local_cluster`, its settings and
    scheduler class), the same with Dask's scheduler class, or Dask's own
    ``LocalCluster`` at Dask's defaults, in the order of ``dask_config``."""
    for n in workers:
        local = LocalExecutor(n, "forkserver")
        try:
            yield "local process pool", n, local
        finally:
            await local.close(cancel=False)
    for n in dask_workers:
        for config in dask_config:
            if config == "service":
                cluster_cm = local_cluster(n)
            elif config == "service-glibc":
                cluster_cm = local_cluster(n, keep_freed_memory=False)
            elif config == "dask-scheduler":
                import distributed  # optional: only the Dask rows need it

                cluster_cm = local_cluster(n, scheduler_cls=distributed.Scheduler)
            else:
                import distributed  # optional: only the Dask rows need it

                cluster_cm = distributed.LocalCluster(
                    n_workers=n,
                    processes=True,
                    threads_per_worker=1,
                    asynchronous=True,
                    dashboard_address=None,
                    silence_logs=40,
                )
            async with cluster_cm as cluster:
                executor = await DaskExecutor.connect(cluster.scheduler_address)
                try:
                    yield f"dask local cluster ({config})", n, executor
                finally:
                    await executor.close(cancel=False)


async def main_async(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench_dask_"))
    tasks = _tasks(root, args.tasks, args.stage_s)
    print(
        f"{args.tasks} noop stage tasks of {args.stage_s} s each; overhead per exposure"
        f" = {STAGES_PER_EXPOSURE} tasks against {args.exposure_stage_s} s of stage"
        " time per exposure"
    )
    print(
        f"{'executor':<36} {'workers':>7} {'tasks/s':>9} {'÷ bound':>9}"
        f" {'overhead ms/task':>14} {'% / exposure':>13}"
        f" {'idle CPU %':>10} {'CPU ms/task':>12}"
    )
    async for label, n, executor in _executors(
        args.workers, args.dask_workers, args.dask_config
    ):
        wall, cpu, idle_cpu_per_s = await _run_all(executor, tasks, 2 * n)
        _report(label, n, wall, cpu, idle_cpu_per_s, args)


_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _other_python_threads_cpu_s() -> float:
    """CPU seconds of this process's Python threads other than the calling one
    (Linux, from /proc): the executor's own threads (Dask's event loop with its
    periodic callbacks, the nanny's and the pool's watch threads).  The stage's
    threads are the calling one and the ones numba and BLAS start, which Python
    does not list."""
    me = threading.get_native_id()
    total = 0
    for thread in threading.enumerate():
        tid = thread.native_id
        if tid is None or tid == me:
            continue
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _TICKS_PER_S


def timed_stage(task: StageTask) -> tuple[StageResult, float, float, float]:
    """``run_stage`` in the worker: the process's CPU seconds during the call, its
    wall seconds, and the part of that CPU spent by the executor's own threads."""
    cpu = time.process_time()
    other = _other_python_threads_cpu_s()
    start = time.perf_counter()
    result = run_stage(task)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return result, cpu, wall, _other_python_threads_cpu_s() - other


def tree_cpu_s() -> float:
    """User + system CPU seconds of this process and all its descendants alive."""
    import psutil  # optional: it comes with distributed

    me = psutil.Process()
    total = 0.0
    for process in (me, *me.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def _run_exposures(
    executor: Executor, movies: list[Path], project: Path, in_flight: int
) -> dict[str, float]:
    """Each movie's chain as five stage tasks in turn; totals over all exposures."""
    gate = asyncio.Semaphore(in_flight)
    totals = {"stage_cpu": 0.0, "stage_wall": 0.0, "stage_background": 0.0}

    async def one(movie: Path) -> None:
        exposure = exposure_of(movie)
        previous: dict[str, StageResult] = {}
        async with gate:
            for name, params in CHAIN:
                task = StageTask(
                    stage=name,
                    kind=params.kind,
                    params=params,
                    exposure=exposure,
                    project_path=project,
                    previous=dict(previous),
                )
                result, cpu, wall, background = await executor.run(timed_stage, task)
                previous[name] = result
                totals["stage_cpu"] += cpu - background
                totals["stage_background"] += background
                totals["stage_wall"] += wall

    # warm-up: start every worker process and import the stages once
    (project / "warm").mkdir(parents=True)
    warm = _tasks(project / "warm", 2 * executor.n_workers(), 0.0)
    await asyncio.gather(*(executor.run(run_stage, task) for task in warm))
    # idle: what the executor's processes burn with no task (heartbeats, monitors)
    cpu, threads = tree_cpu_s(), _thread_cpu_s()
    await asyncio.sleep(IDLE_S)
    totals["idle_cpu_per_s"] = (tree_cpu_s() - cpu) / IDLE_S
    idle_threads = _thread_cpu_s()
    cpu = tree_cpu_s()
    started = time.perf_counter()
    await asyncio.gather(*(one(movie) for movie in movies))
    totals["wall"] = time.perf_counter() - started
    totals["cpu"] = tree_cpu_s() - cpu
    # per process and thread: the run's CPU beyond the same thread's idle rate
    for name, run_cpu in _thread_cpu_s().items():
        idle_rate = (idle_threads.get(name, 0.0) - threads.get(name, 0.0)) / IDLE_S
        run_cpu -= idle_threads.get(name, 0.0)
        totals[f"beyond idle: {name}"] = run_cpu - idle_rate * totals["wall"]
    return totals


def _thread_cpu_s() -> dict[str, float]:
    """User + system CPU seconds of this process's main thread (the event loop of
    the client, the scheduler and the nannies) and of its other threads, and the
    same of the worker processes (their main thread is a Dask worker's event loop;
    the others run the stages), from /proc (Linux)."""
    import psutil  # optional: it comes with distributed

    me = psutil.Process()
    found: dict[str, float] = {}
    for process in (me, *me.children(recursive=True)):
        role = "this process" if process.pid == me.pid else "workers"
        try:
            tasks = list(Path(f"/proc/{process.pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
            thread = "main thread" if task.name == str(process.pid) else "others"
            key = f"{role}, {thread}"
            found[key] = found.get(key, 0.0) + cpu
    return found


def _report_real(name: str, workers: int, n: int, totals: dict[str, float]) -> None:
    overhead = (totals["cpu"] - totals["stage_cpu"]) / n
    idle = (totals["wall"] * workers - totals["stage_wall"]) / n
    stage_cpu = totals["stage_cpu"] / n
    # the idle rate over an exposure's wall time: what the executor's processes
    # burn beside the stages at that rate
    background = totals["idle_cpu_per_s"] * totals["wall"] / n
    print(
        f"{name:<36} {workers:>7} {totals['wall']:>7.0f} {stage_cpu:>11.1f}"
        f" {totals['cpu'] / n:>11.1f} {overhead:>12.2f}"
        f" {100 * overhead / stage_cpu:>6.2f} {totals['stage_background'] / n:>10.2f}"
        f" {idle:>11.1f} {100 * totals['idle_cpu_per_s']:>9.2f} {background:>12.2f}"
        f" {overhead - background:>10.2f} {100 * (overhead - background) / stage_cpu:>6.2f}",
        flush=True,
    )
    beyond = {k.split(": ", 1)[1]: v / n for k, v in totals.items() if ": " in k}
    # the stage runs in a pool worker's main thread, in a Dask worker's task thread
    stage_threads = (
        "workers, others" if name.startswith("dask") else "workers, main thread"
    )
    if stage_threads in beyond:
        beyond[f"{stage_threads} less the stage"] = (
            beyond.pop(stage_threads) - stage_cpu
        )
    print(
        "    CPU s per exposure beyond each one's idle rate: "
        + "; ".join(f"{name} {cpu:.2f}" for name, cpu in sorted(beyond.items())),
        flush=True,
    )


async def main_real(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench_dask_real_"))
    size, n_frames = (1024, 20) if args.small else (4096, 40)
    movie_folder = root if args.keep is None else args.keep
    movie_folder.mkdir(parents=True, exist_ok=True)
    movies = make_movies(movie_folder, size, n_frames, args.real)
    print(
        f"{args.real} exposures of {size}² x {n_frames} frames, each five stage tasks;"
        f" 1-min load average at the start {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'executor':<36} {'workers':>7} {'wall s':>7} {'stage CPU s':>11}"
        f" {'all CPU s':>11} {'overhead CPU s':>12} {'%':>6} {'in worker':>10}"
        f" {'idle wall s':>11}"
        f" {'idle CPU %':>9} {'idle x wall s':>12} {'per task s':>10} {'%':>6}"
        "   (per exposure)"
    )
    index = 0
    async for label, n, executor in _executors(
        args.workers, args.dask_workers, args.dask_config
    ):
        kind = label.split("(")[-1].rstrip(")") if label.startswith("dask") else "local"
        index += 1  # a configuration may be given twice (--dask-config a b a b)
        folder = root / f"{index}_{kind}_{n}"
        totals = await _run_exposures(executor, movies, folder, 2 * n)
        _report_real(label, n, len(movies), totals)
    print(f"1-min load average at the end {os.getloadavg()[0]:.1f}")


def _process_counters() -> dict[str, tuple[float, int]]:
    """Per process of this run (``main``: this one, with the client and a
    local cluster's scheduler and nannies; ``workers``: the worker processes
    together): user + system CPU seconds and voluntary context switches, summed
    over the threads (Linux, /proc).  A thread that sleeps in its event loop and
    is woken by a timer or a message switches out once per wake-up."""
    import psutil  # optional: it comes with distributed

    me = psutil.Process()
    found: dict[str, tuple[float, int]] = {}
    for process in (me, *me.children(recursive=True)):
        cpu, switches = 0.0, 0
        try:
            for task in Path(f"/proc/{process.pid}/task").iterdir():
                stat = (task / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                cpu += (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        switches += int(line.split()[1])
        except OSError:
            continue
        name = "main" if process.pid == me.pid else "workers"
        before = found.get(name, (0.0, 0))
        found[name] = (before[0] + cpu, before[1] + switches)
    return found


async def main_idle(args: argparse.Namespace) -> None:
    """``--idle R``: each executor's idle CPU and wake-ups, R rounds in turn."""
    print(
        f"idle executors, {IDLE_S:.0f} s each after a warm-up task; % of one core"
        " and wake-ups per second (voluntary context switches)"
    )
    print(
        f"{'executor':<36} {'workers':>7} {'round':>5} {'load':>5} {'all %':>6}"
        f" {'main %':>7} {'main /s':>8} {'workers %':>9} {'workers /s':>10}"
    )
    root = Path(tempfile.mkdtemp(prefix="bench_dask_idle_"))
    for round_ in range(args.idle):
        async for label, n, executor in _executors(
            args.workers, args.dask_workers, args.dask_config
        ):
            warm = _tasks(root, 2 * n, 0.0)
            await asyncio.gather(*(executor.run(run_stage, task) for task in warm))
            await asyncio.sleep(5.0)  # what the start and the tasks leave settles
            before = _process_counters()
            started = time.perf_counter()
            await asyncio.sleep(IDLE_S)
            after = _process_counters()
            wall = time.perf_counter() - started
            rate = {
                name: (
                    100 * (cpu - before.get(name, (cpu, 0))[0]) / wall,
                    (switches - before.get(name, (0.0, switches))[1]) / wall,
                )
                for name, (cpu, switches) in after.items()
            }
            main_cpu, main_wake = rate.get("main", (0.0, 0.0))
            work_cpu, work_wake = rate.get("workers", (0.0, 0.0))
            print(
                f"{label:<36} {n:>7} {round_:>5} {os.getloadavg()[0]:>5.1f}"
                f" {main_cpu + work_cpu:>6.2f} {main_cpu:>7.2f} {main_wake:>8.1f}"
                f" {work_cpu:>9.2f} {work_wake:>10.1f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--stage-s", type=float, default=0.25)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--dask-workers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--exposure-stage-s", type=float, default=20.0)
    parser.add_argument(
        "--real", type=int, default=0, help="N real exposures instead of noop tasks"
    )
    parser.add_argument("--small", action="store_true", help="--real at 1024² x 20")
    parser.add_argument(
        "--idle",
        type=int,
        default=0,
        help="R rounds of each executor's idle CPU and wake-ups instead",
    )
    parser.add_argument("--keep", type=Path, help="--real: the movie's folder, reused")
    parser.add_argument(
        "--dask-config",
        choices=("service", "service-glibc", "dask-scheduler", "defaults"),
        nargs="+",
        default=["service"],
        help="the Dask rows under the service's settings, the same with Dask's own"
        " scheduler class and/or Dask's defaults, in this order",
    )
    args = parser.parse_args()
    if args.idle:
        asyncio.run(main_idle(args))
    else:
        asyncio.run(main_real(args) if args.real else main_async(args))


if __name__ == "__main__":
    main()
