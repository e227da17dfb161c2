"""The durable SQLite ledger: exposure x stage rows, their states and attempts, read-only queries, and reconciliation with the folders at start."""
