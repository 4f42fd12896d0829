"""The consoles the commands print through (data on stdout, the rest on stderr), made at their
first use so that a run drawing nothing never imports rich, and the markup escape."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import logging
import re


class LazyConsole:
    """A rich Console made at its first use, then used through this object (out.print,
    err.is_terminal...): a run that prints nothing through rich (scan --json --quiet) never
    imports it (~20 ms of start-up). The console writes to sys.stdout or sys.stderr as they are
    at each print, as a Console made at import did."""

    def __init__(self, **settings):
        self._settings = settings
        self._console = None

    @property
    def console(self):
        """The rich Console itself (for rich's own classes, such as Progress)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._settings)
        return self._console

    def __getattr__(self, name):
        if name.startswith("_"):  # its own fields before __init__ (copy, pickle), dunder probes
            raise AttributeError(name)
        return getattr(self.console, name)


out = LazyConsole(soft_wrap=True)
err = LazyConsole(stderr=True, soft_wrap=True)
log = logging.getLogger("imgclean")


def rich_console(console):
    """The rich Console behind `console` (a LazyConsole, or a Console as tests put in its place)."""
    return console.console if isinstance(console, LazyConsole) else console


# What rich.markup.escape does, without importing rich (~18 ms) just to build the commands:
# a "[" that would open a markup tag gets a backslash (and so do the backslashes before it).
# tests/test_cli_help.py checks it against the installed rich's, on every help text and odd strings.
_MARKUP_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def escape(markup: str) -> str:
    """Text shown as it is where rich reads markup (error lines)."""
    markup = _MARKUP_TAG.sub(lambda m: f"{m.group(1)}{m.group(1)}\\{m.group(2)}", markup)
    if markup.endswith("\\") and not markup.endswith("\\\\"):
        return markup + "\\"
    return markup


def counts_table(title: str, counts: dict, width: int):
    """A rich table of named counts: one row under a header of their names when that fits
    `width` whole, else one row per count (name, value). rich fits a table that is too wide by
    cropping its headers (`label_iss…` at 80 columns); this never does."""
    from rich.table import Table

    cells = {str(name): str(value) for name, value in counts.items()}
    # rich's default box: each column is its text, a space either side and one bar, plus the left edge
    needed = sum(max(len(name), len(value)) + 3 for name, value in cells.items()) + 1
    if needed <= width:
        table = Table(title=title)
        for name in cells:
            table.add_column(name, justify="right")
        table.add_row(*cells.values())
        return table
    table = Table(title=title, show_header=False)
    table.add_column("count")
    table.add_column("value", justify="right")
    for name, value in cells.items():
        table.add_row(name, value)
    return table
