"""The stage protocol and the configurable chain of per-exposure stages.

A stage is a plain function ``run(task, params) -> StageResult`` registered under a
*kind*; it runs in a worker process (local pool or Dask), so everything it gets is
picklable: the :class:`StageTask` (exposure record, project folder, results of the
earlier stages, attempt number) and its parameters, checked by a pydantic model.
A stage writes its outputs atomically (:mod:`pipelines.io.outputs`) and returns their
paths relative to the project; the scheduler then marks the ledger row done.

Kinds: ``noop`` (tests, benchmarks), ``motion`` and ``ctf`` (adapters over
:mod:`pipelines`, in :mod:`livestream.stages.motion_ctf`), ``curate`` and ``pick``
(:mod:`livestream.stages.post_ctf`), ``extract`` (:mod:`livestream.stages.extract`),
or ``"package.module:function"`` for a stage from elsewhere.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from livestream.config import StagesConfig
from livestream.ledger.store import StageResult
from mdcatch.records import Exposure

__all__ = [
    "Chain",
    "ChainLink",
    "StageKind",
    "StageTask",
    "build_chain",
    "register_stage",
    "run_stage",
    "validate_stage_params",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class StageTask:
    """Everything a stage gets; pickled to the worker."""

    stage: str
    kind: str
    params: Mapping[str, Any]
    exposure: Exposure
    project_path: Path
    previous: Mapping[str, StageResult] = field(default_factory=dict)
    attempt: int = 1


class StageParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str = ""


StageFunction = Callable[[StageTask, Any], StageResult]


@dataclass(frozen=True, slots=True)
class StageKind:
    run: StageFunction
    params_model: type[StageParams]


_KINDS: dict[str, StageKind] = {}


def register_stage(
    name: str, run: StageFunction, params_model: type[StageParams]
) -> None:
    """Offer a stage implementation under ``name`` (use in a module's ``setup``)."""
    _KINDS[name] = StageKind(run, params_model)


def _resolve(kind: str) -> StageKind:
    _register_builtins()
    if kind in _KINDS:
        return _KINDS[kind]
    if ":" in kind:
        module_name, _, attr = kind.partition(":")
        run = getattr(importlib.import_module(module_name), attr)
        model = getattr(run, "params_model", StageParams)
        return StageKind(run, model)
    raise ValueError(f"unknown stage kind {kind!r}; known: {sorted(_KINDS)}")


def picklable(exposure: Exposure) -> Exposure:
    """``exposure`` with plain dicts where mdcatch keeps read-only mapping proxies
    (which cannot be pickled to a worker process)."""
    if isinstance(exposure.extra, dict):
        return exposure
    return replace(exposure, extra=dict(exposure.extra))


def run_stage(task: StageTask) -> StageResult:
    """Entry point in the worker: check the parameters, run the stage."""
    kind = _resolve(task.kind)
    params = kind.params_model.model_validate(dict(task.params))
    return kind.run(task, params)


@dataclass(frozen=True, slots=True)
class ChainLink:
    name: str
    kind: str
    params: Mapping[str, Any]


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


def validate_stage_params(config: StagesConfig) -> None:
    """Check every stage table against its kind's model; errors name the key."""
    for name in config.chain:
        kind = config.kind_of(name)
        try:
            model = _resolve(kind).params_model
        except (ValueError, ImportError, AttributeError) as exc:
            raise ValueError(f"key 'stages.{name}.kind': {exc}") from None
        try:
            model.model_validate(config.params_of(name))
        except ValidationError as exc:
            item = exc.errors()[0]
            key = ".".join(str(p) for p in item["loc"])
            raise ValueError(
                f"key 'stages.{name}.{key}': {item['msg']} (got {item.get('input')!r})"
            ) from None


def build_chain(config: StagesConfig) -> Chain:
    return Chain(
        tuple(
            ChainLink(name, config.kind_of(name), config.params_of(name))
            for name in config.chain
        )
    )


# -- noop: writes a small file atomically -----------------------------------------
class NoopParams(StageParams):
    sleep_s: float = 0.0
    payload_bytes: int = 64
    fail_attempts: int = 0  # raise a transient error on attempts 1..n
    crash_attempts: int = 0  # kill the worker process on attempts 1..n


def run_noop(task: StageTask, params: NoopParams) -> StageResult:
    """Write ``Noop/<stage>/<exposure_id>.json`` naming the input; nothing else."""
    from pipelines.errors import StageInputError
    from pipelines.io.outputs import write_text_atomic

    movie = task.exposure.movie_path
    if movie is None or not movie.is_file():
        raise StageInputError(
            movie or task.exposure.metadata_path,
            "movie_path",
            movie,
            "movie file is missing",
        )
    if task.attempt <= params.crash_attempts:
        os._exit(70)  # a worker crash, as a segfault in a numerical library would be
    if task.attempt <= params.fail_attempts:
        raise RuntimeError(
            f"transient failure of {task.stage} on attempt {task.attempt}"
        )
    if params.sleep_s > 0:
        time.sleep(params.sleep_s)
    relative = Path("Noop") / task.stage / f"{task.exposure.exposure_id}.json"
    document = {
        "exposure_id": task.exposure.exposure_id,
        "stage": task.stage,
        "movie_size_bytes": movie.stat().st_size,
        "previous": {k: dict(v.outputs) for k, v in task.previous.items()},
        "payload": "x" * params.payload_bytes,
    }
    write_text_atomic(task.project_path / relative, json.dumps(document))
    return StageResult(
        stage=task.stage,
        outputs={"document": str(relative)},
        figures={"payload_bytes": float(params.payload_bytes)},
    )


def _register_builtins() -> None:
    if "noop" in _KINDS:
        return
    register_stage("noop", run_noop, NoopParams)
    from livestream.stages.motion_ctf import (
        CtfParams,
        MotionParams,
        run_ctf,
        run_motion,
    )

    register_stage("motion", run_motion, MotionParams)
    register_stage("ctf", run_ctf, CtfParams)
    from livestream.stages.extract import ExtractParams, run_extract_stage
    from livestream.stages.post_ctf import (
        CurateParams,
        PickParams,
        run_curate,
        run_pick,
    )

    register_stage("curate", run_curate, CurateParams)
    register_stage("pick", run_pick, PickParams)
    register_stage("extract", run_extract_stage, ExtractParams)
