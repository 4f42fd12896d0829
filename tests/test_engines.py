"""The engine seam (pipeline/engines/): one Protocol, a registry by name, and a third engine
written against the Protocol alone giving the local engine's records."""
from __future__ import annotations

import sys

import pytest

from imgclean.pipeline.decode import decode_one
from imgclean.pipeline.engines import registry
from imgclean.pipeline.engines.base import Engine, Outcome
from imgclean.pipeline.engines.local import LocalEngine
from imgclean.pipeline.engines.ray_engine import RayEngine, RayOptions
from imgclean.pipeline.engines.scoring import outcomes
from imgclean.pipeline.scan.scanner import ScanOptions, Scorer, run_scan
from imgclean.store.artifact import load_model


class SerialEngine:
    """A third engine, from the Protocol's docstring only: each batch decoded and scored in
    the calling thread, one file at a time, when it is collected."""

    def __init__(self, scorer, options, device):
        self.scorer, self.collected, self.cancelled = scorer, 0, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def submit(self, entries):
        return [e.fspath for e in entries]

    def collect(self, entries, handle):
        self.collected += 1
        decoded = [decode_one(path, self.scorer.settings) for path in handle]
        return outcomes(decoded, self.scorer.score_arrays)

    def cancel(self, handle):
        self.cancelled += 1

    def ahead(self):
        return 1


def make_engine(scorer, options=None, device="cpu"):
    return SerialEngine(scorer, options, device)


def test_both_engines_are_engines():
    assert issubclass(LocalEngine, Engine) and issubclass(RayEngine, Engine)
    assert issubclass(SerialEngine, Engine)
    assert registry.names()[:2] == ("local", "ray")


def test_an_outcome_reads_by_name_and_as_the_tuple_it_is():
    o = Outcome("ok", "", 2, 1, 0.5)
    assert (o.status, o.predicted, o.nearest, o.score) == ("ok", 2, 1, 0.5)
    assert o == ("ok", "", 2, 1, 0.5)


def test_unknown_engine_and_foreign_options_are_refused(tmp_path):
    with pytest.raises(registry.EngineError, match="unknown engine 'dask'"):
        registry.entry("dask")
    with pytest.raises(registry.EngineError, match="takes no options"):
        registry.create("local", scorer=None, options=RayOptions())
    assert registry.options_class("ray") is RayOptions and registry.options_class("local") is None


def test_a_third_engine_is_one_registry_entry_and_scans_like_the_local_one(model_dir, incoming, monkeypatch):
    folder, truth = incoming
    bundle = load_model(model_dir, lazy=True)
    local: list = []
    run_scan(folder, bundle, ScanOptions(batch_size=3, workers=1, use_cache=False), on_record=local.append)
    monkeypatch.setitem(sys.modules, "imgclean_tests.serial_engine", sys.modules[__name__])
    monkeypatch.setitem(registry.ENGINES, "serial", registry.EngineEntry("imgclean_tests.serial_engine", "make_engine"))
    serial: list = []
    summary = run_scan(folder, bundle, ScanOptions(batch_size=3, workers=1, use_cache=False, engine="serial"),
                       on_record=serial.append)
    assert len(local) == len(truth) and summary.scanned == len(truth)
    assert {r.status for r in local} >= {"ok", "ood"}
    assert [(r.path, r.status, r.predicted, r.score) for r in serial] == [(r.path, r.status, r.predicted, r.score) for r in local]


def test_the_scorer_answers_whether_its_model_is_loading(model_dir):
    scorer = Scorer(load_model(model_dir, lazy=True), batch_size=4)
    assert scorer.loading_model is False  # nothing asked it to load yet
    engine = LocalEngine(scorer)
    assert engine.ahead() == 2


def test_a_lazy_bundle_says_when_its_network_loads(model_dir):
    bundle = load_model(model_dir, lazy=True)
    said: list[str] = []
    assert bundle.around_load(lambda: said.append("loading"), lambda: said.append("loaded"))
    assert said == []  # nothing loads until the network is asked for
    assert bundle.model is not None and said == ["loading", "loaded"]
    assert not bundle.around_load(lambda: said.append("again"), lambda: None)  # loaded: nothing to wrap
