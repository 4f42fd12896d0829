"""init-config: write a commented settings file keyed by the option names."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import os
from enum import Enum
from pathlib import Path

import typer

from .common import app, command, err, fail, usage_error
from .options import option_key, settable_options


def settings_file_template() -> str:
    """A commented imgclean.yaml listing every settable option of fit and scan at its default."""
    import yaml

    commands = typer.main.get_command(app).commands
    lines = [
        "# imgclean settings. Use with `imgclean fit --config FILE` or `imgclean scan --config FILE`.",
        "# Keys are the option names (batch-size or batch_size); every key is optional; unknown keys are errors.",
        "# Precedence: built-in defaults < this file < flags on the command line.",
    ]
    for name in ("fit", "scan"):
        lines.append(f"{name}:")
        for opt in settable_options(commands[name]):
            default = opt.default.value if isinstance(opt.default, Enum) else opt.default
            default = os.fsdecode(default) if isinstance(default, Path) else default
            value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            help_text = " ".join((opt.help or "").split())
            lines.append(f"  # {help_text}")
            lines.append(f"  {option_key(opt)}: {value}")
    return "\n".join(lines) + "\n"


@command("init-config")
def init_config(
    path: Path = typer.Argument(Path("imgclean.yaml"), help="Where to write the settings file."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Write a commented settings file with every fit and scan option at its default."""
    if path.exists() and not force:
        raise usage_error(f"{path} already exists; pass --force to replace it")
    try:
        path.write_text(settings_file_template(), encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror or exc}") from None
    err.print(f"wrote {path}", highlight=False, markup=False)
