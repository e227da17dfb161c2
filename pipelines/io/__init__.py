"""File formats shared by the stages: movies and micrographs in, crash-safe outputs (MRC, STAR, text) and particle STAR files."""
