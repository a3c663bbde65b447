"""The evaluation metrics on constructed models whose answers are known in closed form (a linear model: every
feature's contribution to the logit is w * x), plus the metrics' input checks. Their agreement with
pytorch-grad-cam and Quantus is in test_metrics_peers.py, their formulas on every model in test_conformance.py."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.attribution import metrics
from jaxviz.errors import InputError

H = W = 8
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _fresh_rng():
    """Every test draws from a fresh generator: its numbers do not depend on which tests ran before it in the
    process (pytest-xdist hands each worker another subset and order)."""
    global RNG
    RNG = np.random.default_rng(12345)  # not lin's seed: a "random" map must not repeat the model's weights


def linear(params, x):
    """Logit 0 = sum(w * x), logit 1 = -logit 0."""
    s = jnp.sum(params["w"] * x, axis=(1, 2, 3))
    return jnp.stack([s, -s], axis=1)


@pytest.fixture
def lin():
    rng = np.random.default_rng(0)  # its own generator: the same model in every test, in any order or worker
    w = rng.normal(size=(H, W, 3)).astype(np.float32)
    x = rng.random((2, H, W, 3)).astype(np.float32)
    return {"w": jnp.asarray(w)}, jnp.asarray(x), w * x  # contributions per value


def test_pixel_flipping_on_a_linear_model_removes_the_contributions_in_order(lin):
    params, x, contrib = lin
    ours = metrics.pixel_flipping(linear, params, x, 0, contrib, features_in_step=10, probabilities=False,
                                  batch_size=5)
    flat = contrib.reshape(2, -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    total = flat.shape[1]
    counts = np.minimum(np.arange(1, math.ceil(total / 10) + 1) * 10, total)
    want = np.stack([[flat[i].sum() - flat[i, order[i, :c]].sum() for c in counts] for i in range(2)])
    np.testing.assert_allclose(ours.scores, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.fractions, counts / total)
    # removing by the true contributions falls fastest: a lower area than any other order
    other = metrics.pixel_flipping(linear, params, x, 0, RNG.normal(size=contrib.shape), features_in_step=10,
                                   probabilities=False)
    assert np.all(np.asarray(ours.auc) < np.asarray(other.auc))
    # pixel features: a pixel's three values go together
    pix = metrics.pixel_flipping(linear, params, x, 0, contrib.sum(-1), features_in_step=4, probabilities=False)
    po = np.argsort(-contrib.sum(-1).reshape(2, -1), axis=1, kind="stable")
    np.testing.assert_allclose(pix.scores[:, 0], [contrib[i].sum() - contrib[i].sum(-1).ravel()[po[i, :4]].sum()
                                                  for i in range(2)], rtol=1e-4, atol=1e-4)
    assert pix.scores.shape == (2, H * W // 4)


def test_faithfulness_correlation_is_one_for_the_exact_contributions(lin):
    params, x, contrib = lin
    exact = metrics.faithfulness_correlation(linear, params, x, 0, contrib, subset_size=20, runs=30, key=1)
    np.testing.assert_allclose(exact, 1.0, atol=1e-5)
    np.testing.assert_allclose(metrics.faithfulness_correlation(linear, params, x, 1, contrib, subset_size=20,
                                                                runs=30, key=1), -1.0, atol=1e-5)
    noise = metrics.faithfulness_correlation(linear, params, x, 0, RNG.normal(size=contrib.shape), subset_size=20,
                                             runs=30, key=1)
    assert np.all(np.abs(np.asarray(noise)) < 0.6)
    # batch_size does not change the draws
    again = metrics.faithfulness_correlation(linear, params, x, 0, RNG.normal(size=contrib.shape) * 0 + contrib,
                                             subset_size=20, runs=30, key=1, batch_size=7)
    np.testing.assert_allclose(again, exact, atol=1e-6)


def test_monotonicity_depends_on_where_the_map_puts_the_negative_contributions():
    w = np.ones((H, W, 3), np.float32)
    x = np.full((1, H, W, 3), 0.5, np.float32)
    x[0, 2, 3, 1] = -20.0  # one negative contribution, larger than a step's 15 others
    params = {"w": jnp.asarray(w)}
    contrib = w * x
    first = contrib.copy()  # ranked least important: put back first, then only rises
    last = contrib.copy()
    last[0, 2, 3, 1] = 10.0  # ranked most important: put back last, the final step falls
    assert bool(metrics.monotonicity(linear, params, x, 0, first, features_in_step=16, probabilities=False)[0])
    mono, curve = metrics.monotonicity(linear, params, x, 0, last, features_in_step=16, probabilities=False,
                                       return_curve=True)
    assert not bool(mono[0])
    np.testing.assert_allclose(curve[0, -1], contrib.sum(), rtol=1e-5)  # everything put back
    np.testing.assert_allclose(curve[0, 0], 16 * 0.5, rtol=1e-5)  # the 16 least important: 0.5 each


def test_region_perturbation_and_irof_by_hand(lin):
    params, x, contrib = lin
    pix = contrib.sum(-1)  # (2, H, W)
    ours = metrics.region_perturbation(linear, params, x, 0, contrib, patch_size=4, regions=3, probabilities=False)
    blocks = pix.reshape(2, 2, 4, 2, 4).sum((2, 4)).reshape(2, 4)
    order = np.argsort(-blocks, axis=1)
    want = np.cumsum(np.take_along_axis(blocks, order, 1), axis=1)[:, :3]
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4)
    lerf = metrics.region_perturbation(linear, params, x, 0, contrib, patch_size=4, regions=4, order="lerf",
                                       probabilities=False)
    np.testing.assert_allclose(lerf[:, 0], blocks.min(1), rtol=1e-4, atol=1e-4)
    rand = metrics.region_perturbation(linear, params, x, 0, contrib, patch_size=4, regions=4, order="random",
                                       key=2, probabilities=False)
    np.testing.assert_allclose(rand[:, -1], blocks.sum(1), rtol=1e-4, atol=1e-4)  # all four gone in any order
    # IROF on 4-px squares, ranked by mean, baseline 0: curve_s = 1 - removed / total; IROF = S - trapz
    score, curve = metrics.irof(linear, params, x, 0, contrib, segments=4, baseline=0.0, probabilities=False,
                                return_curve=True)
    total = pix.sum((1, 2))
    want_curve = 1 - np.cumsum(np.take_along_axis(blocks, order, 1), axis=1) / total[:, None]
    np.testing.assert_allclose(curve, want_curve, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(score, 4 - np.trapezoid(want_curve, axis=1), rtol=1e-4, atol=1e-4)
    # labels given per image, with different counts: each image integrates its own curve
    labels = np.stack([metrics.grid_segments(x.shape, 4), metrics.grid_segments(x.shape, 8) * 7])
    score2, curve2 = metrics.irof(linear, params, x, 0, contrib, segments=labels, baseline=0.0, probabilities=False,
                                  return_curve=True)
    assert curve2.shape == (2, 4) and float(curve2[1, 1]) == 0.0
    np.testing.assert_allclose(score2[1], 1.0, atol=1e-5)  # one segment: removed at once, S - 0
    np.testing.assert_allclose(score2[0], score[0], rtol=1e-5)


def test_grid_segments_centre_like_quantus_padding():
    g = metrics.grid_segments((10, 10), 4)
    assert g.max() == 8 and (g[:4, :4] == 0).all() and (g[8:, 8:] == 8).all()
    c = metrics.grid_segments((10, 10), 4, centered=True)  # 10 -> pad 1 each side: cells of 3, 4, 3
    assert [int((c[:, 0] == v).sum()) for v in np.unique(c[:, 0])] == [3, 4, 3]


def test_sensitivities_of_linear_maps_are_known():
    w = np.full((H, W, 3), 2.5, np.float32)
    params = {"w": jnp.asarray(w)}
    x = jnp.asarray(RNG.random((2, H, W, 3)).astype(np.float32))
    # saliency of a linear model does not move
    np.testing.assert_allclose(metrics.avg_sensitivity(linear, params, x, 0, samples=6), 0.0, atol=1e-6)
    # input x gradient = 2.5 x: the map moves 2.5 times as far as the input, whatever the noise
    lip = metrics.local_lipschitz(linear, params, x, 0, method="input_x_gradient", samples=6, stdev=0.3, key=4)
    np.testing.assert_allclose(lip, 2.5, rtol=1e-4)
    # avg sensitivity = mean ||2.5 d|| / ||2.5 x||, d uniform in [-r, r): E d^2 = r^2 / 3 per value
    avg = metrics.avg_sensitivity(linear, params, x, 0, method="input_x_gradient", samples=64, radius=0.2, key=4)
    want = math.sqrt(H * W * 3 * 0.04 / 3) / np.linalg.norm(np.asarray(x).reshape(2, -1), axis=1)
    np.testing.assert_allclose(avg, want, rtol=0.03)


def test_sparseness_and_complexity_bounds():
    f = H * W
    flat = np.ones((1, H, W), np.float32)
    onehot = np.zeros((1, H, W), np.float32)
    onehot[0, 3, 4] = 5.0
    np.testing.assert_allclose(metrics.sparseness(flat), 0.0, atol=1e-6)
    np.testing.assert_allclose(metrics.sparseness(onehot), (f - 1) / f, atol=1e-5)
    np.testing.assert_allclose(metrics.complexity(flat), math.log(f), rtol=1e-6)
    np.testing.assert_allclose(metrics.complexity(onehot), 0.0, atol=1e-6)
    np.testing.assert_allclose(metrics.complexity(np.zeros((1, H, W))), 0.0, atol=1e-6)
    assert float(metrics.sparseness(-onehot)[0]) == float(metrics.sparseness(onehot)[0])  # absolute values


def test_pointing_game_and_relevance_mass():
    heat = np.zeros((3, H, W), np.float32)
    heat[:, 2, 2] = 1.0
    heat[:, 6, 6] = 0.5
    boxes = np.array([[0, 0, 4, 4], [4, 4, 8, 8], [5, 0, 8, 2]])
    np.testing.assert_array_equal(metrics.pointing_game(heat, boxes=boxes), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(metrics.relevance_mass(heat, boxes=boxes), [1 / 1.5, 0.5 / 1.5, 0.0], rtol=1e-6)
    # the third box's nearest pixel to the peak (2, 2) is (5, 1), sqrt(10) = 3.2 px away
    np.testing.assert_array_equal(metrics.pointing_game(heat, boxes=boxes, tolerance=4), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(metrics.pointing_game(heat, boxes=boxes, tolerance=3), [1.0, 1.0, 0.0])
    empty = np.zeros((3, H, W), bool)
    assert np.isnan(np.asarray(metrics.pointing_game(heat, masks=empty))).all()
    with pytest.raises(InputError, match="masks, boxes"):
        metrics.pointing_game(heat, masks=empty, boxes=boxes)
    with pytest.raises(InputError, match="masks"):
        metrics.relevance_mass(heat, masks=np.zeros((3, 4, 4), bool))
    with pytest.raises(InputError, match="boxes"):
        metrics.box_masks([[0, 0, 4.5, 4]], heat.shape)


def test_random_logit_of_opposite_classes_is_minus_one(lin):
    params, x, _ = lin
    np.testing.assert_allclose(metrics.random_logit(linear, params, x, 0, method="input_x_gradient",
                                                    similarity="pearson"), -1.0, atol=1e-6)
    # saliency's absolute gradient cannot tell the two classes apart: the failure the metric is for
    np.testing.assert_allclose(metrics.random_logit(linear, params, x, 0), 1.0, atol=1e-6)
    with pytest.raises(InputError, match="other"):
        metrics.random_logit(linear, params, x, 0, other=[0, 1])
    with pytest.raises(InputError, match="callable"):
        metrics.random_logit(linear, params, x, lambda out: out[:, 0])


def test_ssim_equals_scikit_images():
    skm = pytest.importorskip("skimage.metrics")
    a = RNG.normal(size=(3, 50)).astype(np.float32)
    b = (a + 0.5 * RNG.normal(size=a.shape)).astype(np.float32)
    for win in (3, 7):
        want = [skm.structural_similarity(u.astype(np.float64), v.astype(np.float64), win_size=win,
                                          data_range=float(max(u.max(), v.max()) - min(u.min(), v.min())))
                for u, v in zip(a, b)]
        np.testing.assert_allclose(metrics.ssim(a, b, win_size=win), want, rtol=1e-4)
    np.testing.assert_allclose(metrics.ssim(a, a), 1.0, rtol=1e-6)


def test_imputation_reproduces_planes_and_constants():
    for h, w in ((16, 16), (37, 21)):  # 37 x 21: padded to 48 x 32 for the multigrid levels
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        plane = np.stack([0.02 * yy + 0.01 * xx, 0.5 - 0.01 * yy, 0.3 + 0 * xx], -1)[None]
        removed = np.zeros((1, h, w), bool)
        removed[0, 4:h - 5, 5:w - 4] = True  # interior: the stencil's weights are symmetric, a plane is harmonic
        out = metrics.noisy_linear_imputation(plane, removed, noise=0.0)
        np.testing.assert_allclose(out, plane, atol=1e-5)
    nothing = metrics.noisy_linear_imputation(plane, np.zeros((1, h, w), bool), noise=0.0)
    np.testing.assert_array_equal(nothing, plane)
    # a constant image survives ROAD untouched: every score change is 0
    const = jnp.full((2, 16, 16, 3), 0.4)
    maps = jnp.asarray(RNG.random((2, 16, 16)), jnp.float32)
    r = metrics.road(linear, {"w": jnp.asarray(RNG.normal(size=(16, 16, 3)), jnp.float32)}, const, 0, maps,
                     noise=0.0, probabilities=False)
    np.testing.assert_allclose(r.morf, 0.0, atol=1e-4)
    np.testing.assert_allclose(r.lerf, 0.0, atol=1e-4)
    assert r.morf.shape == (2, 9)


def test_road_prefers_the_true_contributions():
    """A linear model with positive weights: removing the largest contributions w * x (pixels brighter than the
    neighbours that replace them, under large weights) lowers the score on average, removing the smallest raises
    it. Its own seeded draws: the claims hold for them with a wide margin, in any test order."""
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(np.abs(rng.normal(size=(H, W, 3))), jnp.float32)}
    x = jnp.asarray(rng.random((2, H, W, 3)), jnp.float32)
    contrib = np.asarray(params["w"] * x)
    exact = metrics.road(linear, params, x, 0, contrib.sum(-1), noise=0.0, probabilities=False)
    random = metrics.road(linear, params, x, 0, rng.normal(size=(2, H, W)), noise=0.0, probabilities=False)
    assert np.all(np.asarray(exact.combined) > np.asarray(random.combined))
    assert np.all(np.asarray(exact.morf.mean(1)) < 0) and np.all(np.asarray(exact.lerf.mean(1)) > 0)


def test_confidence_change_by_hand(lin):
    params, x, _ = lin
    ones, zeros = np.ones((2, H, W), np.float32), np.zeros((2, H, W), np.float32)
    np.testing.assert_allclose(metrics.confidence_change(linear, params, x, 0, ones, probabilities=False), 0.0,
                               atol=1e-5)
    clean = np.asarray(linear(params, x))[:, 0]
    base = np.asarray(linear(params, jnp.full_like(x, 0.25)))[:, 0]
    np.testing.assert_allclose(metrics.confidence_change(linear, params, x, 0, zeros, baseline=0.25,
                                                         probabilities=False), base - clean, rtol=1e-4, atol=1e-5)
    half = metrics.confidence_change(linear, params, x, 0, ones * 0.5, probabilities=False)
    np.testing.assert_allclose(half, -0.5 * clean, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(metrics.increase_in_confidence(linear, params, x, 0, ones * 0.5,
                                                                 probabilities=False), (-0.5 * clean > 0))
    np.testing.assert_allclose(metrics.drop_in_confidence(linear, params, x, 0, ones * 0.5, probabilities=False),
                               np.maximum(0.5 * clean, 0), rtol=1e-4, atol=1e-5)


def test_metric_input_errors(lin):
    params, x, contrib = lin
    with pytest.raises(InputError, match="attributions"):
        metrics.pixel_flipping(linear, params, x, 0, contrib[:, :4])
    with pytest.raises(InputError, match="attributions"):
        metrics.irof(linear, params, x, 0, contrib * np.nan, segments=4)
    with pytest.raises(InputError, match="subset_size"):
        metrics.faithfulness_correlation(linear, params, x, 0, contrib, subset_size=H * W * 3 + 1)
    with pytest.raises(InputError, match="runs"):
        metrics.faithfulness_correlation(linear, params, x, 0, contrib, subset_size=4, runs=1)
    with pytest.raises(InputError, match="baseline"):
        metrics.pixel_flipping(linear, params, x, 0, contrib, baseline="grey")
    with pytest.raises(InputError, match="segments"):
        metrics.irof(linear, params, x, 0, contrib, segments=np.zeros((3, 3), np.int32))
    with pytest.raises(InputError, match="order"):
        metrics.region_perturbation(linear, params, x, 0, contrib, order="best")
    with pytest.raises(InputError, match="percentiles"):
        metrics.road(linear, params, x, 0, contrib.sum(-1), percentiles=[0, 50])
    with pytest.raises(InputError, match="maps"):
        metrics.road(linear, params, x, 0, contrib[:, :4])
    with pytest.raises(InputError, match="noise"):
        metrics.road(linear, params, x, 0, contrib.sum(-1), noise=-1.0)
    with pytest.raises(InputError, match="stdev"):
        metrics.local_lipschitz(linear, params, x, 0, stdev=0.0)
    with pytest.raises(InputError, match="removed"):
        metrics.noisy_linear_imputation(x, np.zeros((2, 3, 3), bool))
