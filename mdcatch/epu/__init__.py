"""Thermo Fisher EPU: the per-exposure XML, EpuSession.dm, fractionation files, and writers for the simulator and tests."""
