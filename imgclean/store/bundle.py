"""ModelBundle: a loaded model (settings, network, detectors), as store/artifact.load_model gives it.

Both heavy parts may be deferred: the network (torch) to the first use of `bundle.model`, the
detectors' states (numpy) to the first use of `bundle.detectors`, so a scan whose every file is
a cache hit imports neither. store/artifact.py re-exports it (its public home).
"""
from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path
from typing import Callable

from ..config import decode_options
from ..detectors import Detector, MahalanobisDetector, RejectHead, registry


class ModelBundle:
    """Everything `scan` needs: settings, the network and the fitted detectors.

    `detectors` maps registry names to fitted detectors; `detector` (Mahalanobis, always there)
    and `head` (the optional supervised head; config["head"] describes it) are two of them.
    `model` may be given as None with a `loader`: the network (and torch) is then loaded on the
    first access of `bundle.model`, so a scan whose every file is a cache hit never imports torch.
    `detectors` may likewise be given as a `detector_loader` with the names it will give
    (`detector_names`): the states are parsed (with numpy) on the first access of
    `bundle.detectors`, so such a scan never imports numpy either.
    """

    def __init__(
        self, config: dict, model: object = None, detector: MahalanobisDetector | None = None,
        path: Path | None = None, head: RejectHead | None = None, loader: Callable[[], object] | None = None,
        detectors: dict[str, Detector] | None = None,
        detector_loader: Callable[[], dict[str, Detector]] | None = None, detector_names: tuple[str, ...] = (),
    ):
        self.config = config
        self._detectors: dict[str, Detector] = dict(detectors or {})
        self._detector_loader = detector_loader
        self._pending_names = tuple(detector_names) if detector_loader is not None else ()
        self._detectors_lock = threading.Lock()
        if detector is not None:
            self.detectors["mahalanobis"] = detector
        if head is not None:
            self.detectors["head"] = head
        self.path = path
        self._loader = loader
        if model is not None:
            self.__dict__["model"] = model  # where cached_property keeps its value
        elif loader is None:
            raise ValueError("a ModelBundle needs a model or a loader")

    def around_load(self, before: Callable[[], None], after: Callable[[], None]) -> bool:
        """Call `before` and `after` around the network's deferred load (a progress bar says so
        while it loads); False when the network is loaded already (nothing to wrap)."""
        loader = self._loader
        if loader is None or "model" in self.__dict__:
            return False

        def load():
            before()
            try:
                return loader()
            finally:
                after()

        self._loader = load
        return True

    @property
    def detectors(self) -> dict[str, Detector]:
        """Registry name -> fitted detector (parsed from the model's files at the first access
        for a bundle given a detector_loader)."""
        if self._detector_loader is not None:
            with self._detectors_lock:
                if self._detector_loader is not None:
                    self._detectors = {**self._detector_loader(), **self._detectors}
                    self._detector_loader = None
                    self._pending_names = ()
        return self._detectors

    @detectors.setter
    def detectors(self, value: dict[str, Detector]) -> None:
        with self._detectors_lock:
            self._detectors = dict(value)
            self._detector_loader = None
            self._pending_names = ()

    @property
    def detector_names(self) -> tuple[str, ...]:
        """The registry names of the detectors the bundle has, without parsing a deferred state."""
        if self._detector_loader is None:
            return tuple(self._detectors)
        return tuple(dict.fromkeys((*self._pending_names, *self._detectors)))

    @property
    def detectors_loaded(self) -> bool:
        return self._detector_loader is None

    @cached_property
    def model(self):  # models.Classifier; torch is imported here for a lazy bundle
        self.detectors  # deferred states first: their damage is reported before the network's, as at load
        model = self._loader()
        self._loader = None  # drops the weights' bytes
        return model

    @property
    def model_loaded(self) -> bool:
        return "model" in self.__dict__

    @property
    def detector(self) -> MahalanobisDetector | None:
        return self.detectors.get("mahalanobis")  # type: ignore[return-value]

    @detector.setter
    def detector(self, value: MahalanobisDetector | None) -> None:
        self._set("mahalanobis", value)

    @property
    def head(self) -> RejectHead | None:
        return self.detectors.get("head")  # type: ignore[return-value]

    @head.setter
    def head(self, value: RejectHead | None) -> None:
        self._set("head", value)

    def _set(self, name: str, value) -> None:
        self.detectors  # a deferred state first, so that it cannot overwrite this one
        if value is None:
            self.detectors.pop(name, None)
        else:
            self.detectors[name] = value

    def available_methods(self) -> list[str]:
        """The --method values this model can serve (detectors/registry.py)."""
        return registry.available_methods(self.detector_names)

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
    def interpolation(self) -> str:
        """The resize filter of the model's inputs (a key of data.INTERPOLATIONS)."""
        return decode_options(self.config)["interpolation"]

    @property
    def crop_pct(self) -> float:
        """The share of the centre square kept before resizing (timm's crop_pct)."""
        return decode_options(self.config)["crop_pct"]

    @property
    def fingerprint(self) -> str:
        return str(self.config.get("fingerprint", ""))
