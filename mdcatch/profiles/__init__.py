"""Detector and instrument profiles (profiles.toml plus a site override): gain orientation, EER grouping, super-resolution."""
