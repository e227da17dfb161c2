"""The TOML config: defaults that work, errors that name the key, flags that win."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from livestream.config import ConfigError, Polling, SoftwareChoice, load_config
from livestream.stages.params import (
    DEFAULT_DIAMETER_MAX_A,
    CtfParams,
    NoopParams,
    PickParams,
)


def test_no_file_gives_working_defaults() -> None:
    config = load_config()
    assert config.metrics.host == "127.0.0.1"
    assert not config.mqtt.enabled
    assert config.stages.chain == ("motion", "ctf")
    assert config.session.polling is Polling.AUTO
    assert config.ledger_path == config.project.path / "livestream.sqlite"


def test_file_is_read_and_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "live.toml"
    path.write_text(
        '[session]\npath = "/data/epu"\nsoftware = "serialem"\nsettle_time_s = 3\n'
        "[workers]\nn_processes = 6\n"
        '[stages]\nchain = ["a"]\n[stages.a]\nkind = "noop"\nsleep_s = 0.5\n'
    )
    config = load_config(path, {"workers": {"n_processes": 2}})
    assert config.session.path == Path("/data/epu")
    assert config.session.software is SoftwareChoice.SERIALEM
    assert config.session.settle_time_s == 3.0
    assert config.workers.n_processes == 2  # the flag wins over the file
    assert config.stages.table_of("a") == NoopParams(sleep_s=0.5)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[workers]\nn_processes = 0\n", "'workers.n_processes'"),
        ("[session]\nsettle_tme_s = 3\n", "'session.settle_tme_s'"),
        ('[session]\npolling = "sometimes"\n', "'session.polling'"),
        ("[metrics]\nport = 70000\n", "'metrics.port'"),
        (
            '[stages]\nchain = ["a"]\n[stages.a]\nkind = "noop"\nsleep_s = "x"\n',
            "'stages.a.sleep_s'",
        ),
        ('[stages]\nchain = ["a"]\n[stages.a]\nkind = "nonsense"\n', "'stages.a.kind'"),
        (
            '[stages]\nchain = ["a"]\n[stages.a]\nkind = "noop"\nsleeep_s = 1\n',
            "'stages.a.sleeep_s'",
        ),
        (
            '[stages]\nchain = ["ctf"]\n[stages.ctf]\ncs_mm = "big"\n',
            "'stages.ctf.cs_mm'",
        ),
        (
            (
                '[stages]\nchain = ["p"]\n[stages.p]\nkind = "pick"\n'
                "diameter_min_a = 200\ndiameter_max_a = 150\n"
            ),
            "'stages.p.diameter_max_a'",
        ),
        ('[stages]\nchain = ["a"]\n[stages.b]\nkind = "nonsense"\n', "'stages.b.kind'"),
        ('[class3d]\nsymmetry = "Q7"\n', "'class3d.symmetry'"),
        ("[class3d]\nbox_px = 33\n", "'class3d.box_px'"),
        ("[class3d]\nstart_particles = 4\nclasses = 3\n", "'class3d.classes'"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_broken_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[session\npath = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_polling_accepts_toml_booleans(tmp_path: Path) -> None:
    path = tmp_path / "live.toml"
    path.write_text("[session]\npolling = true\n")
    assert load_config(path).session.polling is Polling.TRUE


def test_run_flags_override_the_file(tmp_path: Path) -> None:
    from livestream.cli.main import build_parser
    from livestream.cli.run import config_from_args

    path = tmp_path / "live.toml"
    path.write_text('[workers]\nn_processes = 8\n[session]\npath = "/from/file"\n')
    args = build_parser().parse_args(
        ["run", "--config", str(path), "--session", "/from/flag", "--workers", "3",
         "--movies", "/m1", "--movies", "/m2", "--project", str(tmp_path / "p")]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.session.path == Path("/from/flag")
    assert config.session.movie_roots == (Path("/m1"), Path("/m2"))
    assert config.workers.n_processes == 3
    assert config.project.path == tmp_path / "p"


def test_stage_tables_are_typed_by_kind_with_named_defaults(tmp_path: Path) -> None:
    path = tmp_path / "live.toml"
    path.write_text(
        '[stages]\nchain = ["motion", "ctf", "picker"]\n'
        '[stages.ctf]\ncs_mm = 2.0\n[stages.picker]\nkind = "pick"\n'
    )
    stages = load_config(path).stages
    assert stages.table_of("ctf") == CtfParams(cs_mm=2.0)
    picker = stages.table_of("picker")
    assert isinstance(picker, PickParams)
    assert picker.threshold_sd is None  # chosen per micrograph (docs/picking.md)
    assert picker.diameter_max_a == DEFAULT_DIAMETER_MAX_A
    # a chain stage without a table gets its kind's defaults
    assert stages.kind_of("motion") == "motion"
    assert stages.table_of("motion").model_dump(exclude={"kind"}) == (
        load_config().stages.table_of("motion").model_dump(exclude={"kind"})
    )


def test_pick_threshold_is_per_micrograph_unless_a_number_is_given(
    tmp_path: Path,
) -> None:
    """No ``threshold_sd``: the blob picker chooses it per micrograph (as
    ``livestream pick``); a positive number fixes it; the config error names the
    key and the value of anything else."""
    path = tmp_path / "live.toml"
    head = '[stages]\nchain = ["motion", "ctf", "pick"]\n[stages.pick]\n'
    path.write_text(head)
    assert load_config(path).stages.table_of("pick") == PickParams()
    assert PickParams().threshold_sd is None
    path.write_text(head + "threshold_sd = 3.5\n")
    picker = load_config(path).stages.table_of("pick")
    assert isinstance(picker, PickParams)
    assert picker.threshold_sd == 3.5
    for value, shown in [
        ("0", "0"),
        ("-4.5", "-4.5"),
        ("nan", "nan"),
        ("inf", "inf"),
        ('"auto"', "'auto'"),
    ]:
        path.write_text(head + f"threshold_sd = {value}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        message = str(caught.value)
        assert str(path) in message
        assert "key 'stages.pick.threshold_sd'" in message
        assert f"(got {shown})" in message


def test_run_with_a_bad_pick_threshold_exits_2_naming_key_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from livestream.cli.main import main

    path = tmp_path / "live.toml"
    path.write_text(
        '[stages]\nchain = ["motion", "ctf", "pick"]\n'
        "[stages.pick]\nthreshold_sd = -3.0\n"
    )
    assert main(["run", "--config", str(path)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"livestream run: {path}: key 'stages.pick.threshold_sd'")
    assert line.endswith("(got -3.0)")


def test_unknown_kind_error_says_which_kind_and_which_are_known(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[stages]\nchain = ["a"]\n[stages.a]\nkind = "nonsense"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "(got 'nonsense')" in message
    assert "'motion'" in message
    assert "package.module:function" in message


def test_config_imports_no_stage_implementation() -> None:
    code = (
        "import sys, livestream.config\n"
        "print(' '.join(m for m in ('livestream.stages.registry',"
        " 'livestream.stages.motion_ctf', 'pipelines') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
