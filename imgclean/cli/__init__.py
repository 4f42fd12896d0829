"""The command line: parse, call the library, print, map errors to exit codes.

Data (tables, JSON) goes to stdout; progress, logs and errors go to stderr. One module per
group of commands; what they share (app, consoles, exit codes, checks) is in common.py.
"""
from __future__ import annotations

from . import train, scan, apply, audit, model, review, init_config  # noqa: F401  (registers the commands, in help order)
from .common import (  # noqa: F401  (the public names of imgclean.cli)
    EXIT_ERROR, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK, EXIT_REJECTED, EXIT_SKIPPED, EXIT_TERMINATED, EXIT_USAGE,
    Device, Method, app, resolve_device,
)
from .init_config import settings_file_template  # noqa: F401
from .runs import StopFlag  # noqa: F401


def main() -> None:
    app()
