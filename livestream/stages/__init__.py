"""The per-exposure stages the scheduler runs: the stage protocol and registry, and the adapters over pipelines (motion, CTF, curate, pick, extract)."""
