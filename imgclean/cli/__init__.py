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
    try:
        app()
    except SystemExit as exc:
        leave_if_distributed(exc.code)
        raise
    leave_if_distributed(0)


def leave_if_distributed(code) -> None:
    """A process that ran in a torchrun group leaves through nn.distributed.leave_process (no
    interpreter teardown, where gloo can abort it after the work is done); others return. Looked
    up in sys.modules: a command that never joined a group never imports torch for this."""
    import sys

    dist = sys.modules.get("imgclean.nn.distributed")
    if dist is None or not dist.group_closed:
        return
    if isinstance(code, str):  # SystemExit("message"): printed, exit 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    dist.leave_process(code or 0)
