"""Faults of the environment (issue #11, part 2): a full project disk, a killed
daemon's workers and attempts, a missing MQTT password file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from livestream.config import ConfigError, load_config
from livestream.telemetry.mqtt import EventPublisher, MqttSettings
from tests.livestream.conftest import free_port


# -- MQTT credentials --------------------------------------------------------------
def test_missing_password_file_is_a_config_error_naming_key_and_file(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-password"
    path = tmp_path / "live.toml"
    path.write_text(f'[mqtt]\nhost = "broker"\npassword_file = "{missing}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "'mqtt.password_file'" in message
    assert str(missing) in message
    assert str(path) in message


def test_readable_password_file_is_accepted(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    config = load_config(None, {"mqtt": {"host": "b", "password_file": secret}})
    assert config.mqtt.password_file == secret


async def test_password_without_tls_warns_once_naming_the_broker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens: the message stays queued
    settings = MqttSettings(
        host="127.0.0.1",
        port=port,
        username="krios1",
        password="s3cret",
        reconnect_min_s=0.05,
        reconnect_max_s=0.1,
        drain_timeout_s=0.05,
    )
    with caplog.at_level(logging.WARNING, logger="livestream.telemetry.mqtt"):
        async with EventPublisher(settings, "session"):
            pass
    warnings = [
        r.getMessage() for r in caplog.records if "unencrypted" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert f"127.0.0.1:{port}" in warnings[0]
    assert "s3cret" not in warnings[0]


async def test_password_over_tls_or_no_password_does_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = MqttSettings(
        host="127.0.0.1", port=free_port(), username="krios1", drain_timeout_s=0.05
    )
    with caplog.at_level(logging.WARNING, logger="livestream.telemetry.mqtt"):
        async with EventPublisher(settings, "session"):
            pass
    assert not [r for r in caplog.records if "unencrypted" in r.getMessage()]
