"""`imgclean COMMAND -h`: a compact plain-text help that reads at 80 columns.

typer's rich help draws four columns in a box (long name, short name, metavar, help): at 80
columns `fit -h` had a 19-character description column over 160 lines, cropped words with "…"
and showed some defaults twice. This is click's and argparse's layout instead: one column for
the option as it is typed (`-o, --output PATH`), at most TERM_MAX characters wide (a longer one
puts its help on the next line), the rest of the width for the help, and one bracket of extras
(`[default: 256; x>=1]`) kept whole. Plain text, so -h imports no rich and reads the same on a
terminal, in a pipe and in docs/cli.md (scripts/cli_reference.py uses shown_default too).
"""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import os
import shutil
import textwrap
from enum import Enum

MIN_WIDTH, MAX_WIDTH = 40, 100  # lines longer than 100 characters are hard to follow
INDENT, GAP = 2, 2
TERM_MAX = 28  # the widest option column; at 80 columns the help gets 48 characters or more
# click's type names (typer's copy of click says "int" and "str" where click says "integer" and "text").
TYPE_METAVARS = {"int": "INT", "integer": "INT", "int range": "INT", "integer range": "INT", "float": "FLOAT",
                 "float range": "FLOAT", "str": "TEXT", "text": "TEXT", "path": "PATH", "boolean": "BOOL",
                 "filename": "FILE", "uuid": "UUID"}


def help_width() -> int:
    """The terminal's width ($COLUMNS first; 80 in a pipe), between MIN_WIDTH and MAX_WIDTH."""
    return max(MIN_WIDTH, min(MAX_WIDTH, shutil.get_terminal_size((80, 24)).columns))


def shown_default(param):
    """The default -h shows for `param`, or None: none for required parameters, empty defaults,
    plain flags, show_default=False, or a help text that says its own "[default: ...]" (the rule
    that keeps a default from being shown twice)."""
    if param.required or getattr(param, "hidden", False):
        return None
    if "[default:" in (param.help or ""):
        return None
    show = getattr(param, "show_default", None)
    if show is False:
        return None
    if isinstance(show, str):
        return show
    value = param.default
    if callable(value):
        return None
    if getattr(param, "is_flag", False):
        if not getattr(param, "secondary_opts", None):
            return None
        return _longest(param.opts) if value else _longest(param.secondary_opts)
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) or None
    text = _text(value)
    return text or None


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    return str(value)


def _longest(opts) -> str:
    return max(opts, key=len)


def range_text(param_type) -> str:
    """`x>=1`, `0<=x<=100`, `x<=1.0` for an int or float range; "" for other types."""
    low, high = getattr(param_type, "min", None), getattr(param_type, "max", None)
    low_op = "<" if getattr(param_type, "min_open", False) else "<="
    high_op = "<" if getattr(param_type, "max_open", False) else "<="
    if low is not None and high is not None:
        return f"{low}{low_op}x{high_op}{high}"
    if low is not None:
        return f"x{'>' if low_op == '<' else '>='}{low}"
    if high is not None:
        return f"x{high_op}{high}"
    return ""


def choices_of(param) -> list[str]:
    return [_text(c) for c in getattr(param.type, "choices", None) or ()]


def option_names(param) -> str:
    """`-o, --output`; a typer flag pair `--augment/--no-augment` as `--[no-]augment`."""
    names = sorted(param.opts, key=lambda o: (o.startswith("--"), len(o)))
    secondary = list(param.secondary_opts)
    longs = [o for o in names if o.startswith("--")]
    if len(longs) == 1 and secondary == ["--no-" + longs[0][2:]]:
        return ", ".join([*(o for o in names if o not in longs), "--[no-]" + longs[0][2:]])
    shown = ", ".join(names)
    return f"{shown} / {', '.join(secondary)}" if secondary else shown


def metavar(param, long_choices: bool = True) -> str:
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.metavar:
        return param.metavar
    choices = choices_of(param)
    if choices:
        return "[" + "|".join(choices) + "]" if long_choices else "CHOICE"
    name = getattr(param.type, "name", "value")
    return TYPE_METAVARS.get(name, name.upper())


def option_row(param, width: int) -> tuple[str, str]:
    """The option's term and its help with the extras bracket, as -h shows them."""
    term = " ".join(filter(None, (option_names(param), metavar(param))))
    extras = []
    if len(term) > width - INDENT and choices_of(param):  # a list of choices too long for the line
        term = " ".join((option_names(param), metavar(param, long_choices=False)))
        extras.append("choices: " + ", ".join(choices_of(param)))
    default = shown_default(param)
    if default is not None:
        extras.append(f"default: {default}")
    if range_text(param.type):
        extras.append(range_text(param.type))
    if param.required:
        extras.append("required")
    return term, _join(param.help, extras)


def argument_row(param) -> tuple[str, str]:
    """An argument's name as the usage line gives it, and its help with its default."""
    default = shown_default(param)
    return (param.metavar or param.name or "").upper(), _join(getattr(param, "help", None),
                                                             [f"default: {default}"] if default is not None else [])


def _join(help_text, extras) -> str:
    text = " ".join((help_text or "").split())
    bracket = f"[{'; '.join(extras)}]" if extras else ""
    return "\n".join(filter(None, (text, bracket)))  # the newline marks where the bracket starts


def wrap(text: str, width: int) -> list[str]:
    """Words wrapped to `width` (a word longer than that is cut: no line ever overflows); a
    bracket of extras (after a newline) goes on the last line if it fits whole, else its own."""
    words, _, bracket = text.partition("\n")
    lines = textwrap.wrap(words, width, break_on_hyphens=False)
    if bracket:
        if lines and len(lines[-1]) + 2 + len(bracket) <= width:
            lines[-1] += "  " + bracket
        else:
            lines += textwrap.wrap(bracket, width, break_on_hyphens=False)
    return lines


def rows_block(rows: list[tuple[str, str]], width: int) -> list[str]:
    """Terms in a column at most TERM_MAX wide (less on narrow terminals), their help beside them."""
    limit = min(TERM_MAX, (width - INDENT - GAP) * 2 // 5)
    fitting = [len(term) for term, _ in rows if len(term) <= limit]
    column = max(fitting) if fitting else limit
    text_width = width - INDENT - column - GAP
    lines = []
    for term, help_text in rows:
        described = wrap(help_text, text_width)
        if len(term) <= column:
            first = described.pop(0) if described else ""
            lines.append((" " * INDENT + term.ljust(column) + " " * GAP + first).rstrip())
        else:
            lines += [" " * INDENT + part for part in textwrap.wrap(term, width - INDENT, break_on_hyphens=False)]
        lines += [" " * (INDENT + column + GAP) + line for line in described]
    return lines


def paragraphs(text: str, width: int) -> list[str]:
    """A docstring's paragraphs, each re-wrapped and indented, a blank line between them."""
    lines: list[str] = []
    for para in (text or "").strip().split("\n\n"):
        if para.strip():
            lines += ([""] if lines else []) + wrap(" ".join(para.split()), width - INDENT)
    return [" " * INDENT + line if line else "" for line in lines]


def render_help(command, ctx, width: int | None = None) -> str:
    """The whole -h text of a command or of the group (with its commands)."""
    width = width or help_width()
    lines = usage_lines(command, ctx, width)
    if command.help:
        lines += ["", *paragraphs(command.help, width)]
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [argument_row(p) for p in params if p.param_type_name == "argument"]
    if any(help_text for _, help_text in arguments):
        lines += ["", "Arguments:", *rows_block(arguments, width)]
    options = [option_row(p, width) for p in params if p.param_type_name == "option"]
    if options:
        lines += ["", "Options:", *rows_block(options, width)]
    commands = getattr(command, "commands", None)
    if commands:
        listed = [(name, commands[name]) for name in command.list_commands(ctx)]
        rows = [(name, _summary(cmd)) for name, cmd in listed if not getattr(cmd, "hidden", False)]
        lines += ["", "Commands:", *rows_block(rows, width)]
    if getattr(command, "epilog", None):
        lines += ["", *paragraphs(command.epilog, width)]
    return "\n".join(lines) + "\n"


def usage_lines(command, ctx, width: int) -> list[str]:
    """`Usage: imgclean fit [OPTIONS] TRAIN_DIR`, wrapped under its pieces (or, on a terminal too
    narrow for that, under the word Usage)."""
    prefix = f"Usage: {ctx.command_path} "
    pieces = " ".join(command.collect_usage_pieces(ctx))
    indent = len(prefix) if width - len(prefix) >= 16 else INDENT
    wrapped = textwrap.wrap(pieces, width - indent, break_on_hyphens=False)
    if indent == len(prefix) and wrapped:
        return [prefix + wrapped[0], *(" " * indent + line for line in wrapped[1:])]
    return [prefix.rstrip(), *(" " * indent + line for line in wrapped)]


def _summary(command) -> str:
    """A command's line in the group's help: its short help, else its help's first paragraph."""
    text = command.short_help or (command.help or "").strip().split("\n\n")[0]
    return " ".join(text.split())
