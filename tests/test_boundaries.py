"""The package boundaries of DESIGN.md hold at run time, not only in the linter."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("asyncio", "aiomqtt", "prometheus_client", "watchdog", "livestream")


@pytest.mark.parametrize("package", ["mdcatch", "pipelines"])
def test_importing_a_package_pulls_in_no_service_machinery(package: str) -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        f"import {package}\n"
        f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    if '.simulate' in m.name or not m.name.split('.')[-1].startswith('_'):\n"
        "        importlib.import_module(m.name)\n"
        f"print(' '.join(sorted(n for n in {FORBIDDEN!r} if n in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_import_has_no_side_effects_on_the_working_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = "import mdcatch, pipelines, livestream, livestream.cli.main"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []
