"""Scanning a folder: the walk, the cache, the records and the moves around an engine."""
