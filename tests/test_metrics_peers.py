"""The attribution metrics against their peers' numbers on the same small VGG (tests/torch_reference.py's
weights): ROAD and the confidence changes against pytorch-grad-cam 1.5, the Quantus-defined metrics against
Quantus 0.6 (both installed --no-deps by the test extra's instructions; tests/stand_ins/ gives them the
torchvision names they import)."""

from __future__ import annotations

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("torchvision") is None:  # no CPU build here: the peers only import it
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "stand_ins"))

import torch_reference as tr  # noqa: E402

from jaxviz import attribution as A  # noqa: E402
from jaxviz import models, weights  # noqa: E402
from jaxviz.attribution import metrics  # noqa: E402

STAGES = ((8, 8), (16,))
SIZE = 32
TARGET = np.array([3, 7])

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.fixture(scope="module")
def setup():
    net = models.VGG(stages=STAGES, fc_features=32, num_classes=10, pool_output=(2, 2))
    ref = tr.make(STAGES, seed=1, num_classes=10, fc_features=32, pool_output=(2, 2)).eval()
    with torch.no_grad():  # torchvision's N(0, 0.01) classifier gives near-equal logits: make the scores move
        for name in ("classifier.0", "classifier.3", "classifier.6"):
            ref.get_submodule(name).weight.mul_(30.0)
    params = weights.from_torchvision(ref.state_dict(), net)
    rng = np.random.RandomState(1)
    x = rng.rand(2, SIZE, SIZE, 3).astype(np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    heat = np.stack([np.exp(-((yy - .4) ** 2 + (xx - .6) ** 2) / .05), np.exp(-((yy - .7) ** 2 + (xx - .3) ** 2) / .03)])
    heat = (heat + 0.05 * rng.rand(*heat.shape)).astype(np.float32)  # no ties
    heat = (heat - heat.min((1, 2), keepdims=True)) / np.ptp(heat, axis=(1, 2), keepdims=True)
    with jax.default_matmul_precision("highest"):
        yield net, ref, params, jnp.asarray(x), heat


# --------------------------------------------------------------------------- pytorch-grad-cam


@pytest.fixture(scope="module")
def pgc_metrics():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics import cam_mult_image, perturbation_confidence, road
    from pytorch_grad_cam.utils import model_targets

    return road, perturbation_confidence, cam_mult_image, model_targets


def test_linear_imputation_equals_pytorch_grad_cams_sparse_solve(setup, pgc_metrics):
    road, *_ = pgc_metrics
    _, _, _, x, heat = setup
    keep = (heat < np.percentile(heat, 30, axis=(1, 2), keepdims=True)).astype(np.float32)  # 70% removed
    ours = np.asarray(metrics.noisy_linear_imputation(x, keep == 0, noise=0.0))
    imputer = road.NoisyLinearImputer(noise=0.0)
    for i in range(2):
        want = imputer(tr.to_nchw(np.asarray(x[i:i + 1]))[0], torch.from_numpy(keep[i])).numpy().transpose(1, 2, 0)
        assert rel_err(ours[i], want) < 1e-5
        np.testing.assert_array_equal(ours[i][keep[i] > 0], np.asarray(x[i])[keep[i] > 0])
    # the noise: N(0, noise^2) on the removed pixels only
    noisy = np.asarray(metrics.noisy_linear_imputation(x, keep == 0, noise=0.5, key=3))
    d = (noisy - ours)[np.broadcast_to((keep == 0)[..., None], ours.shape)]
    assert abs(d.std() - 0.5) < 0.02 and abs(d.mean()) < 0.02
    np.testing.assert_array_equal(noisy[np.broadcast_to((keep > 0)[..., None], ours.shape)],
                                  ours[np.broadcast_to((keep > 0)[..., None], ours.shape)])


@pytest.mark.parametrize("probabilities", [True, False])
def test_road_equals_pytorch_grad_cams(setup, pgc_metrics, probabilities):
    road, pc, _, mt = pgc_metrics
    net, ref, params, x, heat = setup
    pct = (20, 50, 80)
    ours = metrics.road(net, params, x, TARGET, heat, percentiles=pct, noise=0.0, probabilities=probabilities,
                        batch_size=4)
    target = mt.ClassifierOutputSoftmaxTarget if probabilities else mt.ClassifierOutputTarget
    targets = [target(int(t)) for t in TARGET]
    xt = tr.to_nchw(np.asarray(x))
    morf, lerf = [], []
    for p in pct:  # pytorch-grad-cam's ROAD*RelevantFirst(p), with its imputer's noise set to 0
        mo = pc.PerturbationConfidenceMetric(pc.RemoveMostRelevantFirst(p, road.NoisyLinearImputer(noise=0.0)))
        le = pc.PerturbationConfidenceMetric(pc.RemoveLeastRelevantFirst(p, road.NoisyLinearImputer(noise=0.0)))
        morf.append(mo(xt, heat, targets, ref))
        lerf.append(le(xt, heat, targets, ref))
    morf, lerf = np.stack(morf, 1), np.stack(lerf, 1)
    scale = np.abs(morf).max()
    np.testing.assert_allclose(ours.morf, morf, atol=1e-4 * scale)
    np.testing.assert_allclose(ours.lerf, lerf, atol=1e-4 * scale)
    np.testing.assert_allclose(ours.combined, (lerf.mean(1) - morf.mean(1)) / 2, atol=1e-4 * scale)
    assert np.abs(morf).max() > 1e-3  # the removals move the scores (the comparison is not of zeros)
    # the default noise changes the numbers a little, and batch_size does not change them
    noisy = metrics.road(net, params, x, TARGET, heat, percentiles=pct, probabilities=probabilities, batch_size=5)
    again = metrics.road(net, params, x, TARGET, heat, percentiles=pct, probabilities=probabilities, batch_size=2)
    np.testing.assert_allclose(noisy.morf, again.morf, rtol=1e-5, atol=1e-7)
    assert 0 < rel_err(noisy.morf, ours.morf) < 0.5


def test_confidence_changes_equal_pytorch_grad_cams(setup, pgc_metrics):
    _, _, cmi, mt = pgc_metrics
    net, ref, params, x, heat = setup
    targets = [mt.ClassifierOutputSoftmaxTarget(int(t)) for t in TARGET]
    xt = tr.to_nchw(np.asarray(x))
    change = cmi.CamMultImageConfidenceChange()(xt, heat, targets, ref)
    drop = cmi.DropInConfidence()(xt, heat, targets, ref)
    inc = cmi.IncreaseInConfidence()(xt, heat, targets, ref)
    np.testing.assert_allclose(metrics.confidence_change(net, params, x, TARGET, heat), change, atol=1e-6)
    np.testing.assert_allclose(metrics.drop_in_confidence(net, params, x, TARGET, heat), drop, atol=1e-6)
    np.testing.assert_array_equal(metrics.increase_in_confidence(net, params, x, TARGET, heat), inc)
    assert np.abs(change).max() > 1e-4


# --------------------------------------------------------------------------- Quantus


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def _nchw(a):
    a = np.asarray(a, np.float32)
    return a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)


def _channel_attr(x, seed=3):
    return np.random.default_rng(seed).normal(size=np.shape(x)).astype(np.float32)  # distinct values: no ties


def test_pixel_flipping_equals_quantus(setup, quantus):
    net, ref, params, x, _ = setup
    attr = _channel_attr(x)
    ours = metrics.pixel_flipping(net, params, x, TARGET, attr, features_in_step=64, baseline=0.3, batch_size=7)
    want = quantus.PixelFlipping(features_in_step=64, perturb_baseline=0.3, normalise=False, disable_warnings=True)(
        model=ref, x_batch=tr.to_nchw(np.asarray(x)).numpy(), y_batch=TARGET, a_batch=_nchw(attr), device="cpu")
    want = np.asarray(want)
    assert ours.scores.shape == want.shape == (2, 48)
    np.testing.assert_allclose(ours.scores, want, rtol=1e-4, atol=1e-6)
    assert np.ptp(want) > 0.05  # the curve moves
    steps = want.shape[1]
    np.testing.assert_allclose(ours.auc * steps, np.trapezoid(want, dx=1, axis=1), rtol=1e-4)


@pytest.mark.parametrize("patch", [8, 12])
def test_region_perturbation_equals_quantus(setup, quantus, patch):
    net, ref, params, x, heat = setup
    ours = metrics.region_perturbation(net, params, x, TARGET, heat, patch_size=patch, regions=6, baseline=0.3)
    want = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=6, perturb_baseline=0.3, normalise=False,
                                      disable_warnings=True)(
        model=ref, x_batch=tr.to_nchw(np.asarray(x)).numpy(), y_batch=TARGET, a_batch=_nchw(heat), device="cpu")
    want = np.asarray(want)
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-6)
    assert np.abs(want).max() > 1e-3


def test_irof_equals_quantus_on_slic_segments(setup, quantus, monkeypatch):
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    if not hasattr(np, "trapz"):  # Quantus 0.6 integrates with np.trapz, which NumPy 2.4 removed
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)

    def by_mask(arr, mask, **kw):  # Quantus 0.6 hands its (N, 1, H, W) segment mask to a function that
        return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kw)  # wants (N, C, H, W)

    net, ref, params, x, heat = setup
    for i in range(2):  # one image per call: Quantus pads a batch's curves to the longest and integrates the padding
        xi, hi = x[i:i + 1], heat[i:i + 1]
        ours = metrics.irof(net, params, xi, TARGET[i:i + 1], hi, segments="slic", baseline=0.3)
        want = quantus.IROF(perturb_func=by_mask, perturb_baseline=0.3, normalise=False, disable_warnings=True, return_aggregate=False)(
            model=ref, x_batch=tr.to_nchw(np.asarray(xi)).numpy(), y_batch=TARGET[i:i + 1], a_batch=_nchw(hi),
            device="cpu")
        np.testing.assert_allclose(ours, np.asarray(want), rtol=1e-4)


def test_sparseness_complexity_and_localisation_equal_quantus(setup, quantus):
    _, _, _, x, heat = setup
    xt = tr.to_nchw(np.asarray(x)).numpy()
    attr = _channel_attr(x)
    kw = dict(normalise=False, disable_warnings=True)
    for a in (heat, attr):
        np.testing.assert_allclose(metrics.sparseness(a), quantus.Sparseness(**kw)(
            model=None, x_batch=xt, y_batch=TARGET, a_batch=_nchw(a)), rtol=1e-5)
        np.testing.assert_allclose(metrics.complexity(a), quantus.Complexity(**kw)(
            model=None, x_batch=xt, y_batch=TARGET, a_batch=_nchw(a)), rtol=1e-5)
    boxes = np.array([[8, 12, 20, 26], [20, 2, 30, 14]])
    masks = metrics.box_masks(boxes, x.shape)
    want = quantus.PointingGame(**kw)(model=None, x_batch=xt, y_batch=TARGET, a_batch=_nchw(heat),
                                      s_batch=masks[:, None])
    np.testing.assert_allclose(metrics.pointing_game(heat, boxes=boxes), want, rtol=1e-6)
    assert metrics.pointing_game(heat, boxes=boxes).tolist() == [1.0, 1.0]  # the blobs sit in the boxes
    # weighted (Quantus 0.6's weighted branch fails on its own array shapes): a hit scores 1 - box area / image
    np.testing.assert_allclose(metrics.pointing_game(heat, boxes=boxes, weighted=True),
                               1 - masks.sum((1, 2)) / (SIZE * SIZE), rtol=1e-6)
    want = quantus.RelevanceMassAccuracy(**kw)(model=None, x_batch=xt, y_batch=TARGET, a_batch=_nchw(heat),
                                               s_batch=masks[:, None])
    np.testing.assert_allclose(metrics.relevance_mass(heat, masks=masks), want, rtol=1e-5)


def _quantus_explain(net, params, method, **options):
    def explain(model, inputs, targets, **kwargs):
        x = jnp.asarray(np.asarray(inputs).transpose(0, 2, 3, 1))
        return _nchw(A.METHODS[method](net, params, x, jnp.asarray(np.asarray(targets), jnp.int32), **options))
    return explain


def test_random_logit_equals_quantus(setup, quantus):
    net, ref, params, x, _ = setup
    np.random.seed(42)  # Quantus' draw of the other class (its seed argument), repeated here
    draw = np.random.randint(0, 10 - 1, len(TARGET))
    other = np.array([[c for c in range(10) if c != t][d] for t, d in zip(TARGET, draw)])
    explain = _quantus_explain(net, params, "grad_cam", layer="relu2_1", upsample=True)
    want = quantus.RandomLogit(num_classes=10, seed=42, normalise=False, disable_warnings=True)(
        model=ref, x_batch=tr.to_nchw(np.asarray(x)).numpy(), y_batch=TARGET, a_batch=None, explain_func=explain,
        device="cpu")
    ours = metrics.random_logit(net, params, x, TARGET, method="grad_cam", options={"layer": "relu2_1", "upsample": True},
                                other=other)
    np.testing.assert_allclose(ours, want, rtol=1e-4)
    assert np.all(np.asarray(ours) < 0.999)
    # drawn classes are never the target and follow the key
    drawn = [metrics.random_logit(net, params, x, TARGET, method="saliency", key=s, similarity="pearson")
             for s in range(3)]
    assert all(np.isfinite(d).all() for d in drawn)


def _hwc_to_chw_index(flat, h, w, c):
    """Flat indices of an (H, W, C) array -> the same values' flat indices in its (C, H, W) transpose."""
    pix, ch = np.divmod(np.asarray(flat), c)
    return ch * h * w + pix


def test_faithfulness_correlation_equals_quantus_given_the_same_subsets(setup, quantus, monkeypatch):
    """Quantus draws its subsets with np.random.choice: it is handed jaxviz's documented draws (subset r of image i
    from fold_in(key, i * runs + r)) in the order it asks for them (run by run, image by image)."""
    net, ref, params, x, _ = setup
    n, h, w, c = x.shape
    attr = _channel_attr(x, seed=4)
    key, runs, size = jax.random.key(5), 12, 200
    ours = metrics.faithfulness_correlation(net, params, x, TARGET, attr, subset_size=size, runs=runs, key=key,
                                            baseline=0.3, batch_size=5)
    draws = iter([_hwc_to_chw_index(jax.random.choice(jax.random.fold_in(key, i * runs + r), h * w * c, (size,),
                                                      replace=False), h, w, c)
                  for r in range(runs) for i in range(n)])
    monkeypatch.setattr(np.random, "choice", lambda *a, **k: next(draws))
    want = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline=0.3, normalise=False,
                                           disable_warnings=True, return_aggregate=False)(
        model=ref, x_batch=tr.to_nchw(np.asarray(x)).numpy(), y_batch=TARGET, a_batch=_nchw(attr), device="cpu")
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(want)).max() > 0.05


@pytest.mark.parametrize("name", ["avg_sensitivity", "local_lipschitz"])
def test_sensitivities_equal_quantus_given_the_same_noise(setup, quantus, name):
    """Quantus takes the perturbation as a function: it is handed jaxviz's documented noise (sample s of image i
    from fold_in(key, i * samples + s)), so the numbers compare exactly."""
    from jaxviz.attribution import _common

    net, ref, params, x, _ = setup
    n, h, w, c = x.shape
    key, samples = jax.random.key(6), 3
    explain = _quantus_explain(net, params, "saliency")
    step = iter(range(samples))

    def ours_noise(arr, indices=None, **kwargs):  # Quantus calls it once per sample for the whole batch
        s = next(step)
        items = jnp.arange(n) * samples + s
        if name == "avg_sensitivity":
            d = _common.uniform_noise(key, items, (h, w, c), 1.0, samples) * 0.1
        else:
            d = _common.normal_noise(key, items, (h, w, c), samples) * 0.05
        return arr + np.asarray(d).transpose(0, 3, 1, 2).reshape(n, -1)

    xt = tr.to_nchw(np.asarray(x)).numpy()
    if name == "avg_sensitivity":
        want = quantus.AvgSensitivity(nr_samples=samples, perturb_func=ours_noise, normalise=False,
                                      disable_warnings=True)(
            model=ref, x_batch=xt, y_batch=TARGET, a_batch=None, explain_func=explain, device="cpu")
        ours = metrics.avg_sensitivity(net, params, x, TARGET, samples=samples, radius=0.1, key=key)
    else:
        want = quantus.LocalLipschitzEstimate(nr_samples=samples, perturb_func=ours_noise, normalise=False,
                                              disable_warnings=True)(
            model=ref, x_batch=xt, y_batch=TARGET, a_batch=None, explain_func=explain, device="cpu")
        ours = metrics.local_lipschitz(net, params, x, TARGET, samples=samples, stdev=0.05, key=key)
    np.testing.assert_allclose(ours, want, rtol=1e-4)
    assert np.all(np.asarray(want) > 0)
