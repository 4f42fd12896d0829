"""The review page's decisions as one shell script of `imgclean` commands.

Per listed file the page offers what a person can decide about it (:func:`choices`): restore a
quarantined file (`imgclean restore`, which records it as accepted), accept a file left in place
(`imgclean accept --from-review`), reject a file the scan kept or a person accepted before
(`imgclean reject --from-review --move-to`). Each choice carries its whole command line, made
here; the page's script only joins the chosen lines under the header (:func:`render`, which the
page's JavaScript does the same way: style.SCRIPT), so no name is ever put together in the
browser.

Commands name the scanned folder and the quarantine once, as shell variables in the header
(ROOT, Q; ROOT2, Q2... when the page lists several), and each file relative to them:
``"$Q"/'sub/a b.png'``. Every name is one shell word (text.shell_quote: POSIX quotes, or ANSI-C
``$'...'`` for control characters and undecodable bytes), every command ends its options with
``--``, and each command is one line. A path is offered only when it passes the same checks as
a report's rows (reports/cells.py: relative, normalised, no NUL) and, for a quarantined file,
lies inside its quarantine; anything else gets no command.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..cells import RowError, check_relative
from .text import shell_quote

RESTORE, ACCEPT, REJECT = "restore", "accept", "reject"
# A reject needs a quarantine: when the page knows none, the command asks for Q and stops there.
NO_QUARANTINE = '"${Q:?set Q to your quarantine folder first, e.g. Q=/data/quarantine}"'
SHELLS = "bash or zsh"  # what runs $'...' quoting


@dataclass(frozen=True)
class Choice:
    """One decision the page offers for a file: `action` (restore, accept, reject) and its command."""

    action: str
    command: str


def _clean_absolute(path: str | None) -> str | None:
    """`path` when it is absolute, normalised and free of NUL; else None."""
    if not isinstance(path, str) or "\x00" in path or not os.path.isabs(path) or os.path.normpath(path) != path:
        return None
    return path


def _relative(path: str | None) -> str | None:
    try:
        return check_relative(path)
    except RowError:
        return None


class ReviewScript:
    """The commands of one page: names its folders as variables (in first-use order) and makes
    each file's choices. `head()` is the script's header; `render(lines)` the script."""

    def __init__(self, title: str = ""):
        self.title = title
        self._names: dict[tuple[str, str], str] = {}  # (kind, folder) -> variable name

    def _var(self, kind: str, folder: str) -> str:
        key = (kind, folder)
        if key not in self._names:
            n = sum(1 for k, _ in self._names if k == kind) + 1
            self._names[key] = kind if n == 1 else f"{kind}{n}"
        return f'"${self._names[key]}"'

    def _in(self, kind: str, folder: str, rel: str) -> str:
        return f"{self._var(kind, folder)}/{shell_quote(rel)}"

    def restore(self, quarantine: str | None, destination: str | None) -> str | None:
        """`imgclean restore -- Q PATH` for a file held in `quarantine`, or None."""
        q, dest = _clean_absolute(quarantine), _clean_absolute(destination)
        if q is None or dest is None or not dest.startswith(q.rstrip(os.sep) + os.sep):
            return None
        rel = _relative(os.path.relpath(dest, q))
        if rel is None:
            return None
        return f"imgclean restore -- {self._var('Q', q)} {self._in('Q', q, rel)}"

    def accept(self, root: str | None, path: str | None) -> str | None:
        """`imgclean accept --from-review --root ROOT -- PATH` for a file left in place, or None."""
        root, rel = _clean_absolute(root), _relative(path)
        if root is None or rel is None:
            return None
        return f"imgclean accept --from-review --root {self._var('ROOT', root)} -- {self._in('ROOT', root, rel)}"

    def reject(self, root: str | None, path: str | None, quarantine: str | None) -> str | None:
        """`imgclean reject --from-review --move-to Q --root ROOT -- PATH`, or None."""
        root, rel = _clean_absolute(root), _relative(path)
        if root is None or rel is None:
            return None
        q = _clean_absolute(quarantine)
        target = self._var("Q", q) if q is not None else NO_QUARANTINE
        return (f"imgclean reject --from-review --move-to {target} --root {self._var('ROOT', root)} -- "
                f"{self._in('ROOT', root, rel)}")

    def head(self) -> str:
        """The script's first lines: what it is, how to run it, and its folders."""
        lines = ["#!/bin/bash", f"# imgclean review decisions{': ' + _comment(self.title) if self.title else ''}",
                 f"# Run with {SHELLS}: one imgclean command a line (each says what it did)."]
        lines += [f"{name}={shell_quote(folder)}" for (_, folder), name in self._names.items()]
        return "\n".join(lines) + "\n"

    def render(self, lines: list[str]) -> str:
        """The script of the chosen command lines ('' when none): what the page's script makes."""
        return render(self.head(), lines)


def render(head: str, lines: list[str]) -> str:
    """The header then one command a line; '' when nothing was chosen. The page's JavaScript
    (style.SCRIPT) builds exactly this from the same header and lines."""
    return head + "\n".join(lines) + "\n" if lines else ""


def _comment(title: str) -> str:
    """A title as one comment line: printable characters only."""
    return "".join(c if c.isprintable() else "?" for c in title)[:200]


def choices(script: ReviewScript, *, status: str, action: str, path: str, destination: str | None,
            root: str | None, quarantine: str | None, sample: bool) -> list[Choice]:
    """What a person can decide about one listed file, as commands:

    - in the quarantine (moved there): restore;
    - rejected but left in place (a report-only scan, a dry run, changed): accept, or reject;
    - accepted by a person before: reject;
    - kept by the scan and shown for review (the review sample, the borderline files): accept, or reject.
    Files restored or discarded already get none."""
    wanted: list[tuple[str, str | None]] = []
    if action == "moved":
        wanted.append((RESTORE, script.restore(quarantine, destination)))
    elif action in ("restored", "discarded", "restore unfinished", "kept both", "rolled back", "unfinished"):
        pass
    elif status == "accepted":
        wanted.append((REJECT, script.reject(root, path, quarantine)))
    elif status != "ok" or sample:
        wanted.append((ACCEPT, script.accept(root, path)))
        wanted.append((REJECT, script.reject(root, path, quarantine)))
    return [Choice(a, c) for a, c in wanted if c is not None]
