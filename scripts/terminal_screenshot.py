"""Rebuild docs/terminal.svg: what `imgclean fit` and `imgclean scan` print on the sample data.

    python scripts/terminal_screenshot.py [WORK_DIR]

Runs the real commands (colour forced, progress bars off), and renders their output with rich.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], env: dict) -> str:
    proc = subprocess.run([sys.executable, "-m", "imgclean", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    return proc.stdout + proc.stderr


def main() -> int:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/imgclean-terminal")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "sample_data" / "incoming", work / "incoming")
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "96", "PYTHONPATH": str(ROOT)}
    env.pop("NO_COLOR", None)
    console = Console(record=True, width=96, force_terminal=True)
    for args in (
        ["fit", "sample_data/train", "-o", str(work / "model"), "-q"],
        ["scan", str(work / "incoming"), "-m", str(work / "model"), "--move-to", str(work / "rejected"), "-q"],
    ):
        shown = ["imgclean", *[a.replace(str(work), "/tmp/demo") for a in args if a != "-q"]]
        console.print(Text("$ " + " ".join(shown), style="bold green"))
        console.print(Text.from_ansi(run(args, env).replace(str(work), "/tmp/demo")))
    target = ROOT / "docs" / "terminal.svg"
    console.save_svg(str(target), title="imgclean")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
