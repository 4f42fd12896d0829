"""`imgclean learn`: a quarantine's review -> features -> learn() -> a new model version.

1. read the review (pipeline/learn/review_rows.py) and embed every file still there with its
   recorded content; a file gone (deleted) or changed teaches through the features its move
   wrote to the quarantine's imgclean-features.bin (pipeline/scan/move_features.py) when this model
   made them (same fingerprint), and is counted as unusable otherwise;
2. too few usable decisions: stop here, changing nothing (the reason says why);
3. embed the training folder the model records (or `train_dir`), with fit's validation split
   recomputed from config.json (the images the network did not train on set the threshold);
4. learn() (pipeline/learn/rule.py): the learned rule, held-out evidence, the default method;
5. keep the current version in MODEL/versions/<n>/ and save the new one in its place
   (store/model_history.py, store/artifact.save_model: atomic, what scan loads).
Never prints; returns a LearnOutcome for the CLI.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .rule import (
    LEARNED_METHOD, KINDS, LabelledFeatures, LearnError, LearnResult, LearnSettings, learn, too_few,
)
from .review_rows import QuarantineReview, read_review, read_verified

log = logging.getLogger(__name__)

SETTINGS = LearnSettings()  # what `imgclean learn` uses (tests swap in smaller networks)


@dataclass
class LearnOutcome:
    model: Path
    review: QuarantineReview
    usable: dict[str, int]  # kind -> files that teach (read with their recorded content)
    unusable: dict[str, int]  # kind -> files gone, changed or undecodable
    from_log: dict[str, int] = field(default_factory=dict)  # kind -> usable files taught by logged features
    result: LearnResult | None = None
    reason: str = ""
    version_kept: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.result is not None and self.result.changed

    def to_dict(self) -> dict:
        r = self.result
        return {
            "model": os.fsdecode(self.model), "quarantine": os.fsdecode(self.review.quarantine),
            "changed": self.changed, "reason": self.reason, "usable": self.usable, "unusable": self.unusable,
            "from_log": self.from_log, "embedded": {k: v - self.from_log.get(k, 0) for k, v in self.usable.items()},
            "default_method": None if r is None else r.default_method,
            "previous_default": None if r is None else r.previous_default,
            "version_kept": self.version_kept, "problems": self.problems,
            "evidence": None if r is None or r.evidence is None else r.evidence.to_dict(),
        }


def decode_bytes(blob: bytes, bundle) -> np.ndarray | None:
    """Decode verified bytes from a private in-memory file (the path on disk is not opened again)."""
    from ... import data
    from ...config import decode_options

    fd = os.memfd_create("imgclean-learn", os.MFD_CLOEXEC)
    try:
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view):]
        return data.decode_image(Path(f"/proc/self/fd/{fd}"), bundle.input_size, bundle.channels,
                                 **decode_options(bundle.config))
    except data.DecodeError:
        return None
    finally:
        os.close(fd)


@dataclass
class _Collected:
    images: list = field(default_factory=list)
    image_kinds: list = field(default_factory=list)
    logged: list = field(default_factory=list)
    logged_kinds: list = field(default_factory=list)


def _features_log(bundle, review: QuarantineReview):
    """The quarantine's features log, read once (records of moves its journal knows)."""
    from ...quarantine.features_log import read_log
    from ...quarantine.journal import fold

    known = {jid for jid, op in fold(review.quarantine).ops.items() if op["op"] == "move"}
    logged = read_log(review.quarantine, known)
    review.problems += [p for p in logged.problems if p not in review.problems]
    return logged


def review_features(bundle, review: QuarantineReview, device: str
                    ) -> tuple[LabelledFeatures | None, dict, dict, dict]:
    """(features and kinds of the files that teach, usable counts, unusable counts, how many of
    the usable ones came from the features log)."""
    from ..fit.headfit import embed

    usable, unusable, from_log = dict.fromkeys(KINDS, 0), dict.fromkeys(KINDS, 0), dict.fromkeys(KINDS, 0)
    logged, got = None, _Collected()
    fingerprint = bundle.config.get("fingerprint")
    for item in review.items:
        blob = read_verified(item)
        image = None if blob is None else decode_bytes(blob, bundle)
        if image is not None:
            got.images.append(image)
            got.image_kinds.append(item.kind)
            usable[item.kind] += 1
            continue
        if item.move_id is not None and logged is None:
            logged = _features_log(bundle, review)
        record = None if item.move_id is None else logged.get(item.move_id, fingerprint)
        if record is None:
            unusable[item.kind] += 1
            continue
        got.logged.append(record.features)
        got.logged_kinds.append(item.kind)
        usable[item.kind] += 1
        from_log[item.kind] += 1
    rows = [embed(bundle, np.stack(got.images), device)] if got.images else []
    if got.logged:
        rows.append(np.stack(got.logged).astype(np.float32))
    if not rows:
        return None, usable, unusable, from_log
    if len({r.shape[1] for r in rows}) != 1:  # same fingerprint, same network: cannot differ unless damaged
        raise LearnError("the features in the quarantine's features file do not match the model's; move it aside")
    return LabelledFeatures(np.concatenate(rows), tuple(got.image_kinds + got.logged_kinds)), usable, unusable, from_log


def training_features(bundle, train_dir: Path | None, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(features of the training images, the rows fit held out for validation)."""
    from ...config import decode_options
    from ...nn.training import stratified_split
    from ..fit.headfit import embed
    from ..fit.trainset import FitError, decode_classes, list_training_folder

    recorded = (bundle.config.get("data") or {}).get("train_dir")
    source = Path(train_dir) if train_dir is not None else (Path(recorded) if isinstance(recorded, str) else None)
    if source is None or not source.is_dir():
        where = "does not record its training folder" if source is None else f"'s training folder {source} is gone"
        raise LearnError(f"the model{where}; give it with --train-dir (the rule learns what belongs from it)")
    try:
        folder = list_training_folder(source)
        if folder.class_names != bundle.class_names:
            raise LearnError(f"{source} has classes {folder.class_names}, the model {bundle.class_names}; "
                             "give the model's training folder with --train-dir")
        images, labels, _ = decode_classes(folder.class_names, folder.class_files, bundle.input_size,
                                           bundle.channels, **decode_options(bundle.config))
    except FitError as exc:
        raise LearnError(str(exc)) from None
    training = bundle.config.get("training") or {}
    fraction, seed = training.get("val_fraction", 0.1), training.get("seed", 0)
    held_out = stratified_split(labels, float(fraction), int(seed))[1] if isinstance(seed, int) else None
    return embed(bundle, images, device), held_out


def run_learn(quarantine: Path, model: Path, *, train_dir: Path | None = None, device: str = "cpu",
              settings: LearnSettings | None = None, seed: int = 0) -> LearnOutcome:
    """Learn from the review of `quarantine` and save the result as the new version of `model`."""
    from ...store import model_history
    from ...store.artifact import load_model, read_config, save_model

    settings = settings or SETTINGS
    model = Path(model)
    bundle = load_model(model, device=device)
    review = read_review(quarantine)
    decisions, usable, unusable, from_log = review_features(bundle, review, device)
    outcome = LearnOutcome(model, review, usable, unusable, from_log, problems=list(review.problems))
    reason = too_few(usable, settings)
    if reason is not None or decisions is None:
        gone = sum(unusable.values())
        outcome.reason = (reason or "nothing to learn from") + (
            f" ({gone} decided file(s) are gone or changed and cannot teach)" if gone else "")
        return outcome
    train, held_out = training_features(bundle, train_dir, device)
    with model_history.locked(model):
        if read_config(model).get("fingerprint") != bundle.config.get("fingerprint"):
            raise LearnError(f"{model} was replaced while this learn read it; run `imgclean learn` again")
        result = learn(bundle, decisions, train, rng=seed, settings=settings, held_out=held_out)
        outcome.result, outcome.reason = result, result.reason
        if not result.changed:
            return outcome
        outcome.version_kept = model_history.keep(model)
        bundle.detectors[LEARNED_METHOD] = result.detector
        update = result.config_update()
        update["learned"]["unusable"] = {k: v for k, v in unusable.items() if v}
        update["learned"]["from_features_log"] = {k: v for k, v in from_log.items() if v}
        bundle.config = {**bundle.config, **update}
        save_model(bundle, model, force=True)
    return outcome
