"""The command line: parse, call the library, print, map errors to exit codes.

Data (tables, JSON) goes to stdout; progress, logs and errors go to stderr. One module per
group of commands; what they share (app, consoles, exit codes, checks) is in common.py.

Start-up counts (a warm rescan's whole process takes ~0.1 s): the modules that declare commands or typer
callbacks do without `from __future__ import annotations`, because typer reads every command's
parameters at every start, three times each, and string annotations are compiled and evaluated
each time (~4 ms for all the commands); rich is imported when something is drawn (a table, a
progress bar, a message), so `scan --json --quiet` never imports it; and main() spares the
interpreter's teardown its last garbage collection (spare_the_last_collection).
"""
from __future__ import annotations

from . import train, scan, apply, audit, model, review, init_config  # noqa: F401  (registers the commands, in help order)
from . import decide  # noqa: F401  (accept, reject, withdraw, decisions: a person's decisions)
from . import learn  # noqa: F401  (learn: a new model version from a review)
from .common import (  # noqa: F401  (the public names of imgclean.cli)
    EXIT_ERROR, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK, EXIT_REJECTED, EXIT_SKIPPED, EXIT_TERMINATED, EXIT_USAGE,
    Device, Method, app, resolve_device,
)
from .init_config import settings_file_template  # noqa: F401
from .runs import StopFlag  # noqa: F401


def main() -> None:
    """The `imgclean` console script: one command, then the process exits."""
    try:
        app()
    except SystemExit as exc:
        leave_if_distributed(exc.code)
        spare_the_last_collection()
        raise
    leave_if_distributed(0)
    spare_the_last_collection()


def spare_the_last_collection() -> None:
    """The command is done and the process exits next: gc.freeze() moves every object alive now
    out of the garbage collector's reach, so the interpreter's teardown does not traverse them
    all once more (~20 ms of a warm rescan's ~0.1 s, with some 300 modules loaded). atexit
    handlers still run, the streams are flushed, and objects freed by their last reference are
    finalized as before; only objects left in reference cycles are not (the memory goes back to
    the system with the process), which is why a command closes what it opened before it returns."""
    import gc

    gc.freeze()


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
