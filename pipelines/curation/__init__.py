"""Curation: per-exposure accept/reject rules on motion, CTF and ice figures."""
