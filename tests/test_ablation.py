"""RISE and feature ablation on constructed models: the formulas by hand and the maps' meaning. Their parity with
Captum (feature ablation) is in test_attribution_captum.py; jit, vmap, batch_size and targets in test_attribution.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import attribution as A
from jaxviz.attribution import metrics
from jaxviz.errors import InputError

H, W = 24, 20


def box_score(params, x):
    """Logit 0: the summed image inside a box; logit 1: its negative."""
    s = jnp.sum(x[:, 6:14, 4:10] * params["w"], axis=(1, 2, 3))
    return jnp.stack([s, -s], axis=1)


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((2, H, W, 3)).astype(np.float32) * 0.5 + 0.5)
    return {"w": jnp.ones((3,), jnp.float32)}, x


def test_rise_equals_its_formula_with_its_masks(setup):
    params, x = setup
    masks = np.asarray(A.rise_masks(3, 20, (H, W), cells=4, p=0.4))
    ours = A.rise(box_score, params, x, 0, masks=20, cells=4, p=0.4, key=3, probabilities=False, batch_size=5)
    scores = np.stack([np.asarray(box_score(params, x * m[None, :, :, None]))[:, 0] for m in masks], 1)  # (N, M)
    want = np.einsum("nm,mhw->nhw", scores, masks) / (20 * 0.4)
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-5)
    # one key per image: image i's masks from its own key, wherever it sits in the batch
    keys = jax.random.split(jax.random.key(9), 2)
    both = A.rise(box_score, params, x, 0, masks=20, cells=4, p=0.4, key=keys, probabilities=False)
    alone = A.rise(box_score, params, x[1:], 0, masks=20, cells=4, p=0.4, key=keys[1:], probabilities=False)
    np.testing.assert_allclose(both[1], alone[0], rtol=1e-5, atol=1e-5)
    own = np.asarray(A.rise_masks(keys[1], 20, (H, W), cells=4, p=0.4))
    s1 = np.stack([np.asarray(box_score(params, x[1:] * m[None, :, :, None]))[0, 0] for m in own])
    np.testing.assert_allclose(both[1], np.einsum("m,mhw->hw", s1, own) / 8, rtol=1e-4, atol=1e-5)


def test_rise_masks_are_smooth_random_and_keyed():
    m = np.asarray(A.rise_masks(0, 400, (H, W), cells=4, p=0.3))
    assert m.shape == (400, H, W) and m.min() >= 0 and m.max() <= 1
    assert abs(m.mean() - 0.3) < 0.03
    assert len(np.unique(m[0])) > 4  # bilinear, not binary
    np.testing.assert_array_equal(m[:5], np.asarray(A.rise_masks(0, 5, (H, W), cells=4, p=0.3)))
    assert not np.array_equal(m[:5], np.asarray(A.rise_masks(1, 5, (H, W), cells=4, p=0.3)))


def test_rise_and_feature_ablation_find_the_box(setup):
    params, x = setup
    inside = np.zeros((H, W), bool)
    inside[6:14, 4:10] = True
    heat = np.asarray(A.rise(box_score, params, x, 0, masks=600, cells=6, key=1, probabilities=False))
    # RISE maps sit on a constant (every mask's score counts everywhere): the box stands out above it
    assert np.all(heat[:, inside].mean(1) - heat[:, ~inside].mean(1) > 3 * heat[:, ~inside].std(1))
    abl = np.asarray(A.feature_ablation(box_score, params, x, 0, segments=2, baseline=0.0))
    np.testing.assert_allclose(abl[:, ~inside], 0.0, atol=1e-6)  # ablating outside the box changes nothing
    cell = np.asarray(x[:, 6:8, 4:6]).sum((1, 2, 3))  # a 2 px cell inside: its own summed values
    np.testing.assert_allclose(abl[:, 6:8, 4:6], np.broadcast_to(cell[:, None, None, None], (2, 2, 2, 3)), rtol=1e-5)


def test_errors(setup):
    params, x = setup
    with pytest.raises(InputError, match="p:"):
        A.rise(box_score, params, x, 0, p=0.0)
    with pytest.raises(InputError, match="masks"):
        A.rise(box_score, params, x, 0, masks=0)
    with pytest.raises(InputError, match="segments"):
        A.feature_ablation(box_score, params, x, 0, segments=np.zeros((3, 3), np.int32))


def test_kernel_shap_of_an_additive_model_is_exact(setup):
    """A model additive over segments is linear in the coalition: the regression recovers each segment's
    contribution exactly (its Shapley value), whatever coalitions were drawn."""
    params, x = setup
    got = np.asarray(A.kernel_shap(box_score, params, x, 0, segments=4, samples=80, baseline=0.2, key=1))  # 30 segs
    contrib = np.zeros(x.shape, np.float32)
    contrib[:, 6:14, 4:10] = np.asarray(x[:, 6:14, 4:10]) - 0.2
    labels = metrics.grid_segments(x.shape, 4)
    for i in range(2):
        for s in np.unique(labels):
            want = contrib[i][labels == s].sum()
            np.testing.assert_allclose(got[i][labels == s], want, rtol=1e-3, atol=1e-3)
    with pytest.raises(InputError, match="samples"):
        A.kernel_shap(box_score, params, x, 0, samples=2)


def test_lasso_by_coordinate_descent():
    from jaxviz.attribution.surrogate import lasso

    rng = np.random.default_rng(3)
    z = rng.integers(0, 2, (40, 5)).astype(float)
    y = z @ np.array([1.0, -2.0, 0.0, 0.5, 3.0]) + 0.7 + 0.01 * rng.normal(size=40)
    w = rng.random(40) + 0.5
    # alpha 0: weighted least squares with an intercept
    a = np.c_[np.ones(40), z] * np.sqrt(w)[:, None]
    want = np.linalg.lstsq(a, y * np.sqrt(w), rcond=None)[0][1:]
    np.testing.assert_allclose(lasso(z, y, w, 0.0), want, rtol=1e-6, atol=1e-8)
    assert np.all(lasso(z, y, w, 100.0) == 0)  # a large L1 weight keeps nothing
    small = lasso(z, y, w, 0.05)
    assert small[2] == 0 and np.all(np.abs(small[[0, 1, 4]]) > 0.5)  # the zero coefficient is dropped first
    skl = pytest.importorskip("sklearn.linear_model")
    ref = skl.Lasso(alpha=0.05, tol=1e-12, max_iter=100_000).fit(z, y, sample_weight=w).coef_
    np.testing.assert_allclose(small, ref, rtol=1e-6, atol=1e-9)
