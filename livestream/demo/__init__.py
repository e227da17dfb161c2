"""The demo: a simulated microscope writing an EPU or SerialEM session, run beside the live service."""
