"""The service configuration: one TOML file, validated at start.

Every key has a default that works for the demo, so an empty file (or none) is a
valid configuration.  Errors name the key and the file::

    ConfigError: live.toml: key 'workers.n_processes': Input should be greater
    than or equal to 1 (got 0)

Example (all sections optional)::

    [session]
    path = "/mnt/epu/Supervisor_20250108_101446"
    movie_roots = ["/mnt/dosefractions/cm40593-1"]
    settle_time_s = 10

    [project]
    path = "/data/processing/cm40593-1"

    [workers]
    n_processes = 4

    [stages]
    chain = ["motion", "ctf"]

    [stages.motion]
    patches_x = 7

    [class2d]
    n_classes = 50
    min_pool = 1000

    [class3d]
    start_particles = 5000
    symmetry = "C1"

    [templates]
    template_feed = true
    repick_earlier = false

    [dashboard]
    port = 8790
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SerializationInfo,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from livestream.project.jobs import (
    CLASS2D,
    CLASS3D,
    INITIAL_MODEL,
    REBALANCE,
    REFINE3D,
)
from livestream.stages.params import (
    BUILTIN_PARAMS,
    CtfParams,
    CurateParams,
    ExtractParams,
    MotionParams,
    NoopParams,
    PickParams,
    PluginParams,
    StageParams,
    kind_of_model,
)

log = logging.getLogger(__name__)

__all__ = [
    "Class2dSection",
    "ConfigError",
    "DashboardConfig",
    "MetricsConfig",
    "MqttConfig",
    "Polling",
    "ProjectConfig",
    "ServiceConfig",
    "SessionConfig",
    "SoftwareChoice",
    "StageTable",
    "StagesConfig",
    "TemplatesSection",
    "WorkersConfig",
    "load_config",
    "reload_config",
]


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; names the key."""


class SoftwareChoice(enum.Enum):
    EPU = "epu"
    SERIALEM = "serialem"
    AUTO = "auto"


class Polling(enum.Enum):
    """Watch with inotify (``false``), by polling (``true``) or decide per mount."""

    AUTO = "auto"
    TRUE = "true"
    FALSE = "false"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SessionConfig(_Section):
    path: Path = Path("session")
    software: SoftwareChoice = SoftwareChoice.AUTO
    movie_roots: tuple[Path, ...] = ()
    settle_time_s: float = Field(default=10.0, ge=0.0)
    polling: Polling = Polling.AUTO
    polling_interval_s: float = Field(default=2.0, gt=0.0)
    rescan_interval_s: float = Field(default=30.0, gt=0.0)
    orphan_timeout_s: float = Field(default=300.0, gt=0.0)
    path_map: dict[str, Path] = Field(default_factory=dict)

    @field_validator("polling", mode="before")
    @classmethod
    def _polling_from_bool(cls, value: object) -> object:
        # TOML users write ``polling = true``; the enum holds strings.
        return str(value).lower() if isinstance(value, bool) else value


class ProjectConfig(_Section):
    path: Path = Path("project")
    # the job index files (corrected_micrographs.star, ...) are rewritten at most
    # this often while exposures finish, and always at start-up and shutdown
    index_interval_s: float = Field(default=3.0, ge=0.0)
    # under this much free space on the project's file system the service pauses
    # (no new stage, no new import) and resumes by itself once space is back.
    # 1 GiB holds the outputs of the stages in flight (a 4k float16 micrograph is
    # ~30 MB, its particle stack a few MB), the SQLite WAL and a class2d
    # checkpoint many times over, and is 0.1 % of a 1 TB project disk.
    min_free_bytes: int = Field(default=2**30, ge=0)
    disk_check_interval_s: float = Field(default=5.0, gt=0.0)


class SlurmConfig(_Section):
    """``[workers.slurm]``: stages on Slurm batch jobs through dask-jobqueue.

    Each batch job runs ``processes`` Dask worker processes with one thread each
    (the stages use their own threads through FFTW/BLAS workers); ``jobs`` of them
    are kept running.  ``python`` is the interpreter of the same livestream install
    on the compute nodes (default: this one, for a shared file system).
    """

    queue: str = ""  # #SBATCH -p
    account: str = ""  # #SBATCH -A
    jobs: int = Field(default=2, ge=1)
    cores: int = Field(default=8, ge=1)  # per job
    processes: int = Field(default=4, ge=1)  # worker processes per job
    memory: str = Field(default="32GiB", pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$")
    walltime: str = Field(default="24:00:00", pattern=r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")
    job_extra_directives: tuple[str, ...] = ()  # e.g. ["--gres=gpu:1"]
    job_script_prologue: tuple[str, ...] = ()  # e.g. ["module load cuda"]
    local_directory: str = ""  # scratch on the node ("" = dask-jobqueue's default)
    interface: str = ""  # network interface of the workers ("" = default route)
    python: str = ""  # "" = sys.executable

    @model_validator(mode="after")
    def _processes_fit(self) -> SlurmConfig:
        if self.processes > self.cores:
            raise ValueError(
                f"processes={self.processes} exceeds cores={self.cores}: each worker "
                "process needs at least one core"
            )
        return self


class WorkersConfig(_Section):
    n_processes: int = Field(default=2, ge=1)
    start_method: str = Field(default="forkserver", pattern="^(spawn|forkserver)$")
    dask_scheduler_address: str = ""
    slurm: SlurmConfig | None = None  # a [workers.slurm] table: Dask on Slurm
    max_in_flight: int = Field(default=4, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    retry_backoff_s: float = Field(default=5.0, ge=0.0)
    newest_share: float = Field(default=0.25, ge=0.0, le=1.0)
    drain_timeout_s: float = Field(default=60.0, ge=0.0)
    # local pool workers: glibc keeps freed memory for the next task
    # (livestream.scheduling.allocator; docs/throughput.md)
    keep_freed_memory: bool = True

    @model_validator(mode="after")
    def _one_cluster(self) -> WorkersConfig:
        if self.slurm is not None and self.dask_scheduler_address:
            raise ValueError(
                "dask_scheduler_address and a [workers.slurm] table both name a "
                "cluster: keep one"
            )
        return self


class MetricsConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)


class DashboardConfig(_Section):
    """The operator's web page (:mod:`livestream.dashboard`); docs/dashboard.md.

    Read-only; bound to the loopback interface unless ``host`` says otherwise
    (put a reverse proxy in front to show it elsewhere)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8790, ge=0, le=65535)  # 0: any free port


class MqttConfig(_Section):
    host: str = ""
    port: int = Field(default=1883, ge=1, le=65535)
    tls: bool = False
    ca_file: Path | None = None  # with tls; None: the system's CA store
    username: str = ""
    password_file: Path | None = None
    outbox_size: int = Field(default=10_000, ge=1)
    keepalive_s: int = Field(default=30, ge=1)

    @property
    def enabled(self) -> bool:
        return bool(self.host)

    @field_validator("password_file")
    @classmethod
    def _password_file_readable(cls, value: Path | None) -> Path | None:
        # read at start-up by the publisher: a missing file is a config error now
        if value is not None:
            try:
                value.read_bytes()
            except OSError as exc:
                raise ValueError(
                    f"password file {str(value)!r} cannot be read: {exc.strerror}"
                ) from None
        return value


def _table_tag(table: Any) -> str:
    """The union member a stage table is checked against: its ``kind``."""
    kind = table.get("kind") if isinstance(table, Mapping) else table.kind
    kind = str(kind)
    return PLUGIN_TAG if ":" in kind else kind


PLUGIN_TAG = "package.module:function"
_KNOWN_KINDS = [kind_of_model(model) for model in BUILTIN_PARAMS]

# One stage table, checked against its kind's parameter model.
StageTable = Annotated[
    Annotated[NoopParams, Tag("noop")]
    | Annotated[MotionParams, Tag("motion")]
    | Annotated[CtfParams, Tag("ctf")]
    | Annotated[CurateParams, Tag("curate")]
    | Annotated[PickParams, Tag("pick")]
    | Annotated[ExtractParams, Tag("extract")]
    | Annotated[PluginParams, Tag(PLUGIN_TAG)],
    Discriminator(
        _table_tag,
        custom_error_type="unknown_stage_kind",
        custom_error_message=(
            f"unknown stage kind; known: {_KNOWN_KINDS} or {PLUGIN_TAG!r}"
        ),
    ),
]


class StagesConfig(BaseModel):
    """``chain`` lists the stage names in order; ``[stages.<name>]`` holds params.

    A stage table may name its implementation with ``kind`` (default: the stage
    name); every other key is a parameter checked by that kind's parameter model
    (:mod:`livestream.stages.params`) when the configuration loads.  A chain stage
    without a table gets its kind's defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    chain: tuple[str, ...] = ("motion", "ctf")
    tables: dict[str, StageTable] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _gather_tables(cls, data: Any) -> Any:
        """The TOML shape (``chain`` beside one table per stage) -> ``tables``."""
        if not isinstance(data, Mapping) or "tables" in data:
            return data
        chain = data.get("chain", ("motion", "ctf"))
        tables: dict[str, Any] = {}
        for name, table in data.items():
            if name == "chain":
                continue
            if not isinstance(table, Mapping):
                raise ValueError(f"[stages.{name}] must be a table, got {table!r}")
            tables[name] = {"kind": name, **table}
        if isinstance(chain, list | tuple):
            for name in chain:
                tables.setdefault(str(name), {"kind": str(name)})
        return {"chain": chain, "tables": tables}

    @model_serializer(mode="plain")
    def _as_tables(self, info: SerializationInfo) -> dict[str, Any]:
        """Dumped in the TOML shape, each table with the keys it was given."""
        mode = "json" if info.mode_is_json() else "python"
        return {
            "chain": list(self.chain) if mode == "json" else self.chain,
            **{
                name: table.model_dump(mode=mode, exclude_unset=True)
                for name, table in self.tables.items()
            },
        }

    @model_validator(mode="after")
    def _check_chain(self) -> StagesConfig:
        if len(set(self.chain)) != len(self.chain):
            raise ValueError(f"stage names repeat in chain {list(self.chain)}")
        return self

    def table_of(self, name: str) -> StageParams:
        """The validated parameters of stage ``name``."""
        return self.tables[name]

    def kind_of(self, name: str) -> str:
        return self.tables[name].kind


class Class2dSection(_Section):
    """The online 2D classifier (:mod:`livestream.class2d.live`); docs/class2d.md."""

    enabled: bool = True
    job: str = Field(default=CLASS2D.folder, min_length=1)
    n_classes: int = Field(default=50, ge=1)
    min_pool: int = Field(default=1000, ge=2)  # particles before the first update
    snapshot_every: int = Field(default=20, ge=1)  # mini-batches between snapshots
    # particles a snapshot assigns (a random sample of the pool); None: all
    snapshot_sample: int | None = Field(default=20_000, ge=1)
    score_threshold: float = Field(default=0.5, ge=0.0, le=1.0)  # ranker selection
    # particles of selected classes further than this many robust sd from their
    # class median are dropped (aggregates, empty boxes); None keeps them all
    particle_outlier_mad: float | None = Field(default=4.0, gt=0.0)
    psi_step_deg: float = Field(default=6.0, gt=0.0, le=90.0)
    offset_range_px: float = Field(default=5.0, ge=0.0)
    max_resolution_a: float | None = Field(default=None, gt=0.0)
    max_particles_per_class: int | None = Field(default=None, ge=1)
    new_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    max_passes: float = Field(default=3.0, gt=0.0)
    n_minibatches: int = Field(default=200, ge=1)  # length of the VDAM schedule
    seed: int = Field(default=0, ge=0)


class Class3dSection(_Section):
    """The online 3D initial model (:mod:`livestream.class3d.live`), fed the
    particles of the selected 2D classes; docs/live3d.md.  Runs only when
    ``[class2d]`` runs too."""

    enabled: bool = True
    job: str = Field(default=INITIAL_MODEL.folder, min_length=1)
    # selected particles before the first mini-batch (RELION-4's initial models
    # are made from a few thousand)
    start_particles: int = Field(default=5000, ge=2)
    symmetry: str = "C1"  # a point group (C1, Cn, Dn, T, O, I), applied to the maps
    classes: int = Field(default=1, ge=1)
    # particles per mini-batch once the schedule has grown (it starts at a fifth)
    mini_batch: int = Field(default=500, ge=2)
    n_minibatches: int = Field(default=60, ge=1)  # length of the VDAM schedule
    snapshot_every: int = Field(default=10, ge=1)  # mini-batches between snapshots
    snapshot_sample: int = Field(default=5000, ge=2)  # particles a snapshot assigns
    box_px: int = Field(default=64, ge=16)  # working box (Fourier-cropped to it)
    angular_step_deg: float = Field(default=15.0, ge=3.0, le=45.0)
    particle_diameter_a: float | None = Field(default=None, gt=0.0)  # mask
    max_passes: float = Field(default=3.0, gt=0.0)  # then it waits for particles
    seed: int = Field(default=0, ge=0)
    # the gold-standard refinement of the current map (livestream.class3d.refinement):
    # on request (`livestream refine-now`, SIGUSR1) and, when on, at drain (within
    # workers.drain_timeout_s; it can take minutes)
    refine_job: str = Field(default=REFINE3D.folder, min_length=1)
    refine_at_drain: bool = False
    refine_lowpass_a: float = Field(default=40.0, gt=0.0)  # start map low-pass
    refine_max_iterations: int = Field(default=20, ge=2)
    # Rebalance Orientations (`livestream rebalance`, its defaults) of the newest
    # refinement's run_data.star, at drain when on
    rebalance_job: str = Field(default=REBALANCE.folder, min_length=1)
    rebalance_at_drain: bool = False
    # with classes > 1: once the VDAM schedule has run, classify the selection
    # against the model's K maps (livestream.class3d.classification), again when
    # it has grown by this fraction (0: once)
    classify_job: str = Field(default=CLASS3D.folder, min_length=1)
    classify_iterations: int = Field(default=15, ge=1)
    reclassify_growth: float = Field(default=0.5, ge=0.0)

    @field_validator("symmetry")
    @classmethod
    def _known_group(cls, value: str) -> str:
        # the groups pipelines.reconstruct.symmetry_matrices builds (the config
        # imports no pipelines code)
        if not re.fullmatch(r"[CD][1-9]\d*|T|O|I[1-4]?", value.upper()):
            raise ValueError(f"expected C<n>, D<n>, T, O, I or I1-I4 (got {value!r})")
        return value.upper()

    @field_validator("classes")
    @classmethod
    def _two_per_class(cls, value: int, info: ValidationInfo) -> int:
        start = info.data.get("start_particles")
        if start is not None and start < 2 * value:
            raise ValueError(
                f"{value} classes need start_particles >= {2 * value} (got {start})"
            )
        return value

    @field_validator("box_px")
    @classmethod
    def _even_box(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"must be even (got {value})")
        return value


class TemplatesSection(_Section):
    """The blob -> 2D -> template loop (:mod:`livestream.templates`);
    docs/picking.md.  Once the online 2D classes select at least
    ``min_selected_classes`` classes with at least ``min_particles`` particles
    behind them, the averages of the ``max_templates`` most populated ones become
    template set N and the ``pick_stage`` picks new exposures with them.
    ``repick_earlier``: also re-pick (and re-extract) the exposures picked before
    the current set, at start, on SIGHUP and when a new set is made (motion and
    CTF are not redone).  A set that picks fewer than ``min_pick_ratio`` times the
    blob picks on the last ``guard_exposures`` exposures, or finds less than
    ``min_blob_recovered`` of the blob picker's better half of picks there, is not
    used."""

    template_feed: bool = True
    pick_stage: str = Field(default="pick", min_length=1)
    min_selected_classes: int = Field(default=2, ge=1)
    min_particles: int = Field(default=200, ge=1)
    max_templates: int = Field(default=8, ge=1)
    # a set that replaces the current one waits until the same classes were chosen
    # in this many successive snapshots (the first set is made at once)
    stable_snapshots: int = Field(default=2, ge=1)
    # None: the template picker's own threshold (per micrograph, from its peaks)
    threshold_sd: float | None = Field(default=None, gt=0.0)
    repick_earlier: bool = False
    # the guard (livestream.templates.guard): a new set is used only if, on the
    # last ``guard_exposures`` picked exposures, it picks at least
    # ``min_pick_ratio`` times what the configured picker picks there (0: no guard)
    guard_exposures: int = Field(default=3, ge=1)
    min_pick_ratio: float = Field(default=0.5, ge=0.0)
    # ... and finds at least this share of the configured picker's better half of
    # picks (scores at or above their median; 0: not checked)
    min_blob_recovered: float = Field(default=0.85, ge=0.0, le=1.0)


class ServiceConfig(_Section):
    session: SessionConfig = SessionConfig()
    project: ProjectConfig = ProjectConfig()
    workers: WorkersConfig = WorkersConfig()
    metrics: MetricsConfig = MetricsConfig()
    dashboard: DashboardConfig = DashboardConfig()
    mqtt: MqttConfig = MqttConfig()
    stages: StagesConfig = StagesConfig()
    class2d: Class2dSection = Class2dSection()
    class3d: Class3dSection = Class3dSection()
    templates: TemplatesSection = TemplatesSection()
    # where it came from, so that SIGHUP can read the file again (reload_config)
    _source: Path | None = PrivateAttr(default=None)
    _overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def ledger_path(self) -> Path:
        return self.project.path / "livestream.sqlite"

    @property
    def source_path(self) -> Path | None:
        """The TOML file this configuration was read from (``None``: defaults)."""
        return self._source


def _key_of(loc: tuple[int | str, ...]) -> str:
    """An error location -> the TOML key (``stages.tables.<name>.<tag>.<key>`` is
    ``stages.<name>.<key>``; a wrong kind is ``stages.<name>.kind``)."""
    parts = list(loc)
    if parts[:2] == ["stages", "tables"] and len(parts) >= 3:
        rest = parts[4:] if len(parts) >= 4 else ["kind"]
        parts = ["stages", parts[2], *rest]
    return ".".join(str(part) for part in parts) or "<root>"


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = _key_of(item["loc"])
        value = item.get("input")
        if item["type"] == "unknown_stage_kind" and isinstance(value, Mapping):
            value = value.get("kind")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{source}: key {key!r}: {item['msg']}{shown}")
    return "\n".join(lines)


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServiceConfig:
    """Read ``path`` (TOML; ``None`` = defaults), apply ``overrides``, validate.

    ``overrides`` is nested like the file (``{"session": {"path": ...}}``); CLI
    flags arrive this way and win over the file.
    """
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    if overrides:
        data = _merge(data, overrides)
    try:
        config = ServiceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    config._source = None if path is None else Path(path)
    config._overrides = dict(overrides or {})
    return config


def reload_config(config: ServiceConfig) -> ServiceConfig:
    """Read ``config``'s file again with the same overrides (command-line flags);
    raise :class:`ConfigError` if it is no longer valid."""
    return load_config(config.source_path, config._overrides)


async def reloads(
    reload: asyncio.Event, current: Callable[[], ServiceConfig], who: str
) -> AsyncIterator[ServiceConfig]:
    """The config file read again each time ``reload`` is set (SIGHUP), for as long
    as the caller iterates; a file that is no longer valid is logged, naming
    ``who`` keeps its running configuration, and skipped."""
    while True:
        await reload.wait()
        reload.clear()
        try:
            config = reload_config(current())
        except ConfigError as exc:
            log.error(
                "%s: reload refused, keeping the running configuration: %s", who, exc
            )
            continue
        yield config
