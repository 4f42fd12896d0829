"""Text for the review page: HTML escaping that shows hostile names as they are, and shell quoting.

Paths may hold quotes, ``<``, ``&``, newlines, bidi controls or undecodable bytes (surrogate
escapes from os.fsdecode). :func:`text` makes any of them safe, visible HTML text;
:func:`restore_command` makes a shell command that, pasted into bash or zsh, runs exactly one
``imgclean restore`` with the exact bytes of each path.
"""
from __future__ import annotations

import html
import os
import shlex
from typing import Any


def text(value: Any) -> str:
    """`value` as HTML-escaped text that is always valid UTF-8 and shows control characters.

    Undecodable bytes (surrogate escapes from os.fsdecode) show as \\xNN, lone surrogates as
    \\uXXXX, newlines/tabs/other control characters as \\n, \\t, \\xNN.
    """
    if value is None:
        return ""
    out = []
    for ch in str(value):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or 0x7F <= o < 0xA0 or o in (0x2028, 0x2029):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return html.escape("".join(out), quote=True)


def num(n: int) -> str:
    return f"{n:,}"


def _printable(s: str) -> bool:
    return s.isprintable() and not any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def shell_quote(arg: str) -> str:
    """One shell word for `arg`, whatever bytes it holds.

    Printable names get POSIX single quotes (shlex.quote). Names with control characters
    (a newline), invisible format characters (bidi overrides) or undecodable bytes get ANSI-C
    quoting, ``$'...'`` with every such byte as ``\\xNN`` (bash, zsh, ksh, POSIX.1-2024 sh): the
    word shows every character, and copying it from a page keeps the exact bytes of the name.
    """
    if _printable(arg):
        return shlex.quote(arg)
    out = []
    for b in os.fsencode(arg):
        c = chr(b)
        out.append(c if 0x20 <= b < 0x7F and c not in "'\\" else f"\\x{b:02x}")
    return "$'" + "".join(out) + "'"


def restore_command(quarantine: str, path: str) -> str:
    """The `imgclean restore QUARANTINE PATH` command that puts one quarantined file back."""
    return " ".join(shell_quote(a) for a in ("imgclean", "restore", os.path.abspath(quarantine), os.path.abspath(path)))
