"""Checking a training folder: cross-fitted label errors, foreign pictures, duplicates."""
