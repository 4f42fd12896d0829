"""The saved model: a directory of JSON, safetensors and a pickle-free npz.

    model/
      config.json          format_version, versions, preprocessing, class names, settings, metrics
      weights.safetensors  classifier state dict (backbone + linear layer)
      detector.npz         Mahalanobis means, precisions, thresholds (np.load(allow_pickle=False))
      head.safetensors     optional supervised reject head (tensors named head.*); config.json
                           then has a "head" entry with its settings and training metrics

Saving writes a temporary directory beside the target and renames it into place, so a crash
leaves either the old model or the new one. Loading never runs pickled code.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .detectors import MahalanobisDetector, RejectHead

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
DETECTOR_FILE = "detector.npz"
HEAD_FILE = "head.safetensors"
REQUIRED_KEYS = ("format_version", "arch", "input_size", "channels", "mean", "std", "class_names", "feature_dim")


class ModelError(Exception):
    """A model directory is missing, damaged, or does not fit what it is used for."""


@dataclass
class ModelBundle:
    """Everything `scan` needs: settings, the network and the fitted detector.

    `model` may be given as None with a `loader`: the network (and torch) is then loaded on the
    first access of `bundle.model`, so a scan whose every file is a cache hit never imports torch.
    """

    config: dict
    model: object  # models.Classifier (torch is imported lazily)
    detector: MahalanobisDetector
    path: Path | None = None
    head: RejectHead | None = None  # the optional supervised head; config["head"] describes it
    loader: Callable[[], object] | None = field(default=None, repr=False, compare=False)

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if name == "model" and value is None:
            loader = object.__getattribute__(self, "loader")
            if loader is not None:
                value = loader()
                object.__setattr__(self, "model", value)
                object.__setattr__(self, "loader", None)
        return value

    @property
    def model_loaded(self) -> bool:
        return object.__getattribute__(self, "model") is not None

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def input_size(self) -> int:
        return int(self.config["input_size"])

    @property
    def channels(self) -> int:
        return int(self.config["channels"])

    @property
    def fingerprint(self) -> str:
        return str(self.config.get("fingerprint", ""))


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"imgclean": __version__}
    for name in ("torch", "timm", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_model_dir(path: Path) -> bool:
    try:
        return "format_version" in json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_replaceable(target: Path, force: bool) -> None:
    """Raise ModelError unless `target` is free, or an imgclean model (or empty folder) and force."""
    target = Path(target)
    if target.exists():
        if not force:
            raise ModelError(f"{target} already exists; pass --force to replace it, or choose another --output")
        if not target.is_dir() or (any(target.iterdir()) and not _is_model_dir(target)):
            raise ModelError(f"{target} exists and is not an imgclean model directory; refusing to replace it")


def save_model(bundle: ModelBundle, target: Path, force: bool = False) -> Path:
    """Write `bundle` to the directory `target` atomically; refuse to overwrite unless force."""
    from safetensors.torch import save_file

    target = Path(target).absolute()
    check_replaceable(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        np.savez(tmp / DETECTOR_FILE, **bundle.detector.to_arrays())
        config = dict(bundle.config)
        files = [WEIGHTS_FILE, DETECTOR_FILE]
        if bundle.head is not None:
            save_file(bundle.head.state_tensors(), str(tmp / HEAD_FILE))
            files.append(HEAD_FILE)
            config["head"] = {**(config.get("head") or {}), "file": HEAD_FILE, "settings": bundle.head.settings()}
        else:
            config.pop("head", None)
        config.update(
            format_version=FORMAT_VERSION,
            versions=package_versions(),
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        config["fingerprint"] = hashlib.sha256("".join(_sha256(tmp / f) for f in files).encode()).hexdigest()[:16]
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name in (*files, CONFIG_FILE):
            _fsync_file(tmp / name)
        os.chmod(tmp, 0o755)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rmdir(old)
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        bundle.config, bundle.path = config, target
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _recover_interrupted_save(target: Path) -> None:
    """A save killed between its two renames leaves the old model under a backup name: put it back."""
    if target.exists() or not target.parent.is_dir():
        return
    backups = sorted(target.parent.glob(f".{target.name}.old-*"))
    for backup in backups:
        if _is_model_dir(backup):
            os.rename(backup, target)
            log.warning("restored %s from an interrupted save (%s)", target, backup.name)
            return


def read_config(path: Path) -> dict:
    """config.json of a model directory, checked for format version and required keys."""
    path = Path(path)
    _recover_interrupted_save(path.absolute())
    if not path.is_dir():
        raise ModelError(f"no model at {path}; train one with `imgclean fit TRAIN_DIR -o {path}`")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise ModelError(f"{path} has no {CONFIG_FILE}; is it an imgclean model directory?") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path / CONFIG_FILE} is damaged ({exc}); retrain or restore the model") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path / CONFIG_FILE} is not a JSON object")
    version = config.get("format_version")
    if not isinstance(version, int):
        raise ModelError(f"{path / CONFIG_FILE} has no valid format_version")
    if version > FORMAT_VERSION:
        raise ModelError(
            f"{path} has model format {version}, newer than this imgclean ({__version__}) reads "
            f"(format {FORMAT_VERSION}); upgrade imgclean"
        )
    if version < 1:
        raise ModelError(f"{path} has unknown model format {version}")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ModelError(f"{path / CONFIG_FILE} lacks {', '.join(missing)}")
    saved = (config.get("versions") or {}).get("imgclean")
    if saved and saved != __version__:
        log.warning("model %s was made by imgclean %s; this is %s", path, saved, __version__)
    return config


def load_detector(path: Path, config: dict) -> MahalanobisDetector:
    try:
        with np.load(Path(path) / DETECTOR_FILE, allow_pickle=False) as arrays:
            detector = MahalanobisDetector.from_arrays(arrays)
    except FileNotFoundError:
        raise ModelError(f"{path} has no {DETECTOR_FILE}") from None
    except Exception as exc:
        raise ModelError(f"{Path(path) / DETECTOR_FILE} is damaged or not an imgclean detector ({exc})") from None
    k, d = detector.means_.shape
    if k != len(config["class_names"]) or d != config["feature_dim"]:
        raise ModelError(
            f"{path}: the detector has {k} classes x {d} features but the model has "
            f"{len(config['class_names'])} classes x {config['feature_dim']} features"
        )
    return detector


def load_head(path: Path, config: dict) -> RejectHead | None:
    """The supervised head when config.json says the model has one, else None."""
    info = config.get("head")
    if not info:
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    file = Path(path) / HEAD_FILE
    try:
        head = RejectHead.from_state(load_file(str(file)), info.get("settings") or {})
    except FileNotFoundError:
        raise ModelError(f"{path} has no {HEAD_FILE} though {CONFIG_FILE} names a head; run `imgclean fit-head` again") from None
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{file} is damaged or not an imgclean head ({exc}); run `imgclean fit-head` again") from None
    if head.dim_ != config["feature_dim"]:
        raise ModelError(f"{file} was fitted on {head.dim_} features; the model has {config['feature_dim']}")
    return head


def load_model(path: Path, device: str = "cpu", lazy: bool = False) -> ModelBundle:
    """Load a model directory; raises ModelError with a clear message when it cannot.

    lazy=True reads the settings and the detector now (numpy only) and the network, with torch,
    on the first use of `bundle.model`; the weights file is checked to exist now.
    """
    path = Path(path)
    config = read_config(path)
    detector = load_detector(path, config)
    head = load_head(path, config)  # small, but imports torch: only models with a head pay it
    if lazy:
        if not (path / WEIGHTS_FILE).is_file():
            raise ModelError(f"{path} has no {WEIGHTS_FILE}")
        return ModelBundle(
            config=config, model=None, detector=detector, path=path, head=head,
            loader=lambda: _load_network(path, config, device),
        )
    return ModelBundle(config=config, model=_load_network(path, config, device), detector=detector, path=path, head=head)


def _load_network(path: Path, config: dict, device: str):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models import build_model

    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except FileNotFoundError:
        raise ModelError(f"{path} has no {WEIGHTS_FILE}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path / WEIGHTS_FILE} is damaged ({exc}); retrain or restore the model") from None
    try:
        model = build_model(
            config["arch"], len(config["class_names"]), int(config["channels"]), int(config["input_size"])
        )
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"{path / WEIGHTS_FILE} does not fit the architecture in {CONFIG_FILE}: {exc}") from None
    model.to(device).eval()
    return model
