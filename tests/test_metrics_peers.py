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
