"""The RELION project folder: job folders and the STAR indexes that gather per-exposure outputs."""
