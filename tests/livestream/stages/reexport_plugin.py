"""A module outside livestream's packages that re-exports a built-in stage function:
the plugin point must not load livestream's own code through it."""

from livestream.stages.noop import run_noop

__all__ = ["run_noop"]
