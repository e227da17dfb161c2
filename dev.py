#!/usr/bin/env python3
"""Set up and run livestream on a machine that has only python3.

    python3 dev.py demo     # create .venv, install, run the main job (the live demo)
    python3 dev.py test     # create .venv, install, lint, type-check, run the test suite

The virtual environment lives in ``.venv`` next to this file and is reinstalled only
when ``pyproject.toml`` changes.  Extra arguments after the command are passed on
(``python3 dev.py test -k ledger``, ``python3 dev.py demo --exposures 5``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".installed-from"


def _pyproject_digest() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv() -> None:
    """Create .venv and install the project with its test extras if needed."""
    if not PY.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    digest = _pyproject_digest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("dev.py: installing livestream and its test dependencies", flush=True)
    pip = [str(PY), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-q", "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(digest)


def run(*cmd: str) -> int:
    print("dev.py: $", " ".join(cmd), flush=True)
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".venv" / "numba-cache"))
    # the suite starts many Python processes (services, their workers, the CLI
    # commands, the 3D children): with PYTHONDONTWRITEBYTECODE each one compiles
    # the project's modules again; __pycache__ is git-ignored
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def cmd_test(args: list[str]) -> int:
    checks = [
        (str(BIN / "ruff"), "check", "."),
        (str(BIN / "ruff"), "format", "--check", "."),
        (str(BIN / "mypy")),
    ]
    for check in checks:
        cmd = (check,) if isinstance(check, str) else check
        rc = run(*cmd)
        if rc:
            print(f"dev.py: {' '.join(cmd)} failed", flush=True)
            return rc
    # the 20 slowest tests are printed: the suite must stay under 15 minutes
    return run(str(PY), "-m", "pytest", "-m", "not gpu", "--durations=20", *args)


def cmd_demo(args: list[str]) -> int:
    return run(str(BIN / "livestream"), "demo", *args)


COMMANDS = {"test": cmd_test, "demo": cmd_demo}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        return 2
    ensure_venv()
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
