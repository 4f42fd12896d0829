"""The saved model: a directory of JSON, safetensors and pickle-free npz files.

Longer than 400 lines: saving and loading share the file names, the fingerprint and the
interrupted-save recovery, and are kept side by side so the two cannot drift apart; the
per-detector encoding lives in detector_state.py.

    model/
      config.json          format_version, versions, preprocessing, class names, settings, metrics,
                           and the fingerprint: sha256 of the other files' sha256 (also under "files")
      weights.safetensors  classifier state dict (backbone + linear layer)
      detector.npz         Mahalanobis means, precisions, thresholds (np.load(allow_pickle=False))
      detector-energy.npz  the energy detector (detectors/energy.py), and
      detector-knn.npz     the KNN detector's feature bank (detectors/knn.py); config.json lists
                           such detectors under "detectors" (name -> file, settings). Models
                           saved before they existed lack them and still load: those methods are
                           then unavailable, with a message naming `imgclean fit` to refit
      head.safetensors     optional supervised reject head (tensors named head.*); config.json
                           then has a "head" entry with its settings and training metrics

Which detectors and files there are comes from detectors/registry.py: each detector's state is
its to_arrays() (an npz, or safetensors for the head) and settings() (config.json), and it is
rebuilt with from_state() after its own check_state() on load. The fingerprint covers them all.

Saving writes a new directory beside the target and renames it into place, so a crash leaves
either the old model or the new one; files in the old directory that imgclean did not write are
carried over (model_carry.py). Loading reads every file once (model_files.py: no links, no
FIFOs, plausible sizes), checks each field and array, and checks the files against the
fingerprint: the network is later built from those bytes, never by reading the directory again,
so a scan uses one consistent snapshot even if the directory is replaced meanwhile. Loading never
runs pickled code.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..detectors import MahalanobisDetector, registry
from .bundle import ModelBundle  # noqa: F401  (re-exported: it lived here)
from ..fileops import fsync_dir
from ..structured import load_json
from .model_files import (  # noqa: F401  (re-exported: the public names of a model directory)
    CONFIG_FILE, DETECTOR_FILE, FORMAT_VERSION, HEAD_FILE, LEGACY_DETECTORS, OWN_FILES, REQUIRED_KEYS,
    WEIGHTS_FILE, ModelError, check_config, check_head_tensors, detector_entries, missing_state_message,
    open_model_dir, parse_config, parse_detector_arrays, read_model_file, safetensors_index,
)

log = logging.getLogger(__name__)


def package_versions() -> dict[str, str | None]:
    from importlib import metadata  # ~18 ms to import: only saving a model needs it

    out: dict[str, str | None] = {"imgclean": __version__}
    for name in ("torch", "timm", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def fingerprint_of(digests: dict[str, str]) -> str:
    """The fingerprint of a model's files (unchanged since format 1): weights, detector.npz,
    head.safetensors, then the newer detectors' files in registry order (detector-energy.npz,
    detector-knn.npz), each where present: a model without the newer files keeps its fingerprint."""
    order = [WEIGHTS_FILE, DETECTOR_FILE, HEAD_FILE, *(f for f in registry.state_files() if f not in (DETECTOR_FILE, HEAD_FILE))]
    names = [n for n in order if n in digests]
    return hashlib.sha256("".join(digests[n] for n in names).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- saving
def _is_model_dir(path: Path) -> bool:
    try:
        fd = open_model_dir(path)
    except OSError:
        return False
    try:
        config = load_json(read_model_file(fd, path, CONFIG_FILE), path / CONFIG_FILE)  # bounded: never RecursionError
        return isinstance(config, dict) and "format_version" in config
    except (OSError, ValueError, TypeError, ModelError):
        return False
    finally:
        os.close(fd)


def check_replaceable(target: Path, force: bool) -> None:
    """Raise ModelError unless `target` is free, or an imgclean model (or empty folder) and force."""
    target = Path(target)
    if target.exists():
        if not force:
            raise ModelError(f"{target} already exists; pass --force to replace it, or choose another --output")
        if not target.is_dir() or (any(target.iterdir()) and not _is_model_dir(target)):
            raise ModelError(f"{target} exists and is not an imgclean model directory; refusing to replace it")


def write_new(path: Path, blob: bytes) -> None:
    """Create `path` (mode 0666 less the umask, like any file the user writes) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_dir = fsync_dir  # a module attribute, so tests can fail it


# Only saving needs model_carry and secrets: loading (a scan's start-up) does not import them.
def carry_foreign(target: Path, tmp: Path) -> list:
    """model_carry.carry_foreign (a module attribute, so tests can fail it)."""
    from .model_carry import carry_foreign as carry

    return carry(target, tmp)


def clear_backup(old: Path, carried: list) -> bool:
    """model_carry.clear_backup."""
    from .model_carry import clear_backup as clear

    return clear(old, carried)


def new_name(parent: Path, prefix: str, create: bool) -> Path:
    import secrets

    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        if create:
            try:
                os.mkdir(path, 0o777)  # the umask applies, as to any folder the user makes
                return path
            except FileExistsError:
                continue
        elif not os.path.lexists(path):
            return path


def replace_directory(target: Path, blobs: dict[str, bytes]) -> None:
    """Make `target` a directory of exactly these files (name -> bytes, written in this order),
    atomically: a new directory beside it, every file and folder imgclean did not write carried
    over from the old one, two renames; the old one is put back if anything fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_name(target.parent, f".{target.name}.tmp-", create=True)
    old, carried = None, []
    try:
        for name, blob in blobs.items():
            write_new(tmp / name, blob)
        if target.exists():
            carried = carry_foreign(target, tmp)
        fsync_dir(tmp)
        if target.exists():
            old = new_name(target.parent, f".{target.name}.old-", create=False)
            os.rename(target, old)
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        if old is not None and old.exists() and not target.exists():
            os.rename(old, target)  # put the old model back
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # our files, and links or copies of the user's
        raise
    if old is not None:
        clear_backup(old, carried)


def _serialise(bundle: ModelBundle) -> tuple[dict, dict[str, bytes]]:
    """(config, name -> bytes) of everything save_model writes."""
    from safetensors.torch import save as safetensors_bytes

    from .detector_state import encode_state

    state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    blobs = {WEIGHTS_FILE: safetensors_bytes(state)}
    if bundle.detector is None:
        raise ValueError("a model needs its Mahalanobis detector")
    config = dict(bundle.config)
    if bundle.head is None:
        config.pop("head", None)
    extra = {}
    for name, det in bundle.detectors.items():
        blobs[det.state_file] = encode_state(det)
        if name == "head":
            config["head"] = {**(config.get("head") or {}), "file": HEAD_FILE, "settings": det.settings()}
        elif name not in LEGACY_DETECTORS:
            extra[name] = {"file": det.state_file, "settings": det.settings()}
    if extra:
        config["detectors"] = {name: extra[name] for name in registry.DETECTORS if name in extra}
    else:
        config.pop("detectors", None)
    digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
    config.update(
        format_version=FORMAT_VERSION,
        versions=package_versions(),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        files=digests,
        fingerprint=fingerprint_of(digests),
    )
    blobs[CONFIG_FILE] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    return config, blobs


def save_model(bundle: ModelBundle, target: Path, force: bool = False) -> Path:
    """Write `bundle` to the directory `target` atomically; refuse to overwrite unless force.

    Replacing a model carries every file and folder imgclean did not write into the new
    directory, or refuses, naming them, before anything changes.
    """
    target = Path(target).absolute()
    if target.is_symlink():
        target = target.resolve()  # replace the folder the link names; the link stays as it is
    check_replaceable(target, force)
    config, blobs = _serialise(bundle)
    check_config(config, f"the new {CONFIG_FILE}")  # never write a model that would not load
    replace_directory(target, {name: blobs[name] for name in (WEIGHTS_FILE, *registry.state_files(), CONFIG_FILE)
                               if name in blobs})
    bundle.config, bundle.path = config, target
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


# ----------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class _Snapshot:
    """The bytes of a model directory, read once: config, weights, and each detector's file by name."""

    config: dict
    weights: bytes
    states: dict[str, bytes]


def _open(path: Path) -> int:
    try:
        return open_model_dir(path)
    except (FileNotFoundError, NotADirectoryError):
        raise ModelError(f"no model at {path}; train one with `imgclean fit TRAIN_DIR -o {path}`") from None
    except OSError as exc:
        raise ModelError(f"{path} cannot be opened ({exc.strerror})") from None


def _read(fd: int, path: Path, name: str, missing: str) -> bytes:
    try:
        return read_model_file(fd, path, name)
    except FileNotFoundError:
        raise ModelError(missing) from None


def _read_config(fd: int, path: Path) -> dict:
    raw = _read(fd, path, CONFIG_FILE, f"{path} has no {CONFIG_FILE}; is it an imgclean model directory?")
    config = parse_config(raw, os.fspath(path / CONFIG_FILE))
    saved = (config.get("versions") or {}).get("imgclean")
    if saved and saved != __version__:
        log.warning("model %s was made by imgclean %s; this is %s", path, saved, __version__)
    return config


def read_config(path: Path) -> dict:
    """config.json of a model directory, every field checked (no other file is read)."""
    path = Path(path)
    _recover_interrupted_save(path.absolute())
    fd = _open(path)
    try:
        return _read_config(fd, path)
    finally:
        os.close(fd)


def _read_snapshot(path: Path, parse: bool = True) -> tuple[_Snapshot, dict[str, object] | None]:
    """Every file the model needs, read once through one descriptor of the directory and checked
    against each other and the fingerprint; returns the snapshot and each detector's parsed state
    (None with parse=False: load_model(lazy=True) parses them when they are first used)."""
    fd = _open(path)
    try:
        config = _read_config(fd, path)
        states = {
            name: _read(fd, path, entry["file"], missing_state_message(path, name, entry["file"]))
            for name, entry in detector_entries(config).items()
        }
        weights = _read(fd, path, WEIGHTS_FILE, f"{path} has no {WEIGHTS_FILE}")
    finally:
        os.close(fd)
    snapshot = _Snapshot(config, weights, states)
    parsed = _parse_states(config, states, path) if parse else None
    try:
        _check_files(path, config, weights, states)
    except ModelError:
        if parsed is None:  # a damaged state's own message first, as when it is parsed up front
            _parse_states(config, states, path)
        raise
    return snapshot, parsed


def _parse_states(config: dict, states: dict[str, bytes], path: Path) -> dict[str, object]:
    from .detector_state import parse_states  # numpy: only once a state is parsed

    return parse_states(config, states, path)


def _build_detectors(parsed: dict[str, object], config: dict, path: Path) -> dict:
    from .detector_state import build_detectors

    return build_detectors(parsed, config, path)


def _check_files(path: Path, config: dict, weights: bytes, states: dict[str, bytes]) -> None:
    """The weights' index readable, and every file matching the fingerprint; ModelError if not."""
    safetensors_index(weights, os.fspath(path / WEIGHTS_FILE))
    blobs = {WEIGHTS_FILE: weights, **{registry.DETECTORS[n].state_file: raw for n, raw in states.items()}}
    digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
    if fingerprint_of(digests) != config["fingerprint"]:
        recorded = config.get("files") or {}
        wrong = [n for n in blobs if n in recorded and recorded[n] != digests[n]]
        what = f"{' and '.join(wrong)} {'does' if len(wrong) == 1 else 'do'}" if wrong else "the model files do"
        raise ModelError(
            f"{path}: {what} not match the fingerprint in {CONFIG_FILE} (from another model, or changed "
            "after saving); retrain or restore the model"
        )


def read_model_files(path: Path) -> dict[str, bytes]:
    """name -> bytes of every file a model needs (config, weights, detector states), read through
    one descriptor of the directory: what a remote worker rebuilds the model from (load_model on
    a copy checks them against each other and the fingerprint)."""
    path = Path(path)
    fd = _open(path)
    try:
        raw = _read(fd, path, CONFIG_FILE, f"{path} has no {CONFIG_FILE}; is it an imgclean model directory?")
        config = parse_config(raw, os.fspath(path / CONFIG_FILE))
        names = [WEIGHTS_FILE, *(entry["file"] for entry in detector_entries(config).values())]
        return {CONFIG_FILE: raw, **{name: _read(fd, path, name, f"{path} has no {name}") for name in names}}
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ModelInfo:
    """What `imgclean info` shows, read torch-free: the checked config, the Mahalanobis
    thresholds, and name -> settings of every detector the model has (registry order)."""

    config: dict
    thresholds: list[float]
    detectors: dict[str, dict]

    @property
    def methods(self) -> list[str]:
        return registry.available_methods(self.detectors)


def inspect_model(path: Path) -> ModelInfo:
    """The model's config, thresholds and detectors (config.json and detector.npz; no torch)."""
    path = Path(path)
    config = read_config(path)
    detector = load_detector(path, config)
    entries = detector_entries(config)
    settings = {name: dict(entry["settings"]) for name, entry in entries.items()}
    settings["mahalanobis"] = detector.settings()
    return ModelInfo(config, detector.thresholds_.tolist(), settings)


def load_detector(path: Path, config: dict) -> MahalanobisDetector:
    """The Mahalanobis detector of a model directory, checked against `config` (torch-free)."""
    path = Path(path)
    fd = _open(path)
    try:
        raw = _read(fd, path, DETECTOR_FILE, f"{path} has no {DETECTOR_FILE}")
    finally:
        os.close(fd)
    return MahalanobisDetector.from_state(parse_detector_arrays(raw, config, os.fspath(path / DETECTOR_FILE)))


def load_model(path: Path, device: str = "cpu", lazy: bool = False) -> ModelBundle:
    """Load a model directory; raises ModelError with a clear message when it cannot.

    Every file is read and checked now. lazy=True builds the network (importing torch) from
    the bytes read now on the first use of `bundle.model`, and parses the detectors' states
    (numpy) on the first use of `bundle.detectors`: a damaged state then fails there, with the
    same ModelError (files that match the fingerprint were saved so by imgclean). Files that do not match each other
    (the directory replaced while it was read) are read once more before giving up.
    """
    path = Path(path)
    _recover_interrupted_save(path.absolute())
    try:
        snapshot, parsed = _read_snapshot(path, parse=not lazy)
    except ModelError as exc:
        log.debug("reading %s again: %s", path, exc)
        snapshot, parsed = _read_snapshot(path, parse=not lazy)
    config = snapshot.config
    weights = snapshot.weights
    loader = lambda: _build_network(weights, config, device, path / WEIGHTS_FILE)  # noqa: E731
    if parsed is not None:
        return ModelBundle(config=config, path=path, detectors=_build_detectors(parsed, config, path), model=loader())
    states = snapshot.states
    bundle = ModelBundle(
        config=config, path=path, loader=loader, detector_names=tuple(states),
        # numpy parses the states on the first use of bundle.detectors (a scored file), not now
        detector_loader=lambda: _build_detectors(_parse_states(config, states, path), config, path),
    )
    return bundle


def _build_network(weights: bytes, config: dict, device: str, file: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load

    from ..nn.models import build_model

    try:
        state = load(weights)
    except (SafetensorError, ValueError) as exc:
        raise ModelError(f"{file} is damaged ({exc}); retrain or restore the model") from None
    try:
        model = build_model(config["arch"], len(config["class_names"]), config["channels"], config["input_size"],
                            logits=str(config.get("logits") or "linear"))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"{file} does not fit the architecture in {CONFIG_FILE}: {exc}") from None
    model.to(device).eval()
    return model
