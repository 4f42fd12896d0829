"""Carrying out records: every rejected record a move through the quarantine."""
