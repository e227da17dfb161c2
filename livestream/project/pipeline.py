"""RELION's pipeline files: ``default_pipeline.star`` and each job's bookkeeping.

RELION (4 and 5) and the CCP-EM pipeliner open a project through
``default_pipeline.star``: the job counter, the processes (job folder, alias, type
label such as ``relion.motioncorr.own``, status ``Running``/``Succeeded``/
``Failed``), the nodes (file, type label such as
``MicrographGroupMetadata.star.relion.motioncorr``, with RELION 5's label depth
column) and the input and output edges between them.  Every job folder holds
``job.star`` (type label, ``is_continue``, ``is_tomo`` and the
``joboptions_values`` table: the parameters that were used), ``job_pipeline.star``
(the job's slice of the pipeline), ``note.txt`` (the command and configuration
that made it) and, once finished, ``RELION_JOB_EXIT_SUCCESS``.

:class:`RelionPipeline` writes them all; the job index calls
:meth:`RelionPipeline.write` after each rebuild (jobs ``Running``) and the daemon
once more at shutdown with ``finished=True`` (jobs ``Succeeded``).  A job is listed
once its folder exists, and a node once its file exists, so every listed node is
on disk.  Each file is written atomically (temporary name, fsync, rename) and
only when its text changed.  Jobs of the file that are not ours (run in RELION
on the project) are kept with their nodes and edges, and the job counter never
goes down.  The jobs and what feeds what come from the chain
(:func:`livestream.project.pipeline_jobs.pipeline_jobs`); their type labels and output nodes from
:mod:`livestream.project.jobs`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livestream.project.jobs import AUTO_PICK, IMPORT
from pipelines.io.iterations import latest_iteration
from pipelines.io.outputs import write_text_atomic

__all__ = [
    "EXIT_SUCCESS",
    "IMPORT_MOVIES",
    "PipelineJob",
    "RelionPipeline",
    "job_options",
    "pick_process_type",
    "star_value",
]

log = logging.getLogger(__name__)

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
RUNNING, SUCCEEDED = "Running", "Succeeded"
_VERSION = "# version 50001\n"
_CLASS2D_NODES = (
    ("optimiser.star", "OptimiserData.star.relion.class2d"),
    ("data.star", "ParticleGroupMetadata.star.relion.class2d"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineJob:
    """One process of the pipeline.

    ``outputs``: (file name in the job folder, node type label); ``inputs``: node
    names relative to the project; ``options``: the ``joboptions_values`` rows;
    ``note``: the text of ``note.txt``.  A Class2D job (``iterative=True``) has
    as outputs the optimiser and data STAR of its newest iteration; a job with
    ``iteration_outputs`` ((suffix, node type label) of ``run_itNNN_<suffix>``,
    the InitialModel job) has those of the newest iteration whose first suffix
    is on disk.
    """

    folder: str
    process_type: str
    outputs: tuple[tuple[str, str], ...] = ()
    inputs: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    note: str = ""
    iterative: bool = False
    iteration_outputs: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The process name: the folder with RELION's trailing slash."""
        return f"{self.folder}/"

    @property
    def number(self) -> int:
        match = re.search(r"job(\d+)$", self.folder)
        return int(match.group(1)) if match else 0


@dataclass(frozen=True, slots=True)
class _Node:
    name: str
    type_label: str


class RelionPipeline:
    """Writes the pipeline files of ``jobs`` in ``project``."""

    def __init__(self, project: Path, jobs: Sequence[PipelineJob]) -> None:
        self.project = project
        self.jobs = tuple(jobs)
        self.n_writes = 0
        self._lock = threading.Lock()  # the job index and Class2D write from threads
        # the other jobs of the file as last written (parsed again when it changed)
        self._foreign: tuple[tuple[int, int, int] | None, _Foreign] | None = None

    def write(self, *, finished: bool = False) -> Path:
        """Rewrite ``default_pipeline.star`` and every listed job's files; a
        ``finished`` job is ``Succeeded`` with ``RELION_JOB_EXIT_SUCCESS``, else
        ``Running`` (and an earlier exit file is removed: the job grows again)."""
        with self._lock:
            return self._write(finished=finished)

    def _write(self, *, finished: bool) -> Path:
        listed = [job for job in self.jobs if (self.project / job.folder).is_dir()]
        outputs = {job.folder: self._outputs(job) for job in listed}
        produced = {node.name: node for nodes in outputs.values() for node in nodes}
        status = SUCCEEDED if finished else RUNNING
        for job in listed:
            inputs = [produced[n] for n in job.inputs if n in produced]
            folder = self.project / job.folder
            _write_if_changed(
                folder / "job_pipeline.star",
                pipeline_text(
                    counter=job.number + 1,
                    processes=[_process_row(job, status)],
                    nodes=_unique([*inputs, *outputs[job.folder]]),
                    input_edges=[(n.name, job.name) for n in inputs],
                    output_edges=[(job.name, n.name) for n in outputs[job.folder]],
                ),
            )
            _write_if_changed(folder / "job.star", job_star_text(job))
            _write_if_changed(folder / "note.txt", job.note)
            exit_file = folder / EXIT_SUCCESS
            if finished and not exit_file.exists():
                write_text_atomic(exit_file, "")
            elif not finished:
                exit_file.unlink(missing_ok=True)
        path = self.project / "default_pipeline.star"
        if self._foreign is not None and self._foreign[0] == _signature(path):
            other = self._foreign[1]
        else:
            other = _Foreign.read(path, {job.name for job in self.jobs})
        ours = {node.name for node in produced.values()}
        _write_if_changed(
            path,
            pipeline_text(
                counter=max(
                    max((job.number for job in self.jobs), default=0) + 1,
                    other.counter,
                ),
                processes=[_process_row(job, status) for job in listed]
                + other.processes,
                nodes=[
                    *produced.values(),
                    *(n for n in other.nodes if n.name not in ours),
                ],
                input_edges=[
                    (n, job.name) for job in listed for n in job.inputs if n in produced
                ]
                + other.input_edges,
                output_edges=[
                    (job.name, n.name) for job in listed for n in outputs[job.folder]
                ]
                + other.output_edges,
            ),
        )
        self._foreign = (_signature(path), other)
        self.n_writes += 1
        return path

    def _outputs(self, job: PipelineJob) -> list[_Node]:
        folder = self.project / job.folder
        pairs = list(job.outputs)
        if job.iterative:
            iteration = latest_iteration(folder)
            if iteration is not None:
                pairs += [(f"run_it{iteration:03d}_{s}", t) for s, t in _CLASS2D_NODES]
        elif job.iteration_outputs:
            newest = _newest_iteration(folder, job.iteration_outputs[0][0])
            if newest is not None:
                pairs += [
                    (f"run_it{newest:03d}_{s}", t) for s, t in job.iteration_outputs
                ]
        return [
            _Node(f"{job.folder}/{name}", label)
            for name, label in pairs
            if (folder / name).is_file()
        ]


def _newest_iteration(folder: Path, suffix: str) -> int | None:
    """The largest NNN of a ``run_itNNN_<suffix>`` file in ``folder``."""
    pattern = re.compile(rf"run_it(\d+)_{re.escape(suffix)}")
    found = [
        int(m.group(1))
        for p in folder.glob(f"run_it*_{suffix}")
        if (m := pattern.fullmatch(p.name)) is not None
    ]
    return max(found) if found else None


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _process_row(job: PipelineJob, status: str) -> tuple[str, str, str, str]:
    return (job.name, "None", job.process_type, status)


@dataclass(slots=True)
class _Foreign:
    """What an existing ``default_pipeline.star`` holds beyond our jobs: jobs a
    user ran in RELION on the project (kept, with their nodes and edges)."""

    counter: int = 0
    processes: list[tuple[str, str, str, str]] = field(default_factory=list)
    nodes: list[_Node] = field(default_factory=list)
    input_edges: list[tuple[str, str]] = field(default_factory=list)
    output_edges: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path, ours: set[str]) -> _Foreign:
        if not path.is_file():
            return cls()
        try:
            import starfile  # with pandas ~0.5 s: loaded on the first foreign read

            blocks: Any = starfile.read(path, always_dict=True)
            general = blocks.get("pipeline_general", {})
            counter = int(general.get("rlnPipeLineJobCounter", 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("%s is not readable; jobs not ours in it are dropped", path)
            return cls()

        def rows(block: str, labels: Sequence[str]) -> list[tuple[str, ...]]:
            table = blocks.get(block)
            if table is None or not all(label in table for label in labels):
                return []
            return [
                tuple(str(v) for v in row)
                for row in table[list(labels)].itertuples(index=False)
            ]

        processes = [
            (name, alias, type_label, status)
            for name, alias, type_label, status in rows(
                "pipeline_processes",
                [
                    "rlnPipeLineProcessName",
                    "rlnPipeLineProcessAlias",
                    "rlnPipeLineProcessTypeLabel",
                    "rlnPipeLineProcessStatusLabel",
                ],
            )
            if name not in ours
        ]
        theirs = {p[0] for p in processes}
        output_edges = [
            (process, node)
            for process, node in rows(
                "pipeline_output_edges",
                ["rlnPipeLineEdgeProcess", "rlnPipeLineEdgeToNode"],
            )
            if process in theirs
        ]
        input_edges = [
            (node, process)
            for node, process in rows(
                "pipeline_input_edges",
                ["rlnPipeLineEdgeFromNode", "rlnPipeLineEdgeProcess"],
            )
            if process in theirs
        ]
        made = {node for _, node in output_edges}
        nodes = [
            _Node(name, label)
            for name, label in rows(
                "pipeline_nodes", ["rlnPipeLineNodeName", "rlnPipeLineNodeTypeLabel"]
            )
            if name in made
        ]
        return cls(counter, processes, nodes, input_edges, output_edges)


def _unique(nodes: Iterable[_Node]) -> list[_Node]:
    return list(dict.fromkeys(nodes))


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    write_text_atomic(path, text)


# -- STAR text ---------------------------------------------------------------------
def star_value(value: str) -> str:
    """``value`` as one STAR token: quoted when empty, when it holds white space
    or a quote, or when it starts like a STAR keyword or comment."""
    if value and not re.search(r"[\s\"']", value):
        lower = value.lower()
        if not (
            value[0] in "_#$;[]"
            or lower.startswith(("data_", "loop_", "save_", "global_", "stop_"))
        ):
            return value
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace('"', "'") + '"'


def _loop(block: str, labels: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"_{label} #{i}\n" for i, label in enumerate(labels, 1))
    body = "".join(" ".join(star_value(v) for v in row) + "\n" for row in rows)
    return f"{_VERSION}\ndata_{block}\n\nloop_\n{head}{body}\n\n"


def pipeline_text(
    *,
    counter: int,
    processes: Sequence[tuple[str, str, str, str]],
    nodes: Sequence[_Node],
    input_edges: Sequence[tuple[str, str]],
    output_edges: Sequence[tuple[str, str]],
) -> str:
    """A ``default_pipeline.star`` (or ``job_pipeline.star``) in RELION 5's layout."""
    text = (
        f"{_VERSION}\ndata_pipeline_general\n\n_rlnPipeLineJobCounter {counter}\n\n\n"
    )
    text += _loop(
        "pipeline_processes",
        [
            "rlnPipeLineProcessName",
            "rlnPipeLineProcessAlias",
            "rlnPipeLineProcessTypeLabel",
            "rlnPipeLineProcessStatusLabel",
        ],
        processes,
    )
    if nodes:
        text += _loop(
            "pipeline_nodes",
            [
                "rlnPipeLineNodeName",
                "rlnPipeLineNodeTypeLabel",
                "rlnPipeLineNodeTypeLabelDepth",
            ],
            [(n.name, n.type_label, "1") for n in nodes],
        )
    if input_edges:
        text += _loop(
            "pipeline_input_edges",
            ["rlnPipeLineEdgeFromNode", "rlnPipeLineEdgeProcess"],
            input_edges,
        )
    if output_edges:
        text += _loop(
            "pipeline_output_edges",
            ["rlnPipeLineEdgeProcess", "rlnPipeLineEdgeToNode"],
            output_edges,
        )
    return text


def job_star_text(job: PipelineJob) -> str:
    """``job.star``: the type label, not continued, not tomography, the options."""
    text = (
        f"{_VERSION}\ndata_job\n\n"
        f"_rlnJobTypeLabel {job.process_type}\n"
        "_rlnJobIsContinue 0\n_rlnJobIsTomo 0\n\n\n"
    )
    return text + _loop(
        "joboptions_values",
        ["rlnJobOptionVariable", "rlnJobOptionValue"],
        sorted(job.options.items()),
    )


def job_options(values: Mapping[str, Any]) -> dict[str, str]:
    """Parameter values as RELION writes job options: booleans ``Yes``/``No``,
    ``None`` empty, sequences comma-separated, tables flattened with dots."""
    options: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            for sub, text in job_options(value).items():
                options[f"{key}.{sub}"] = text
        elif isinstance(value, bool):
            options[key] = "Yes" if value else "No"
        elif value is None:
            options[key] = ""
        elif isinstance(value, list | tuple):
            options[key] = ",".join(str(v) for v in value)
        else:
            options[key] = str(value)
    return options


def pick_process_type(picker: str) -> str:
    """The picker's process type: templates are RELION's 2D-reference autopick."""
    return "relion.autopick.ref2d" if picker == "template" else AUTO_PICK.process_type


IMPORT_MOVIES = f"{IMPORT.folder}/movies.star"  # the Import job's node
