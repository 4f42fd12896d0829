"""One detector contract: fit(context), calibrate(...), the shared percentile threshold, the fit
context with the classifier's last layer, and fit / audit / evaluate driven by the registry alone
(a detector registered at run time is fitted, calibrated and evaluated with no other edit)."""
import numpy as np
import pytest

from imgclean.config import FitConfig, TrainSettings
from imgclean.detectors import MahalanobisDetector, registry
from imgclean.detectors.base import Detector, FitContext
from imgclean.detectors.energy import EnergyDetector
from imgclean.detectors.threshold import RatioThreshold, ShiftThreshold, check_percentile

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(n=90, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = np.eye(k, d)[y] * 5 + rng.normal(0, 1, (n, d))
    return x, x @ np.eye(k, d).T, y


class MeanDistance(Detector):
    """A detector the pipeline has never heard of: distance to the training mean / percentile."""

    name = "meandist"
    inputs = ("features",)
    state_file = "detector-meandist.npz"
    summary = "distance to the mean / threshold"
    fitted_on: list = []

    def __init__(self, percentile=97.5):
        self.percentile = percentile

    def _fit(self, context):
        x = np.asarray(context.features, dtype=np.float64)
        MeanDistance.fitted_on.append(len(x))
        self.mean_ = x.mean(axis=0)
        self.cutoff_ = RatioThreshold.from_training(np.linalg.norm(x - self.mean_, axis=1), self.percentile)
        return self

    def score(self, features=None, logits=None):
        return self.cutoff_.normalise(np.linalg.norm(np.asarray(features) - self.mean_, axis=1))

    def move_threshold(self, cut):
        self.cutoff_.move(cut)

    def calibration_metrics(self):
        return {"meandist_scale": self.cutoff_.scale}


@pytest.fixture
def extra_detector(monkeypatch):
    monkeypatch.setitem(registry.DETECTORS, MeanDistance.name, MeanDistance)
    MeanDistance.fitted_on = []
    return MeanDistance


def test_a_newly_registered_detector_is_fitted_and_calibrated_by_fit(train_dir, extra_detector):
    from imgclean.pipeline.fit.fit_model import fit_model

    bundle, report = fit_model(train_dir, FitConfig(device="cpu", train=TrainSettings(epochs=1, batch_size=16)))
    assert list(bundle.detectors)[-1] == "meandist" and list(bundle.detectors)[0] == registry.DEFAULT_METHOD
    assert extra_detector.fitted_on and extra_detector.fitted_on[0] < sum(report.images_per_class)  # the training split
    assert "meandist" in report.calibration["detectors"]  # calibrated on the held-out split, like the others
    assert report.metrics["meandist_scale"] == pytest.approx(report.calibration["detectors"]["meandist"]["cut"])
    assert "val_rejected_fraction_meandist" in report.metrics and "threshold_scale" in report.metrics


def test_every_unsupervised_detector_fits_the_same_from_a_context_or_from_keywords():
    x, logits, y = blobs()
    context = FitContext(features=x, logits=logits, labels=y, num_classes=3, percentile=90.0,
                         classifier_weight=np.eye(3, 5), classifier_bias=np.zeros(3))
    for cls in registry.unsupervised():
        a = cls.for_context(context).fit(context)
        b = cls(percentile=90.0).fit(features=x, logits=logits, labels=y, num_classes=3,
                                     classifier_weight=np.eye(3, 5), classifier_bias=np.zeros(3))
        assert a.percentile == 90.0
        assert np.array_equal(a.score(features=x, logits=logits), b.score(features=x, logits=logits)), cls.name


def test_mahalanobis_keeps_its_positional_form_and_takes_covariance_from_the_context():
    x, _, y = blobs()
    old = MahalanobisDetector(97.5, "class").fit(x, y, num_classes=3)
    context = FitContext(features=x, labels=y, num_classes=3, covariance="class")
    new = MahalanobisDetector.for_context(context).fit(context)
    assert new.covariance == "class" and np.array_equal(old.score(features=x), new.score(features=x))
    with pytest.raises(TypeError):
        new.fit(context, y)


def test_fit_context_rows_take_the_same_rows_of_every_output():
    x, logits, y = blobs(n=12)
    context = FitContext(features=x, logits=logits, labels=y, class_names=("a", "b", "c"))
    part = context.rows(np.array([1, 5]))
    assert np.array_equal(part.features, x[[1, 5]]) and np.array_equal(part.logits, logits[[1, 5]])
    assert np.array_equal(part.labels, y[[1, 5]]) and part.class_names == ("a", "b", "c") and part.classes() == 3
    with pytest.raises(AttributeError):
        part.percentile = 50  # frozen


def test_every_calibrated_detector_scores_the_held_out_cut_as_one():
    x, logits, y = blobs(seed=1)
    held, held_logits, _ = blobs(n=60, seed=2)
    context = FitContext(features=x, logits=logits, labels=y, num_classes=3,
                         classifier_weight=np.eye(3, 5), classifier_bias=np.zeros(3))
    for cls in registry.unsupervised():
        det = cls.for_context(context).fit(context)
        before = det.score(features=held, logits=held_logits)
        cut = det.calibrate(features=held, logits=held_logits)
        after = det.score(features=held, logits=held_logits)
        row = int(np.argmin(np.abs(before - cut.cut)))
        assert after[row] == pytest.approx(1.0), cls.name
        assert np.array_equal(np.argsort(before, kind="stable"), np.argsort(after, kind="stable")), cls.name


def test_the_shared_thresholds_match_the_arithmetic_they_replace():
    raw = np.random.default_rng(0).normal(size=200)
    shift = ShiftThreshold.from_training(raw, 97.5)
    t = np.percentile(raw, 97.5)
    assert shift.value == t and shift.spread == t - np.median(raw)
    assert np.array_equal(shift.normalise(raw), 1.0 + (raw - t) / (t - np.median(raw)))
    shift.move(1.5)
    assert shift.value == pytest.approx(t + 0.5 * (t - np.median(raw)))
    flat = ShiftThreshold.from_training(np.full(5, 3.0), 97.5)
    assert flat.spread == 1.0  # no spread at all: one unit
    ratio = RatioThreshold.from_training(np.abs(raw), 90)
    assert ratio.value == np.percentile(np.abs(raw), 90)
    ratio.move(2.0)
    assert ratio.value == 2.0 * np.percentile(np.abs(raw), 90)
    assert RatioThreshold.from_training(np.zeros(4), 50).value == 1e-12
    for bad in (0, 100, -1, 150):
        with pytest.raises(ValueError, match="between 0 and 100"):
            check_percentile(bad)


def test_energy_state_is_unchanged_by_the_shared_threshold():
    logits = np.random.default_rng(3).normal(size=(50, 4)) * 3
    det = EnergyDetector().fit(logits=logits)
    arrays = det.to_arrays()
    assert set(arrays) == {"percentile", "temperature", "classes", "train_median", "base_threshold", "shift", "spread"}
    assert det.settings()["threshold"] == det.threshold_ == arrays["base_threshold"] + arrays["shift"]


@pytest.mark.parametrize("logits", ["linear", "gaussian"])
def test_last_layer_is_the_affine_map_of_the_logits(logits):
    import torch

    from imgclean.nn.models import build_model, last_layer

    torch.manual_seed(0)
    model = build_model("lenet", 4, 1, 28, logits=logits).eval()
    with torch.no_grad():
        x = torch.rand(6, 1, 28, 28)
        out, feats = model(x)
        h = model.backbone(x)
    weight, bias, given = last_layer(model)
    assert weight.shape == (4, 120) and bias.shape == (4,)
    inputs = feats.numpy() if given == "features" else h.numpy()
    assert given == ("features" if logits == "gaussian" else "unnormalised")
    assert np.allclose(inputs.astype(np.float64) @ weight.T + bias, out.numpy(), atol=1e-4)


def test_audit_fits_any_registered_detector_through_the_contract(extra_detector):
    from imgclean.pipeline.audit.crossfit import fit_detector

    x, logits, y = blobs(n=60)
    context = FitContext(features=x, logits=logits, labels=y, num_classes=3, percentile=95.0)
    det = fit_detector("meandist", context, np.arange(40), np.arange(40, 60), trim=0.05)
    assert isinstance(det, MeanDistance) and extra_detector.fitted_on == [40, 38]  # trimmed 2 of 40, refitted
    assert det.cutoff_.scale != 1.0  # calibrated on rows 40..59
