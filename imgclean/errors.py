"""The one base class of imgclean's own errors.

Every error imgclean raises on purpose (bad input, a damaged model, a busy folder, a quarantine it
cannot use) is an ImgcleanError whose message is one line saying what to fix; the CLI turns any
of them into that line and an exit code, and a Python caller can catch them all at once. Each
module defines its own subclasses beside the code that raises them (ModelError in
store/model_files.py, QuarantineError in quarantine/moves.py, ...). Anything else that escapes
is a bug.
"""
from __future__ import annotations


class ImgcleanError(Exception):
    """Base of every error imgclean raises on purpose; str(error) is the message for the user."""


def all_error_classes() -> list[type[ImgcleanError]]:
    """Every subclass defined so far (for documentation and tests)."""
    seen, todo = [], [ImgcleanError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen
