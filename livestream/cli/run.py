"""Watch a session folder and process every exposure exactly once, live.

Example::

    livestream run --session /mnt/epu/Supervisor_20250108 \
        --movies /mnt/dosefractions/cm40593-1 --project /data/cm40593-1 \
        --config /etc/livestream/krios1.toml

Flags override the config file; SIGTERM or Ctrl-C drain and stop (a second
signal exits at once).  Progress: ``livestream status --project DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from livestream.cli.console import INPUT_ERROR_STATUS, require_file, require_folder
from livestream.config import ConfigError, ServiceConfig, load_config
from livestream.daemon import run_service

__all__ = ["add_args", "config_from_args", "main"]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session", type=Path, help="the session folder (read only)")
    parser.add_argument("--project", type=Path, help="the project folder (written)")
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument(
        "--movies",
        type=Path,
        action="append",
        help="a folder with the movies, if not inside the session folder (repeatable)",
    )
    parser.add_argument("--settle-time-s", type=float, help="session.settle_time_s")
    parser.add_argument(
        "--polling", choices=["auto", "true", "false"], help="session.polling"
    )
    parser.add_argument("--workers", type=int, help="workers.n_processes")
    parser.add_argument("--dask", metavar="ADDRESS", help="Dask scheduler address")
    parser.add_argument("--metrics-port", type=int, help="metrics.port (0: any)")
    parser.add_argument(
        "--dashboard-port", type=int, help="dashboard.port (0: any free port)"
    )
    parser.add_argument("--mqtt-host", help="MQTT broker host (empty: off)")
    parser.add_argument(
        "--retry-quarantined",
        action="store_true",
        help="give quarantined stages another set of attempts",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING")


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    """The config file (if any) with the flags laid over it."""
    overrides: dict[str, dict[str, Any]] = {}

    def put(section: str, key: str, value: object) -> None:
        if value is not None:
            overrides.setdefault(section, {})[key] = value

    put("session", "path", args.session)
    put("session", "movie_roots", args.movies)
    put("session", "settle_time_s", args.settle_time_s)
    put("session", "polling", args.polling)
    put("project", "path", args.project)
    put("workers", "n_processes", args.workers)
    put("workers", "dask_scheduler_address", args.dask)
    put("metrics", "port", args.metrics_port)
    put("dashboard", "port", args.dashboard_port)
    put("mqtt", "host", args.mqtt_host)
    return load_config(args.config, overrides)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.config is not None:
        require_file(args.config, "config file")
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"livestream run: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    require_folder(config.session.path, "session folder (key 'session.path')")
    return asyncio.run(run_service(config, retry_quarantined=args.retry_quarantined))
