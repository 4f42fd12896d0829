"""No function over MAX_LINES lines (issue 26): a function that long mixes jobs (cli/train.py:fit
once parsed, detected torchrun, drew progress, fitted and saved in 186 lines). Checked with ast,
from the `def` line to the last line of the body (the signature counts: a command with thirty
options leaves that much less room for its body). CHECKED lists the parts held to it so far; the
rest of the package joins it as its long functions are split."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "imgclean"
MAX_LINES = 80
CHECKED = ("api.py", "cli", "jobs")


def checked_files() -> list[Path]:
    files = []
    for part in CHECKED:
        path = PACKAGE / part
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function or method longer than `limit` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append((node.name, node.lineno, length))
    return found


def test_the_checked_parts_exist():
    files = checked_files()
    assert PACKAGE / "api.py" in files and PACKAGE / "cli" / "scan.py" in files and PACKAGE / "jobs" / "scan.py" in files


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_over_the_limit(path):
    assert long_functions(path.read_text(encoding="utf-8")) == []


def test_the_check_sees_a_long_function_and_a_long_method():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    source = f"def long():\n{body}\n\nclass C:\n    def short(self):\n        return 1\n\n    def longer(self):\n" + \
        "\n".join(f"        y{i} = {i}" for i in range(MAX_LINES)) + "\n"
    assert [(name, length) for name, _, length in long_functions(source)] == [("long", MAX_LINES + 1), ("longer", MAX_LINES + 1)]
