"""Write docs/test-map.md: for each module of imgclean, the test files that import it.

    python scripts/test_map.py          # rewrite docs/test-map.md
    python scripts/test_map.py --check  # exit 1 when docs/test-map.md is not current

Found from the tests' imports (ast), so a module's tests are one lookup away whatever their
file names; tests/test_test_map.py keeps the page current.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "test-map.md"


def modules() -> list[str]:
    out = []
    for path in sorted((ROOT / "imgclean").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def imported_by(test: Path, known: set[str]) -> set[str]:
    """The imgclean modules a test file imports (`from imgclean.a import b` counts a.b when b
    is a module, else a), at any depth (imports inside functions and strings run by subprocess
    are not counted: the latter are not imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(test.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def render() -> str:
    known = modules()
    tests = sorted((ROOT / "tests").glob("test_*.py"))
    by_module: dict[str, list[str]] = {m: [] for m in known}
    for test in tests:
        for module in imported_by(test, set(known)):
            by_module[module].append(test.name)
    lines = ["# Which tests cover which module", "",
             "Made by `python scripts/test_map.py` from the tests' imports (a test that drives a module only "
             "through the CLI is listed under the modules it imports). tests/test_test_map.py fails when this page "
             "is not current.", "", "| module | test files |", "|---|---|"]
    for module in known:
        files = by_module[module]
        lines.append(f"| `{module}` | {', '.join(f'`{f}`' for f in files) if files else '(through the CLI and the API)'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    text = render()
    if args.check:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != text:
            print(f"{PAGE.relative_to(ROOT)} is not current: run python scripts/test_map.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
