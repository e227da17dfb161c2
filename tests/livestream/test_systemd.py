"""The systemd unit: ``systemd-analyze verify``, its security exposure, its settings.

``verify`` checks that ExecStart's binary exists, and /opt/livestream is not there on
a build machine, so the tests verify a temporary copy whose ExecStart points at this
virtual environment's ``livestream`` (or /bin/true when it is not installed); every
other line is the shipped unit's.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from livestream.config import load_config
from tests.livestream.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "livestream@.service"
EXAMPLE = REPO / "systemd" / "livestream.toml.example"
MAX_EXPOSURE = 3.0  # systemd-analyze: below 4.0 is "OK"; the unit scores about 1.4


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, f"unexpected time span {value!r}"
    return float(match[1]) * (60 if match[2] == "min" else 1)


@pytest.fixture
def testable_unit(tmp_path: Path) -> Path:
    livestream = Path(sys.executable).parent / "livestream"
    binary = str(livestream) if livestream.exists() else "/bin/true"
    text = re.sub(
        r"^ExecStart=\S+", f"ExecStart={binary}", UNIT.read_text(), flags=re.MULTILINE
    )
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def test_unit_passes_systemd_analyze_verify(testable_unit: Path) -> None:
    tool = require_tool("systemd-analyze")
    result = subprocess.run(
        [tool, "verify", str(testable_unit)],
        capture_output=True,
        text=True,
        check=False,
        cwd=testable_unit.parent,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "livestream@" not in output, output  # no warnings about the unit


def test_unit_security_exposure_is_low(testable_unit: Path) -> None:
    tool = require_tool("systemd-analyze")
    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(testable_unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(
        r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout
    )
    assert match, result.stdout + result.stderr
    score = float(match[1])
    print(f"systemd-analyze security: exposure {score} {match[2]}")
    assert score <= MAX_EXPOSURE, result.stdout
    assert match[2] == "OK"


def test_unit_settings_match_the_service_and_its_config(tmp_path: Path) -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Service.Type"] == ["notify"]
    assert s["Service.NotifyAccess"] == ["main"]
    assert s["Service.Restart"] == ["on-failure"]
    assert seconds(s["Service.WatchdogSec"][0]) >= 10
    assert s["Service.ExecStart"][0].endswith(" run --config /etc/livestream/%i.toml")
    assert s["Service.User"] == ["livestream"]
    assert s["Service.KillMode"] == ["mixed"]  # SIGTERM to the daemon, not its workers
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert s[f"Service.{key}"] == ["yes"], key
    assert s["Service.ProtectSystem"] == ["strict"]
    assert s["Service.CapabilityBoundingSet"] == [""]
    assert s["Service.RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert s["Service.MemoryDenyWriteExecute"] == ["no"]  # numba, see below
    # numba's cache lives in the CacheDirectory systemd creates and makes writable.
    assert "NUMBA_CACHE_DIR=%C/livestream/%i" in s["Service.Environment"]
    assert s["Service.CacheDirectory"] == ["livestream/%i"]

    # The example config fits this sandbox (instance krios1) and the stop timeout.
    # (its MQTT password file exists only on the microscope's host: stand in for it)
    password = tmp_path / "krios1.mqtt-password"
    password.write_text("secret\n")
    config = load_config(EXAMPLE, {"mqtt": {"password_file": password}})
    instance = "krios1"
    (writable,) = (p.replace("%i", instance) for p in s["Service.ReadWritePaths"])
    (read_only,) = (p.replace("%i", instance) for p in s["Service.ReadOnlyPaths"])
    assert config.project.path.is_relative_to(writable)
    assert config.session.path.is_relative_to(read_only)
    assert all(root.is_relative_to(read_only) for root in config.session.movie_roots)
    # Draining plus the MQTT flush and checkpoint must end before systemd kills.
    assert (
        seconds(s["Service.TimeoutStopSec"][0]) >= config.workers.drain_timeout_s + 30
    )


MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    if sys.argv[1] == "deny":
        libc = ctypes.CDLL(None, use_errno=True)
        # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: what MemoryDenyWriteExecute=yes sets
        if libc.prctl(65, 1, 0, 0, 0) != 0:
            print("unsupported", flush=True)
            sys.exit(0)
    import numba
    print(numba.njit(lambda x: x + 1)(41), flush=True)
    """
)


@pytest.mark.parametrize("mode", ["allow", "deny"])
def test_numba_needs_memory_that_becomes_executable(mode: str, tmp_path: Path) -> None:
    """Why the unit keeps MemoryDenyWriteExecute=no: numba cannot even import."""
    result = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE, mode],
        capture_output=True,
        text=True,
        check=False,
        env={"NUMBA_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    if result.stdout.strip() == "unsupported":
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    if mode == "allow":
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "42"
    else:
        assert result.returncode != 0
        assert "cannot allocate executable memory" in result.stderr
