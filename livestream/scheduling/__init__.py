"""Scheduling: bounded in-flight work on an executor (local process pool or Dask), retries, and quarantine."""
