"""Every command and option has help text, and docs/cli.md matches the code."""
import os
import subprocess
import sys
from pathlib import Path

import typer

from imgclean.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_and_option_has_help():
    root = typer.main.get_command(app)
    missing = []
    for name, cmd in root.commands.items():
        if not (cmd.help or "").strip():
            missing.append(name)
        for p in cmd.params:
            if p.name != "help" and not (getattr(p, "help", None) or "").strip():
                missing.append(f"{name} {p.name}")
    assert missing == []


def test_cli_reference_is_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr


def test_python_dash_m_and_no_colour_without_a_tty(model_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    result = subprocess.run([sys.executable, "-m", "imgclean", "info", str(model_dir)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "checker" in result.stdout
    assert "\x1b[" not in result.stdout + result.stderr
