"""A learn request: a reviewed quarantine to learn from (or a rollback of the model)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import DEFAULT_MODEL_DIR
from .base import RequestError, need_folder


@dataclass
class LearnRequest:
    quarantine: Optional[Path] = None
    model: Path = DEFAULT_MODEL_DIR
    rollback: bool = False  # put the previous version of the model back, and learn nothing
    train_dir: Optional[Path] = None  # [default: the one the model's config.json records]

    def check(self) -> None:
        if self.rollback:
            if self.quarantine is not None:
                raise RequestError("--rollback takes no QUARANTINE: it puts the previous version of the model back")
            return
        if self.quarantine is None:
            raise RequestError("give the QUARANTINE to learn from (or --rollback)")
        if not Path(self.quarantine).is_dir():
            raise RequestError(f"{self.quarantine} does not exist or is not a folder")
        if self.train_dir is not None:
            need_folder(self.train_dir, "--train-dir")
