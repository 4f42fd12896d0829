"""Reading and checking the files of a saved model, without torch and without trusting them.

Every file is opened relative to one descriptor of the model directory, without following a
link and without blocking (a FIFO would hang a plain open), checked to be a regular file of a
plausible size, and read whole. Then each is checked for what imgclean needs of it: config.json
and the safetensors headers (JSON, read by imgclean.structured's bounded reader) field by field,
detector.npz and each other detector's npz array by array (the pickle-free reader here and the
detector's own check_state). Every problem is a ModelError: one line naming the file and fault.

Longer than 400 lines: config.json's schema table, the safetensors header check and the npz
reader are the three checks of one untrusted directory, read through one descriptor.
"""
from __future__ import annotations

import errno
import io
import json
import math
import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: numpy is imported in the functions that use it
    import numpy as np

from ..detectors import registry
from ..errors import ImgcleanError
from ..structured import StructuredInputError, load_json

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
DETECTOR_FILE = registry.DETECTORS["mahalanobis"].state_file  # detector.npz
HEAD_FILE = registry.DETECTORS["head"].state_file  # head.safetensors
# The detectors that config.json describes in its own entries (format 1): mahalanobis is always
# there; the head when config["head"] is set. Every other detector is listed in config["detectors"].
LEGACY_DETECTORS = ("mahalanobis", "head")
# all that imgclean writes in a model dir: config, weights and every registered detector's file
OWN_FILES = (CONFIG_FILE, WEIGHTS_FILE, *registry.state_files())
REQUIRED_KEYS = ("format_version", "arch", "input_size", "channels", "mean", "std", "class_names", "feature_dim")
MiB, GiB = 1 << 20, 1 << 30
# Far beyond any real model, small enough to stop /dev/zero-like files and mistakes early.
SIZE_LIMITS = {
    CONFIG_FILE: 16 * MiB, HEAD_FILE: 1 * GiB, WEIGHTS_FILE: 32 * GiB,
    **{name: 8 * GiB for name in registry.state_files() if name.endswith(".npz")},
}
INPUT_SIZE_RANGE = (8, 4096)
DETECTOR_ARRAYS = (
    "percentile", "covariance", "threshold_scale", "means", "precisions", "shrinkage",
    "class_counts", "thresholds", "train_distances", "train_labels",
)
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


class ModelError(ImgcleanError):
    """A model directory is missing, damaged, or does not fit what it is used for."""


# ----------------------------------------------------------------------------- safe reading
def open_model_dir(path) -> int:
    """A descriptor of the model directory (a link to a directory is followed: users keep those)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def read_model_file(dir_fd: int, where, name: str) -> bytes:
    """The bytes of the regular file `name` in the directory `dir_fd` (shown as `where`/name).

    Raises FileNotFoundError when it is missing, ModelError when it is anything but a regular
    file of at most SIZE_LIMITS[name] bytes.
    """
    shown = os.path.join(os.fsdecode(where), name)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelError(f"{shown} is a symbolic link; model files must be regular files (put a copy in its place)") from None
        raise ModelError(f"{shown} cannot be opened ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{shown} is not a regular file")
        limit = SIZE_LIMITS.get(name, 16 * MiB)
        if st.st_size > limit:
            raise ModelError(f"{shown} is {st.st_size} bytes, more than any {name} of imgclean ({limit}); is it the right file?")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(64 * MiB, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise ModelError(f"{shown} grew beyond {limit} bytes while being read")
        return b"".join(chunks)
    except OSError as exc:
        raise ModelError(f"{shown} cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- config.json
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


_ABSENT = object()


def _lookup(config: dict, key: str, default):
    """config[key], "a.b.c" through nested objects; `default` where it is absent (_ABSENT: skip)."""
    value = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def _interpolations() -> tuple:
    from ..data import INTERPOLATION_NAMES

    return tuple(INTERPOLATION_NAMES)


def _is_object_or_none(v, c) -> bool:
    return v is None or isinstance(v, dict)


def _channels_list(v, c) -> bool:
    return isinstance(v, list) and len(v) == c["channels"] and all(_is_number(x) for x in v)


# What config.json must hold, checked in this order after format_version and REQUIRED_KEYS:
# (key, "a.b" for nested; is it valid (value, config); the problem said when not; the value
# used when the key is absent, _ABSENT to skip the check).
CONFIG_SCHEMA: tuple = (
    ("arch", lambda v, c: isinstance(v, str) and bool(v.strip()), "must be a non-empty string", _ABSENT),
    ("input_size", lambda v, c: _is_int(v) and INPUT_SIZE_RANGE[0] <= v <= INPUT_SIZE_RANGE[1],
     "must be a whole number of pixels from {} to {}".format(*INPUT_SIZE_RANGE), _ABSENT),
    ("channels", lambda v, c: _is_int(v) and v in (1, 3), "must be 1 or 3", _ABSENT),
    ("mean", _channels_list, lambda c: f"must be a list of {c['channels']} finite number(s), one per channel", _ABSENT),
    ("std", _channels_list, lambda c: f"must be a list of {c['channels']} finite number(s), one per channel", _ABSENT),
    ("std", lambda v, c: all(x > 0 for x in v), "must be positive", _ABSENT),
    ("class_names", lambda v, c: isinstance(v, list) and bool(v) and all(isinstance(n, str) and n for n in v),
     "must be a non-empty list of non-empty strings", _ABSENT),
    ("class_names", lambda v, c: len(set(v)) == len(v), "must not repeat a name", _ABSENT),
    ("feature_dim", lambda v, c: _is_int(v) and 1 <= v <= 1 << 20, "must be a positive whole number", _ABSENT),
    ("percentile", lambda v, c: _is_number(v) and 0 < v <= 100, "must be a number in (0, 100]", _ABSENT),
    ("interpolation", lambda v, c: v is None or (isinstance(v, str) and v in _interpolations()),
     lambda c: f"must be one of {', '.join(_interpolations())}", _ABSENT),
    ("crop_pct", lambda v, c: v is None or (_is_number(v) and 0 < v <= 1), "must be a number in (0, 1]", _ABSENT),
    ("covariance", lambda v, c: v in ("tied", "class"), "must be tied or class", _ABSENT),
    ("fingerprint", lambda v, c: isinstance(v, str) and bool(v),
     "must be the string imgclean wrote; re-save the model with this imgclean", None),
    *((key, _is_object_or_none, "must be an object", _ABSENT)
      for key in ("training", "settings", "metrics", "data", "versions", "files")),
    ("head", lambda v, c: not v or (isinstance(v, dict) and isinstance(v.get("settings") or {}, dict)),
     "must be an object with a settings object", _ABSENT),
    ("head.settings.hidden", lambda v, c: isinstance(v, list) and all(_is_int(h) and 1 <= h <= 1 << 16 for h in v),
     "must be a list of positive layer widths", _ABSENT),
    ("head.settings.threshold", lambda v, c: _is_number(v) and 0 < v < 1, "must be a number in (0, 1)", _ABSENT),
)


def parse_config(raw: bytes, shown: str) -> dict:
    try:
        config = load_json(raw, shown)
    except StructuredInputError as exc:
        raise ModelError(f"{shown} is damaged ({exc.problem}); retrain or restore the model") from None
    if not isinstance(config, dict):
        raise ModelError(f"{shown} is not a JSON object")
    check_config(config, shown)
    return config


def check_config(config: dict, shown: str) -> None:
    """Every field imgclean reads, by type and range; raises ModelError naming the first bad one."""
    version = config.get("format_version")
    if not _is_int(version):
        raise ModelError(f"{shown} has no valid format_version")
    if version > FORMAT_VERSION:
        from .. import __version__

        raise ModelError(
            f"{os.path.dirname(shown)} has model format {version}, newer than this imgclean ({__version__}) "
            f"reads (format {FORMAT_VERSION}); upgrade imgclean"
        )
    if version < 1:
        raise ModelError(f"{os.path.dirname(shown)} has unknown model format {version}")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ModelError(f"{shown} lacks {', '.join(missing)}")

    for key, valid, problem, default in CONFIG_SCHEMA:
        value = _lookup(config, key, default)
        if value is _ABSENT:
            continue
        if not valid(value, config):
            problem = problem(config) if callable(problem) else problem
            shown_value = json.dumps(value)[:60] if value is not None or key in config else "missing"
            raise ModelError(f"{shown}: {key} {problem} (found {shown_value})")
    check_detector_entries(config, shown)


def check_detector_entries(config: dict, shown: str) -> None:
    """config["detectors"]: name -> {"file": its registered file, "settings": {...}} per detector
    beyond the legacy two; a name this imgclean does not know means a newer imgclean wrote it."""
    entries = config.get("detectors")
    if entries is None:
        return
    if not isinstance(entries, dict):
        raise ModelError(f"{shown}: detectors must be an object (found {json.dumps(entries)[:60]})")
    for name, entry in entries.items():
        if name not in registry.DETECTORS:
            from .. import __version__

            raise ModelError(
                f"{shown} names a detector {name!r} that this imgclean ({__version__}) does not know; upgrade imgclean"
            )
        cls = registry.DETECTORS[name]
        if name in LEGACY_DETECTORS or not isinstance(entry, dict) or entry.get("file") != cls.state_file \
                or not isinstance(entry.get("settings") or {}, dict):
            raise ModelError(
                f"{shown}: detectors.{name} must be an object with file {cls.state_file!r} and a settings object "
                f"(found {json.dumps(entry)[:60]})"
            )


def detector_entries(config: dict) -> dict[str, dict]:
    """name -> {"file", "settings"} of every detector the model has (config checked already), registry order."""
    entries = {"mahalanobis": {"file": DETECTOR_FILE, "settings": {}}}
    if config.get("head"):
        entries["head"] = {"file": HEAD_FILE, "settings": config["head"].get("settings") or {}}
    for name, entry in (config.get("detectors") or {}).items():
        entries[name] = {"file": entry["file"], "settings": entry.get("settings") or {}}
    return {name: entries[name] for name in registry.DETECTORS if name in entries}


# ----------------------------------------------------------------------------- detector.npz
def read_npz(raw: bytes, shown: str, limit: int, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of an npz archive, read without pickle; ModelError "... is not a valid detector file"."""
    import zipfile  # here, as numpy: only parsing a detector's state needs them
    import numpy as np
    if raw[:4] != b"PK\x03\x04":
        raise ModelError(f"{shown} is not a valid detector file (not an npz archive)")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > limit:
            raise ModelError(f"{shown} is not a valid detector file (it unpacks to {unpacked} bytes)")
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            missing = [k for k in required if k not in npz.files]
            if missing:
                raise ModelError(f"{shown} is not a valid detector file (it lacks {', '.join(missing)})")
            arrays = {k: npz[k] for k in npz.files}
    except ModelError:
        raise
    except Exception as exc:  # zipfile, npy header and dtype errors come in many classes
        text = str(exc)
        reason = "it holds Python objects, which imgclean never loads" if "pickle" in text.lower() else f"damaged: {text[:120]}"
        raise ModelError(f"{shown} is not a valid detector file ({reason})") from None
    return arrays


def parse_detector_arrays(raw: bytes, config: dict, shown: str) -> dict[str, np.ndarray]:
    """The Mahalanobis detector's arrays, checked for names, dtypes, shapes, finiteness and fit to config."""
    arrays = read_npz(raw, shown, SIZE_LIMITS[DETECTOR_FILE], DETECTOR_ARRAYS)
    arrays = {k: arrays[k] for k in DETECTOR_ARRAYS}
    check_detector_arrays(arrays, config, shown)
    return arrays


def parse_state_arrays(raw: bytes, name: str, config: dict, shown: str) -> dict[str, np.ndarray]:
    """The arrays of detector `name`'s npz, checked by the detector itself (dtypes, shapes, finite)."""
    cls = registry.DETECTORS[name]
    arrays = read_npz(raw, shown, SIZE_LIMITS.get(cls.state_file, 8 * GiB))
    for key, a in arrays.items():
        if a.dtype.kind not in "fiu":
            raise ModelError(f"{shown} is not a valid detector file ({key} has dtype {a.dtype}); refit the model with `imgclean fit`")
    try:
        cls.check_state(arrays, config["feature_dim"], len(config["class_names"]))
    except ValueError as exc:
        raise ModelError(f"{shown} is not a valid {name} detector file ({exc}); refit the model with `imgclean fit`") from None
    return arrays


def check_detector_arrays(a: dict[str, np.ndarray], config: dict, shown: str) -> None:
    import numpy as np
    def bad(problem: str):
        return ModelError(f"{shown} is not a valid detector file ({problem})")

    for key in DETECTOR_ARRAYS:
        kind = a[key].dtype.kind
        if key == "covariance":
            if kind != "U" or a[key].shape != () or str(a[key]) not in ("tied", "class"):
                raise bad("covariance must be 'tied' or 'class'")
        elif kind not in "fiu" or (key in ("class_counts", "train_labels") and kind not in "iu"):
            raise bad(f"{key} has dtype {a[key].dtype}")
        elif kind == "f" and not np.isfinite(a[key]).all():
            raise bad(f"{key} holds NaN or infinite values")
    for key in ("percentile", "threshold_scale"):
        if a[key].shape != ():
            raise bad(f"{key} must be a single number")
    if not 0 < float(a["percentile"]) <= 100:
        raise bad("percentile must be in (0, 100]")
    if not float(a["threshold_scale"]) > 0:
        raise bad("threshold_scale must be positive")
    if a["means"].ndim != 2:
        raise bad(f"means must be classes x features, found shape {a['means'].shape}")
    k, d = a["means"].shape
    names, dim = config["class_names"], config["feature_dim"]
    if k != len(names) or d != dim:
        raise ModelError(
            f"{os.path.dirname(shown)}: the detector has {k} classes x {d} features but the model has "
            f"{len(names)} classes x {dim} features"
        )
    n_cov = 1 if str(a["covariance"]) == "tied" else k
    expected = {
        "precisions": (n_cov, d, d), "shrinkage": (n_cov,), "class_counts": (k,), "thresholds": (k,),
        "train_labels": a["train_distances"].shape,
    }
    for key, shape in expected.items():
        if a[key].shape != shape:
            raise bad(f"{key} has shape {a[key].shape}, expected {shape}")
    if a["train_distances"].ndim != 1:
        raise bad("train_distances must be one-dimensional")
    if not (a["thresholds"] > 0).all():
        raise bad("thresholds must be positive")
    labels = a["train_labels"]
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise bad(f"train_labels must be class indices below {k}")


# ----------------------------------------------------------------------------- safetensors
def safetensors_index(raw: bytes, shown: str) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """name -> (dtype, shape, start, end) from a safetensors header, checked against the data."""
    damaged = f"{shown} is damaged (not a safetensors file)"
    if len(raw) < 8:
        raise ModelError(f"{damaged}; retrain or restore the model")
    n = int.from_bytes(raw[:8], "little")
    if n > min(len(raw) - 8, 100 * MiB):
        raise ModelError(f"{damaged}; retrain or restore the model")
    try:
        header = load_json(raw[8 : 8 + n], shown)
    except StructuredInputError as exc:
        raise ModelError(f"{damaged}: its header is {exc.problem}; retrain or restore the model") from None
    if not isinstance(header, dict):
        raise ModelError(f"{damaged}; retrain or restore the model")
    data_len = len(raw) - 8 - n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            ok = (
                dtype in SAFETENSORS_DTYPES and all(_is_int(s) and s >= 0 for s in shape)
                and _is_int(start) and _is_int(end) and 0 <= start <= end <= data_len
                and end - start == math.prod(shape) * SAFETENSORS_DTYPES[dtype]
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ModelError(f"{shown} is damaged (tensor {name!r} does not fit the file); retrain or restore the model")
        out[name] = (dtype, shape, start, end)
    return out


def check_head_tensors(raw: bytes, config: dict, shown: str) -> None:
    """The head's tensors: the layer shapes its settings imply, finite standardisation values."""
    import numpy as np
    from ..detectors.head import PREFIX

    index = safetensors_index(raw, shown)
    dim = config["feature_dim"]
    hidden = (config["head"].get("settings") or {}).get("hidden", [256, 256])
    expected = {f"{PREFIX}feature_mean": (dim,), f"{PREFIX}feature_std": (dim,)}
    width = dim
    for i, h in enumerate([*hidden, 1]):
        expected[f"{PREFIX}net.{2 * i}.weight"] = (h, width)
        expected[f"{PREFIX}net.{2 * i}.bias"] = (h,)
        width = h
    found = {name: shape for name, (_, shape, _, _) in index.items()}
    if found != expected:
        wrong = sorted(set(found.items()) ^ set(expected.items()))
        raise ModelError(f"{shown} does not fit a head on {dim} features with layers {hidden} (check {wrong[0][0]})")
    base = 8 + int.from_bytes(raw[:8], "little")
    for key in ("feature_mean", "feature_std"):
        dtype, _, start, end = index[f"{PREFIX}{key}"]
        if dtype not in ("F32", "F64"):
            raise ModelError(f"{shown}: {key} has dtype {dtype}")
        values = np.frombuffer(raw[base + start : base + end], dtype="<f8" if dtype == "F64" else "<f4")
        if not np.isfinite(values).all() or (key == "feature_std" and not (values > 0).all()):
            raise ModelError(f"{shown}: {key} holds values that are not finite{' and positive' if key == 'feature_std' else ''}")


def missing_state_message(path, name: str, file: str) -> str:
    """The one line for a detector file that config.json names but the directory lacks."""
    if name == "mahalanobis":
        return f"{path} has no {file}"
    what, fix = ("", "run `imgclean fit-head` again") if registry.DETECTORS[name].supervised else (" detector", "refit the model with `imgclean fit`")
    return f"{path} has no {file} though {CONFIG_FILE} names a {name}{what}; {fix}"
