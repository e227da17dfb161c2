"""The stage protocol and the one registry of stage kinds; the configured chain.

A stage is a plain function ``run(task, params) -> StageResult``; it runs in a
worker process (local pool or Dask), so everything it gets is picklable: the
:class:`~livestream.stages.task.StageTask` (exposure record, project folder, results
of the earlier stages, attempt number) and its parameters, a pydantic model of
:mod:`livestream.stages.params`.  A stage writes its outputs atomically
(:mod:`pipelines.io.outputs`) and returns their paths relative to the project; the
scheduler then marks the ledger row done.

:data:`STAGE_KINDS` holds every built-in kind with what the rest of the service
needs to know about it: its parameter model, its RELION job
(:mod:`livestream.project.jobs`), the job index file it feeds and whether its result
is a curation decision.  It is filled when this module is imported.

The one plugin point: a ``kind`` of the form ``"package.module:function"`` names a
stage from elsewhere, imported when the chain is built (and again in each worker);
the function's ``params_model`` attribute (default :class:`StageParams`) checks its
table, and ``index = "extract"`` (or motion, ctf, curate, pick) says which job index
its results feed.  It loads code from outside ``livestream``, ``pipelines`` and
``mdcatch`` only: a kind naming one of those packages is refused.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from livestream.config import ConfigError, StagesConfig
from livestream.ledger.schema import StageResult
from livestream.project.jobs import (
    AUTO_PICK,
    CTF_FIND,
    EXTRACT,
    MOTION_CORR,
    SELECT,
    RelionJob,
)
from livestream.stages.extract import run_extract_stage
from livestream.stages.motion_ctf import run_ctf, run_motion
from livestream.stages.noop import run_noop
from livestream.stages.params import (
    CtfParams,
    CurateParams,
    ExtractParams,
    IndexRole,
    MotionParams,
    NoopParams,
    PickParams,
    PluginParams,
    StageParams,
    kind_of_model,
)
from livestream.stages.post_ctf import run_curate, run_pick
from livestream.stages.task import StageTask, picklable

__all__ = [
    "STAGE_KINDS",
    "Chain",
    "ChainLink",
    "StageKind",
    "StageParams",
    "StageTask",
    "build_chain",
    "default_job_of",
    "picklable",
    "resolve_kind",
    "run_stage",
]

StageFunction = Callable[[StageTask, Any], StageResult]


@dataclass(frozen=True, slots=True, kw_only=True)
class StageKind:
    """One implementation of a stage and the facts the service reads about it."""

    name: str
    params_model: type[StageParams]
    run: StageFunction
    relion_job: RelionJob | None = None  # where its outputs go by default
    index: IndexRole | None = None  # the job index file its results feed
    decides_curation: bool = False  # its result holds a curation decision

    def __post_init__(self) -> None:
        job = self.params_model.model_fields.get("job")
        expected = None if self.relion_job is None else self.relion_job.folder
        if job is not None and job.default != expected:
            raise ValueError(
                f"stage kind {self.name!r}: params default job {job.default!r}"
                f" is not its RELION job {expected!r}"
            )


def _kind(model: type[StageParams], run: StageFunction, **facts: Any) -> StageKind:
    return StageKind(name=kind_of_model(model), params_model=model, run=run, **facts)


STAGE_KINDS: dict[str, StageKind] = {
    kind.name: kind
    for kind in (
        _kind(NoopParams, run_noop),
        _kind(MotionParams, run_motion, relion_job=MOTION_CORR, index=IndexRole.MOTION),
        _kind(CtfParams, run_ctf, relion_job=CTF_FIND, index=IndexRole.CTF),
        _kind(
            CurateParams,
            run_curate,
            relion_job=SELECT,
            index=IndexRole.CURATE,
            decides_curation=True,
        ),
        _kind(PickParams, run_pick, relion_job=AUTO_PICK, index=IndexRole.PICK),
        _kind(
            ExtractParams,
            run_extract_stage,
            relion_job=EXTRACT,
            index=IndexRole.EXTRACT,
        ),
    )
}


def default_job_of(role: IndexRole) -> RelionJob:
    """The RELION job of the built-in kind that feeds index ``role``."""
    for kind in STAGE_KINDS.values():
        if kind.index is role and kind.relion_job is not None:
            return kind.relion_job
    raise ValueError(f"no stage kind feeds the {role.value!r} index")


# our own packages: never loaded by name (see :func:`resolve_kind`)
FIRST_PARTY = frozenset({"livestream", "pipelines", "mdcatch"})


def resolve_kind(kind: str) -> StageKind:
    """The registered kind ``kind``, or the plugin ``"package.module:function"``."""
    if kind in STAGE_KINDS:
        return STAGE_KINDS[kind]
    if ":" in kind:
        module_name, _, attr = kind.partition(":")
        if module_name.split(".")[0] in FIRST_PARTY:
            raise ValueError(
                f"stage kind {kind!r} names a module of livestream itself: a built-in"
                f" stage is registered in STAGE_KINDS; known: {sorted(STAGE_KINDS)}"
            )
        # the one plugin point, for code outside livestream's packages only (ours
        # is imported at module level, so the import graph shows all of it)
        run = pkgutil.resolve_name(kind)
        defined_in = str(getattr(run, "__module__", "") or "")
        if defined_in.split(".")[0] in FIRST_PARTY:  # re-exported through a plugin
            raise ValueError(
                f"stage kind {kind!r} resolves to {defined_in}.{attr}, a function of"
                " livestream itself: a built-in stage is registered in STAGE_KINDS;"
                f" known: {sorted(STAGE_KINDS)}"
            )
        model = getattr(run, "params_model", StageParams)
        return StageKind(name=kind, params_model=model, run=run)
    raise ValueError(f"unknown stage kind {kind!r}; known: {sorted(STAGE_KINDS)}")


def run_stage(task: StageTask) -> StageResult:
    """Entry point in the worker: run the task's stage with its parameters."""
    kind = resolve_kind(task.kind)
    params = task.params
    if not isinstance(params, kind.params_model):
        raise TypeError(
            f"stage {task.stage!r}: parameters {type(params).__name__} are not"
            f" {kind.params_model.__name__} of kind {task.kind!r}"
        )
    return kind.run(task, params)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainLink:
    """One configured stage: its name, kind, parameters and the index it feeds."""

    name: str
    kind: StageKind
    params: StageParams
    index: IndexRole | None = None

    @property
    def job(self) -> str | None:
        """The job folder of its outputs (``None``: the stage names none)."""
        job = getattr(self.params, "job", None)
        if job is None and self.index is not None:
            return default_job_of(self.index).folder
        return None if job is None else str(job)


@dataclass(frozen=True, slots=True)
class Chain:
    """The configured stages, in order."""

    links: tuple[ChainLink, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(link.name for link in self.links)

    def after(self, stage: str | None) -> ChainLink | None:
        """The link that follows ``stage`` (``None``: the first one)."""
        if stage is None:
            return self.links[0] if self.links else None
        index = self.names.index(stage)
        return self.links[index + 1] if index + 1 < len(self.links) else None


def _link(name: str, table: StageParams) -> ChainLink:
    try:
        kind = resolve_kind(table.kind)
    except (ValueError, ImportError, AttributeError) as exc:
        raise ConfigError(f"key 'stages.{name}.kind': {exc}") from None
    if not isinstance(table, PluginParams):
        return ChainLink(name=name, kind=kind, params=table, index=kind.index)
    try:  # the plugin's own model checks its table
        params = kind.params_model.model_validate(
            table.model_dump(mode="json", exclude_unset=True, exclude={"index"})
            | ({} if table.index is None else {"index": table.index.value})
        )
    except ValidationError as exc:
        item = exc.errors()[0]
        key = ".".join(str(p) for p in item["loc"])
        raise ConfigError(
            f"key 'stages.{name}.{key}': {item['msg']} (got {item.get('input')!r})"
        ) from None
    return ChainLink(name=name, kind=kind, params=params, index=table.index)


def build_chain(config: StagesConfig) -> Chain:
    """The chain of ``config``; a plugin stage is imported and its table checked
    here (:class:`~livestream.config.ConfigError` naming the key)."""
    return Chain(tuple(_link(name, config.table_of(name)) for name in config.chain))
