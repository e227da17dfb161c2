"""Live curation: decisions from the ledger's figures, re-decided on SIGHUP without reprocessing, and their metrics."""
