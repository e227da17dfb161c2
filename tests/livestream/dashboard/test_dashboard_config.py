"""``[dashboard]`` and ``--dashboard-port`` on ``livestream run`` and ``demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from livestream.cli import run
from livestream.config import ConfigError, load_config
from livestream.demo import command as demo


def test_defaults_bind_the_loopback_interface() -> None:
    config = load_config(None)
    assert config.dashboard.enabled
    assert config.dashboard.host == "127.0.0.1"
    assert config.dashboard.port == 8790


def test_a_bad_port_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"key 'dashboard\.port'.*got 70000"):
        load_config(None, {"dashboard": {"port": 70000}})
    with pytest.raises(ConfigError, match=r"key 'dashboard\.token'"):
        load_config(None, {"dashboard": {"token": "x"}})  # no actions: no token yet


def test_run_flag_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "live.toml"
    path.write_text('[dashboard]\nport = 9000\nhost = "0.0.0.0"\n')
    parser = argparse.ArgumentParser()
    run.add_args(parser)
    args = parser.parse_args(["--config", str(path), "--dashboard-port", "0"])
    config = run.config_from_args(args)
    assert config.dashboard.port == 0
    assert config.dashboard.host == "0.0.0.0"


def test_demo_flag_sets_the_port(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    demo.add_args(parser)
    args = parser.parse_args(["--dashboard-port", "0", "--project", str(tmp_path)])
    config = demo.demo_config(args, tmp_path / "session", tmp_path / "movies")
    assert config.dashboard.port == 0
    assert demo.demo_config(
        parser.parse_args([]), tmp_path / "s", tmp_path / "m"
    ).dashboard.enabled
