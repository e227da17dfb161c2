"""Intake: watching the session folder, deciding when a file has settled, pairing metadata with movies into ready exposures."""
