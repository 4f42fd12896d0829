"""ViM (Wang et al. 2022): the origin -pinv(W) b, the principal subspace, alpha, the virtual
logit, the feature recovered from the deep feature and the logits, and its file in a model."""
import io
import json

import numpy as np
import pytest

from imgclean.detectors.base import FitContext
from imgclean.detectors.vim import ViMDetector, principal_dim

pytestmark = pytest.mark.usefixtures("one_torch_thread")
K, DIM = 4, 12


def network(n=400, seed=0):
    """Features h with most of their spread in 5 directions, and a classifier with a bias."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0]
    y = np.arange(n) % K
    centres = rng.normal(0, 4, (K, 5))
    h = (centres[y] + rng.normal(0, 1, (n, 5))) @ basis[:, :5].T + rng.normal(0, 0.05, (n, DIM)) + 3.0
    w, b = rng.normal(size=(K, DIM)), rng.normal(size=K)
    return h, w, b, y, basis


def context(h, w, b, y, given="unnormalised"):
    f = h / np.linalg.norm(h, axis=1, keepdims=True)
    return FitContext(features=f if given == "unnormalised" else h, logits=h @ w.T + b, labels=y, num_classes=K,
                      classifier_weight=w, classifier_bias=b, classifier_input=given)


def reference_raw(h_train, logits_train, h, logits, w, b, d):
    """The paper's score written out independently (SVD instead of eigh; the residual as what
    the projection on the principal subspace leaves of the norm)."""
    u = -np.linalg.pinv(w) @ b
    top = np.linalg.svd(h_train - u, full_matrices=False)[2][:d].T

    def residual(x):
        xc = x - u
        return np.sqrt(np.maximum((xc**2).sum(1) - ((xc @ top) ** 2).sum(1), 0))

    alpha = logits_train.max(1).sum() / residual(h_train).sum()
    virtual = alpha * residual(h)  # log(p / (1 - p)), p = softmax([logits, virtual])[-1], without overflow:
    return virtual - np.log(np.exp(logits).sum(1))


def test_principal_dim_follows_the_papers_rule_and_the_data():
    assert principal_dim(2048, 10**6) == 1000 and principal_dim(1280, 10**6) == 512
    assert principal_dim(120, 10**6) == 60 and principal_dim(10, 4) == 3 and principal_dim(2, 100) == 1


@pytest.mark.parametrize("given", ["unnormalised", "features"])
def test_vim_is_the_papers_score_on_the_classifiers_input(given):
    h, w, b, y, _ = network()
    det = ViMDetector(dim=5).fit(context(h, w, b, y, given))
    assert np.allclose(w @ det.origin_ + b, 0, atol=1e-9)  # the logits vanish at the origin
    new, _, _, _, _ = network(n=50, seed=1)
    ctx = context(new, w, b, np.zeros(50, int), given)
    expected = reference_raw(h, h @ w.T + b, new, new @ w.T + b, w, b, 5)
    assert np.allclose(det.raw_scores(ctx.features, ctx.logits), expected, atol=1e-6)


def test_features_off_the_training_subspace_are_rejected():
    h, w, b, y, basis = network()
    det = ViMDetector().fit(context(h, w, b, y))
    assert det.settings()["principal_dim"] == DIM // 2
    train = context(h, w, b, y)
    assert np.mean(det.score(features=train.features, logits=train.logits) > 1) == pytest.approx(0.025, abs=0.01)
    # the same logits a class centre gets, but far along a direction no training image varies in
    odd = h[:20] + 15 * basis[:, -1]
    ctx = context(odd, w, b, y[:20])
    assert (det.score(features=ctx.features, logits=ctx.logits) > 1).all()


def test_without_a_network_the_last_layer_is_estimated_from_the_rows():
    h, w, b, y, _ = network()
    guessed = ViMDetector(dim=5).fit(features=h, logits=h @ w.T + b, labels=y)  # the keyword form: no W, b
    exact = ViMDetector(dim=5).fit(context(h, w, b, y, "features"))
    assert np.allclose(guessed.weight_, w) and np.allclose(guessed.bias_, b)
    assert np.allclose(guessed.raw_scores(h, h @ w.T + b), exact.raw_scores(h, h @ w.T + b))
    with pytest.raises(ValueError, match="two or more rows"):
        ViMDetector().fit(features=h[:1], logits=(h @ w.T + b)[:1])


def test_vim_needs_a_fitted_state_and_matching_inputs():
    h, w, b, y, _ = network(n=40)
    with pytest.raises(ValueError, match="principal dimension"):
        ViMDetector(dim=DIM).fit(context(h, w, b, y))
    det = ViMDetector().fit(context(h, w, b, y))
    with pytest.raises(ValueError, match="dimensions"):
        det.score(features=np.ones((2, DIM + 1)), logits=np.ones((2, K)))


def test_the_state_round_trips_and_damage_is_refused():
    h, w, b, y, _ = network()
    det = ViMDetector(percentile=95).fit(context(h, w, b, y))
    det.calibrate(*(lambda c: (c.features, c.logits))(context(*network(n=80, seed=3)[:3], np.zeros(80, int))))
    arrays = det.to_arrays()
    ViMDetector.check_state(arrays, DIM, K)
    again = ViMDetector.from_state(arrays, json.loads(json.dumps(det.settings())))
    ctx = context(h, w, b, y)
    assert np.array_equal(again.score(features=ctx.features, logits=ctx.logits), det.score(features=ctx.features, logits=ctx.logits))
    for key, value, text in (("weight", np.ones((K + 1, DIM)), "weight"), ("origin", np.full(DIM, np.nan), "origin"),
                             ("residual_basis", np.ones((DIM, DIM)), "residual_basis"), ("alpha", np.array(-1.0), "alpha"),
                             ("unnormalised", np.array(2), "unnormalised")):
        with pytest.raises(ValueError, match=text):
            ViMDetector.check_state({**arrays, key: value}, DIM, K)


def test_a_damaged_vim_file_in_a_model_is_a_one_line_refusal(model_copy):
    from imgclean.store.artifact import ModelError, load_model

    path = model_copy / ViMDetector.state_file
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["residual_basis"] = arrays["residual_basis"][:, :0]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    with pytest.raises(ModelError) as info:
        load_model(model_copy, lazy=True)
    assert "detector-vim.npz" in str(info.value) and "residual_basis" in str(info.value) and "\n" not in str(info.value)


def test_a_fitted_model_scores_with_vim(model_dir):
    from imgclean.store.artifact import load_model

    bundle = load_model(model_dir)
    det = bundle.detectors["vim"]
    assert det.settings()["classifier_input"] == "unnormalised" and det.alpha_ > 0  # lenet: a trained linear head
    assert "vim_threshold_shift" in bundle.config["metrics"] and "vim" in bundle.config["calibration"]["detectors"]


def test_audit_fits_vim_per_fold_with_the_folds_classifier():
    from imgclean.pipeline.audit.crossfit import fit_detector

    h, w, b, y, _ = network()
    det = fit_detector("vim", context(h, w, b, y), np.arange(300), np.arange(300, 400), trim=0.02)
    assert isinstance(det, ViMDetector) and np.allclose(det.weight_, w)
    assert det.cutoff_.shift != 0.0  # calibrated on the held-out rows
