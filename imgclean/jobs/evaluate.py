"""An evaluate request: a model measured on a labelled folder and a folder of known outsiders."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .base import RequestError, check_method_name, check_range, need_folder


@dataclass
class EvaluateRequest:
    in_dir: Path
    ood_dir: Path
    model: object = None  # a model directory or a loaded model
    methods: Optional[list] = None  # None: every method the model has
    batch_size: int = 256
    plots: Optional[Path] = None  # where the ROC curves go

    def check(self) -> None:
        need_folder(self.in_dir, "--in")
        need_folder(self.ood_dir, "--ood")
        if isinstance(self.methods, str):
            raise RequestError("methods is a list of method names, not one name")
        for method in self.methods or ():
            check_method_name(method)
        check_range("--batch-size", self.batch_size, 1, integer=True)
        if self.plots is not None and Path(self.plots).exists() and not Path(self.plots).is_dir():
            raise RequestError(f"--plots {self.plots} is not a folder")
