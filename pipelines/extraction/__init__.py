"""Particle extraction: boxes cut from micrographs, normalised, and the RELION Extract file layer."""
