"""Usage errors as text: what a click error says, in one line, and the hint that goes with it.

common.Group.main catches click's errors (an unknown option, a bad value, a missing argument)
and common.usage_error says imgclean's own; both print through common.say_usage_error, so
every usage error reads `imgclean scan: error: MESSAGE` plus at most one hint line.
"""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import re
import sys

from .console import err, escape

try:
    from typer.core import _click  # the click typer runs on: typer >= 0.26 carries its own
except ImportError:  # pragma: no cover  (an older typer runs on click itself)
    import click as _click

ClickException = _click.exceptions.ClickException
UsageError = _click.exceptions.UsageError  # raise it where click parses (option callbacks)

# click names IntRange and FloatRange in its messages ("'abc' is not a valid int range.").
_RANGE_TYPE = re.compile(r"a valid (int|integer|float) range")
# C0 and C1 controls (and DEL) shown as escapes: an error stays one line in a log, whatever a
# path or an argument holds.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def click_error_text(exc) -> tuple:
    """(message, hint) for a click error; hint None means the default `try '... -h'`. For an
    unknown option the closest one ("Did you mean --move-to?"), not click's alphabetical list;
    for a missing argument the usage line as the hint."""
    message = exc.format_message()
    possibilities = getattr(exc, "possibilities", None)
    if possibilities:
        message = f"{exc.message} (Did you mean {' or '.join(closest(exc.option_name, possibilities))}?)"
    ctx, param = getattr(exc, "ctx", None), getattr(exc, "param", None)
    hint = None
    if ctx is not None and type(exc).__name__ == "MissingParameter" and getattr(param, "param_type_name", "") == "argument":
        hint = ctx.get_usage()
    return plain_type_message(message), hint


def plain_type_message(message: str) -> str:
    """click's "'abc' is not a valid int range." as "'abc' is not an integer."."""
    return _RANGE_TYPE.sub(lambda m: "an integer" if m.group(1).startswith("int") else "a number", message)


def closest(word: str, candidates) -> list:
    """The candidates most like `word` (ties kept), e.g. --move-to for --mvoe-to."""
    from difflib import SequenceMatcher

    scores = {c: SequenceMatcher(None, word, c).ratio() for c in candidates}
    best = max(scores.values())
    return [c for c in candidates if scores[c] == best]


def help_hint(ctx):
    """`try 'imgclean scan -h'` for the command of `ctx` (None without one)."""
    if ctx is None or ctx.command.get_help_option(ctx) is None:
        return None
    return f"try '{ctx.command_path} {ctx.help_option_names[0]}'"


def one_line(text: str) -> str:
    return _CONTROLS.sub(lambda m: repr(m.group())[1:-1], text)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


def current_context():
    """The click context of the command being run, or None outside one."""
    return _click.globals.get_current_context(silent=True)


def say_usage_error(message: str, ctx=None, hint: str | None = None) -> None:
    """A usage error on stderr: `imgclean scan: error: MESSAGE` and at most one hint line
    (default `try 'imgclean scan -h'`). Plain when stderr is not a terminal (a cron log gets
    two lines and no escape codes); "error:" in red on a terminal."""
    prog = ctx.command_path if ctx is not None else "imgclean"
    hint = one_line(hint if hint is not None else help_hint(ctx) or "")
    message = one_line(message)
    if stderr_is_terminal():
        err.print(f"{escape(prog)}: [bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
        if hint:
            err.print(escape(hint), style="dim", highlight=False, markup=True, soft_wrap=True)
        return
    sys.stderr.write(f"{prog}: error: {message}\n" + (f"{hint}\n" if hint else ""))
    sys.stderr.flush()
