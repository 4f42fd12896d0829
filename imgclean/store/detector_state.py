"""Each detector's file in a model directory: encoding on save, checking and rebuilding on load.

Which detectors and files exist comes from detectors/registry.py. A detector's state is its
to_arrays(): written as an npz (np.savez; read back with allow_pickle=False) or, for the head, as
safetensors. On load the Mahalanobis npz and the head are checked by model_files' long-standing
checks, every other detector's npz by the pickle-free reader and the detector's own check_state;
then from_state() rebuilds it with the settings config.json holds for it.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..detectors import Detector, RejectHead, registry
from .model_files import (
    HEAD_FILE, ModelError, check_head_tensors, detector_entries, missing_state_message,  # noqa: F401  (re-exported)
    parse_detector_arrays, parse_state_arrays,
)


def encode_state(det: Detector) -> bytes:
    """The bytes of `det`'s file: safetensors for a .safetensors state_file, an npz otherwise."""
    arrays = det.to_arrays()
    if det.state_file.endswith(".safetensors"):
        from safetensors.numpy import save

        return save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def parse_states(config: dict, states: dict[str, bytes], path: Path) -> dict[str, object]:
    """Each detector file's contents, checked: its arrays (the head: its safetensors bytes, checked)."""
    out: dict[str, object] = {}
    for name, raw in states.items():
        shown = os.fspath(Path(path) / registry.DETECTORS[name].state_file)
        if name == "mahalanobis":
            out[name] = parse_detector_arrays(raw, config, shown)
        elif name == "head":
            check_head_tensors(raw, config, shown)
            out[name] = raw
        else:
            out[name] = parse_state_arrays(raw, name, config, shown)
    return out


def build_detectors(parsed: dict[str, object], config: dict, path: Path) -> dict[str, Detector]:
    """name -> detector, rebuilt from parse_states' output and config.json's settings."""
    entries = detector_entries(config)
    out: dict[str, Detector] = {}
    for name, state in parsed.items():
        if name == "head":
            out[name] = _build_head(state, config, Path(path) / HEAD_FILE)
        else:
            out[name] = registry.DETECTORS[name].from_state(state, entries[name]["settings"])
    return out


def _build_head(raw: bytes, config: dict, file: Path) -> RejectHead:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        return RejectHead.from_state(load(raw), config["head"].get("settings") or {})
    except (SafetensorError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{file} is damaged or not an imgclean head ({exc}); run `imgclean fit-head` again") from None
