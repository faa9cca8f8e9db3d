"""Test and offline-default helpers: tiny random-weight checkpoints (needs the ``tiny`` extra: torch)."""
