"""SerialEM: .mdoc autodoc files, movie header cross-checks, frame paths, and a writer for the simulator and tests."""
