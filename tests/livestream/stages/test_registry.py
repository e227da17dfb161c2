"""One registry of stage kinds, filled at import; plugins checked when the chain is built."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from livestream.config import ConfigError, load_config
from livestream.ledger.schema import StageResult
from livestream.project.jobs import JOBS, SELECT
from livestream.stages.extract import run_extract_stage
from livestream.stages.params import (
    BUILTIN_PARAMS,
    CtfParams,
    ExtractParams,
    IndexRole,
    PickParams,
    StageParams,
    kind_of_model,
)
from livestream.stages.post_ctf import ctf_params_of, run_pick
from livestream.stages.registry import STAGE_KINDS, build_chain, resolve_kind
from livestream.stages.task import StageTask
from mdcatch import Exposure, Optics, Software
from mdcatch.crosscheck import DEFAULT_CS_MM
from pipelines.io.outputs import write_mrc
from pipelines.picking.picks import read_picks_star
from tests.pipelines.pick_synthetic import make_phantom, match_picks, simulate


class EchoParams(StageParams):
    index: str = "extract"
    word: str = "hello"


def run_echo(task: StageTask, params: EchoParams) -> StageResult:
    return StageResult(stage=task.stage, figures={"n_letters": float(len(params.word))})


run_echo.params_model = EchoParams  # type: ignore[attr-defined]
PLUGIN = f"{__name__}:run_echo"


def test_every_params_model_has_one_kind_and_its_relion_job() -> None:
    assert sorted(STAGE_KINDS) == sorted(kind_of_model(m) for m in BUILTIN_PARAMS)
    for name, kind in STAGE_KINDS.items():
        assert kind.params_model().kind == name
        if kind.relion_job is not None:
            assert kind.relion_job in JOBS
            assert kind.params_model.model_fields["job"].default == (
                kind.relion_job.folder
            )
    assert [k.name for k in STAGE_KINDS.values() if k.decides_curation] == ["curate"]
    assert STAGE_KINDS["curate"].relion_job == SELECT
    assert {k.index for k in STAGE_KINDS.values()} == {*IndexRole, None}


def test_unknown_kinds_are_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown stage kind 'nope'.*'motion'"):
        resolve_kind("nope")


@pytest.mark.parametrize(
    "kind",
    ["livestream.stages.noop:run_noop", "pipelines.motion.job:run_motion", "mdcatch:x"],
)
def test_a_plugin_kind_may_not_load_our_own_modules_by_name(kind: str) -> None:
    with pytest.raises(ValueError, match="names a module of livestream itself"):
        resolve_kind(kind)


def test_a_plugin_may_not_reach_our_own_code_through_a_re_export() -> None:
    kind = "tests.livestream.stages.reexport_plugin:run_noop"
    with pytest.raises(ValueError, match=r"resolves to livestream\.stages\.noop"):
        resolve_kind(kind)


def test_a_plugin_is_checked_by_its_own_model_when_the_chain_is_built() -> None:
    table = {"kind": PLUGIN, "index": "extract", "word": "live"}
    chain = build_chain(
        load_config(None, {"stages": {"chain": ["e"], "e": table}}).stages
    )
    (link,) = chain.links
    assert link.params == EchoParams(kind=PLUGIN, word="live")
    assert link.index is IndexRole.EXTRACT
    assert link.job == "Extract/job006"  # the default job of its index
    bad = {"chain": ["e"], "e": {**table, "wrod": "typo"}}
    with pytest.raises(ConfigError, match=r"key 'stages\.e\.wrod'"):
        build_chain(load_config(None, {"stages": bad}).stages)


def _task(
    tmp_path: Path, previous: dict[str, StageResult], params: object
) -> StageTask:
    exposure = Exposure(
        exposure_id="x",
        software=Software.EPU,
        metadata_path=tmp_path / "x.xml",
        movie_path=tmp_path / "x.tiff",
        acquired_utc=datetime(2026, 1, 1, tzinfo=UTC),
        optics=Optics(voltage_kv=300.0, pixel_size_a=1.0),  # no Cs: not reconciled
        exposure_time_s=2.0,
        total_dose_e_per_a2=40.0,
        n_frames=40,
        target_defocus_um=1.5,
    )
    assert isinstance(params, StageParams)
    return StageTask(
        stage="s",
        kind=params.kind,
        params=params,
        exposure=exposure,
        project_path=tmp_path,
        previous=previous,
    )


def test_a_rejected_exposure_is_skipped_with_a_typed_result(tmp_path: Path) -> None:
    rejected = {"curate": StageResult(stage="curate", accepted=False)}
    pick = run_pick(_task(tmp_path, rejected, PickParams()), PickParams())
    assert pick.skipped
    assert pick.figures == {"n_picks": 0.0}
    extract = run_extract_stage(
        _task(tmp_path, rejected, ExtractParams()), ExtractParams()
    )
    assert extract.skipped
    assert extract.figures["n_particles"] == 0.0


def test_ctf_without_cs_anywhere_takes_mdcatchs_default(tmp_path: Path) -> None:
    ctf = StageResult(
        stage="ctf", figures={"defocus_u_a": 15000.0, "defocus_v_a": 14000.0}
    )
    task = _task(tmp_path, {"ctf": ctf}, CtfParams())
    params = ctf_params_of(task, "ctf")
    assert params is not None
    assert params.cs_mm == DEFAULT_CS_MM
    assert params.voltage_kv == 300.0
    assert params.amplitude_contrast == task.exposure.optics.amplitude_contrast


def test_the_pick_stage_runs_the_learned_picker(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """``picker = "learned"``: the stage self-trains on the exposure's own blob
    candidates and writes the picks it keeps (the simulated particles)."""
    phantom = make_phantom(rng, diameter_a=160.0)
    sim = simulate(rng, phantom=phantom, shape=(640, 640), snr=0.1)
    rel = "MotionCorr/job002/Movies/x.mrc"
    write_mrc(tmp_path / rel, sim.image, pixel_size_a=4.0, float16=False)
    motion = StageResult(
        stage="motion", outputs={"micrograph": rel}, figures={"pixel_size_a": 4.0}
    )
    params = PickParams(
        picker="learned", diameter_min_a=120.0, diameter_max_a=200.0, edge_px=0
    )
    result = run_pick(_task(tmp_path, {"motion": motion}, params), params)
    picks = read_picks_star(
        tmp_path / result.outputs["coordinates"], pixel_size_a=4.0, shape=(640, 640)
    )
    recall, precision = match_picks(
        sim.x_px, sim.y_px, picks.x_px, picks.y_px, tolerance_px=8.0
    )
    assert result.figures["n_picks"] == len(picks)
    assert recall >= 0.9
    assert precision >= 0.9
