"""The TOML config: defaults that work, errors that name the key, flags that win."""

from __future__ import annotations

from pathlib import Path

import pytest

from livestream.config import ConfigError, Polling, SoftwareChoice, load_config


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
    assert config.stages.params_of("a") == {"kind": "noop", "sleep_s": 0.5}


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
