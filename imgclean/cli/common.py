"""What every command shares: the app (its Command and Group classes: help layout, usage and
runtime errors), exit codes, error lines, logging, progress, device choice and the checks on
paths that imgclean writes. The consoles are console.py's, usage errors' text usage.py's."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import glob
import json
import logging
import os
import sys
import warnings
from enum import Enum
from pathlib import Path

import typer

from .. import __version__
from ..errors import ImgcleanError
from ..detectors.registry import method_names
from ..pipeline.engines.registry import names as engine_names
from .console import LazyConsole, err, escape, log, out, rich_console  # noqa: F401  (imported from here by the commands)
from .usage import ClickException, click_error_text, current_context, say_usage_error

from ..jobs.base import (  # noqa: F401  (the exit codes: the library's results own them; imported from here by the commands)
    EXIT_ERROR, EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK, EXIT_REJECTED, EXIT_SKIPPED, EXIT_TERMINATED,
    EXIT_USAGE,
)


class Command(typer.core.TyperCommand):
    """A typer command whose help and usage read the same under every typer release we support.

    - -h is help_text.render_help's compact layout (not typer's rich panels).
    - Usage lines name arguments in capitals (`fit [OPTIONS] TRAIN_DIR`, `info [MODEL]`);
      typer 0.29 writes `{train_dir}`. (typer 0.29 vendors click, so parameters are told
      apart by param_type_name, not by click's classes.)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.param_type_name == "argument" and not param.metavar and param.name:
                param.metavar = param.name.upper()  # the help names it as the usage line does

    def format_help(self, ctx, formatter) -> None:
        from .help_text import render_help

        formatter.write(render_help(self, ctx))

    def invoke(self, ctx):
        """Run the command; an ImgcleanError that escapes it becomes its one-line message: a
        request refused as asked (jobs.base.refusal_classes) as a usage error, exit 2; LockHeld
        as the line naming the busy folder, EXIT_LOCKED; any other, exit 1. The one place the CLI
        turns imgclean's errors into exits; commands catch only what they say otherwise."""
        from .. import tuning

        try:
            with tuning.using(tuning.from_env()):  # the IMGCLEAN_* switches, read once per command
                return super().invoke(ctx)
        except ImgcleanError as exc:
            from ..jobs.base import refusal_classes
            from ..quarantine.locking import LockHeld

            if isinstance(exc, LockHeld):
                raise locked(exc) from None
            if isinstance(exc, refusal_classes()):
                raise usage_error(str(exc)) from None
            raise fail(str(exc)) from None

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(argument_usage(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class Group(typer.core.TyperGroup):
    """The `imgclean` group: its -h in the compact layout, and the one place where a usage
    error (click's UsageError, BadParameter, NoSuchOption, MissingParameter...) is said: as
    say_usage_error's one line and hint instead of typer's box, exit code 2."""

    def format_help(self, ctx, formatter) -> None:
        from .help_text import render_help

        formatter.write(render_help(self, ctx))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # the caller handles click's exceptions itself
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            # Without standalone mode typer's main raises click's errors instead of drawing
            # them, and returns the exit code of a typer.Exit (or the command's None).
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            show_click_error(exc)
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.stderr.write("Aborted!\n")
            sys.exit(EXIT_ERROR)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def show_click_error(exc) -> None:
    """A click error said as every usage error is (usage.say_usage_error)."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `imgclean` alone: the help is the answer
        text = exc.format_message()
        if text:
            sys.stdout.write(text.rstrip("\n") + "\n")
        return
    message, hint = click_error_text(exc)
    say_usage_error(message, getattr(exc, "ctx", None), hint)


def argument_usage(param) -> str:
    name = (param.metavar or param.name or "").upper()
    shown = name if param.required else f"[{name}]"
    return shown + "..." if param.nargs != 1 else shown


app = typer.Typer(
    name="imgclean",
    cls=Group,
    help="Keep image datasets clean: learn what belongs from labelled folders, then find and "
    "quarantine images that do not belong. Scores: higher = more out-of-distribution.",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    # Explicit (the default changed between typer releases), though neither typer's rich help
    # nor its error box is drawn: -h is help_text's, usage errors are Group.main's.
    rich_markup_mode="rich",
)


def command(name: str | None = None):
    """app.command with imgclean's Command class."""
    return app.command(name, cls=Command)


# --method's choices: every registered detector and combining rule (detectors/registry.py).
Method = Enum("Method", {name: name for name in method_names()}, type=str)


class Covariance(str, Enum):
    tied = "tied"
    per_class = "class"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


Engine = Enum("Engine", {name: name for name in engine_names()}, type=str)  # pipeline/engines/registry.py


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print one clear error line and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    return typer.Exit(code)


def os_error(exc: OSError) -> typer.Exit:
    """An OSError as one line naming the file."""
    return fail(f"{exc.strerror or exc}: {os.fsdecode(exc.filename or '')}")


def usage_error(message: str) -> typer.Exit:
    """Say a usage error of imgclean's own checks as click's are said (say_usage_error, naming
    the command that is running) and return the Exit (code 2) to raise."""
    say_usage_error(message, current_context())
    return typer.Exit(EXIT_USAGE)



def exit_code(summary, fail_on_reject: bool = False, fail_on_skip: bool = False, stop_code: int = EXIT_INTERRUPTED,
              allow_unlisted: bool = False) -> tuple[int, str]:
    """(exit code, error line) of a run's summary: jobs.results.run_verdict has the rules (kept
    for callers of this name; the commands ask their result's exit_code)."""
    from ..jobs.results import ExitRules, run_verdict

    verdict = run_verdict(summary, ExitRules(fail_on_reject, fail_on_skip, allow_unlisted), stop_code)
    return verdict.code, verdict.message


def note(message: str) -> None:
    err.print(f"note: {message}", highlight=False, markup=False)


def locked(exc) -> typer.Exit:
    """LockHeld as one line naming the folder that is busy (which may not be the one given)."""
    from ..quarantine.locking import LOCK_NAME

    path = Path(getattr(exc, "path", "") or "")
    busy = path.parent if path.name == LOCK_NAME else path
    holder = getattr(exc, "holder", "") or "holder unknown"
    line = getattr(exc, "line", None) or f"{busy} is in use by another imgclean run ({holder}); try again when it ends"
    return fail(line, EXIT_LOCKED)


def setup_logging(quiet: bool, verbose: bool) -> None:
    """Warnings and errors on stderr; -v raises imgclean's own loggers only (not Pillow's).

    --json does not come here: it changes stdout only, so warnings still reach stderr.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else logging.WARNING)
    log.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)
    logging.captureWarnings(True)
    warnings.formatwarning = lambda message, *args, **kwargs: f"{message}"


def print_json(obj) -> None:
    # Plain print: rich would wrap or colour it; cron jobs parse this. Exactly one line (ASCII:
    # a newline in a file name is escaped), so a job appending it builds a JSON-lines log.
    sys.stdout.write(json.dumps(obj, ensure_ascii=True) + "\n")
    sys.stdout.flush()


# ---- device ------------------------------------------------------------------------------
# Device nodes a GPU driver creates (NVIDIA, AMD ROCm, WSL2). Without any of them (and not on a
# Mac, where MPS needs no device node) torch could only answer "cpu": say so without importing it.
GPU_DEVICE_PATHS = ("/dev/nvidia*", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def gpu_possible() -> bool:
    if sys.platform == "darwin":
        return True
    return any(glob.glob(pattern) for pattern in GPU_DEVICE_PATHS)


def resolve_device(requested: str) -> str:
    """The device to run on; 'auto' is a GPU when there is one. Imports torch only when needed,
    so a scan whose files are all cached on a machine without a GPU never imports it."""
    if requested == "cpu" or (requested == "auto" and not gpu_possible()):
        return "cpu"
    from ..nn.runtime import pick_device

    return str(pick_device(requested))


# ---- progress ----------------------------------------------------------------------------
class NoProgress:
    """make_progress's answer when no bar is drawn (--quiet, --json, stderr not a terminal): the
    part of rich's Progress the commands use (a context manager, add_task, update, disable),
    doing nothing, so such a run never imports rich.progress."""

    disable = True

    def __enter__(self) -> "NoProgress":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total=None, **fields) -> int:
        return 0

    def update(self, task, **changes) -> None:
        return None


def make_progress(quiet: bool):
    """A rich progress bar on stderr, or NoProgress when none is to be drawn (quiet, or stderr
    is not a terminal)."""
    if quiet or not err.is_terminal:
        return NoProgress()
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Items per second, once there is a rate to show."""

        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.1f}/s")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=rich_console(err),
        transient=False,
    )


# ---- paths imgclean writes ---------------------------------------------------------------
def check_output_path(option: str, path: Path, move_to: Path | None = None, is_dir: bool = False) -> None:
    """jobs.base.check_output_path (a RequestError: the Command says it as a usage error)."""
    from ..jobs.base import check_output_path as check

    check(option, path, move_to, is_dir)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"imgclean {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """imgclean: find images that do not belong in a dataset."""
