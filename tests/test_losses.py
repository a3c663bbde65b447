"""jaxviz.losses: the course's formulas by hand, the other normalisations' scale laws, TV, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import losses
from jaxviz.errors import InputError


def rng_acts(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# --------------------------------------------------------------------------- the course's own example


def test_total_cost_course_example():
    np.random.seed(3)
    J_content = np.random.randn()
    J_style = np.random.randn()
    J = losses.total_cost(J_content, J_style)
    assert J == 35.34667875478276
    assert losses.total_cost(J_content, J_style, alpha=10, beta=40) == J
    assert losses.total_cost(2.0, 3.0, 1, 1) == 5.0


def test_total_cost_inside_jit_and_grad():
    g = jax.grad(lambda c, s: losses.total_cost(c, s), argnums=(0, 1))(1.0, 2.0)
    assert g == (10.0, 40.0)


def test_total_cost_refuses_what_is_not_a_number():
    np.testing.assert_allclose(losses.total_cost(jnp.array([1.0, 2.0]), np.float32(1), alpha=np.int64(2)), [42, 44])
    for kw, name in (({"alpha": "a"}, "alpha"), ({"beta": None}, "beta"), ({"alpha": True}, "alpha")):
        with pytest.raises(InputError, match=rf"^{name}: expected a number or an array, got "):
            losses.total_cost(1.0, 2.0, **kw)
    with pytest.raises(InputError, match=r"^J_style: expected a number or an array, got str '3'"):
        losses.total_cost(1.0, "3")


# --------------------------------------------------------------------------- Gram matrix


def test_gram_matches_course_layout():
    # The course unrolls activations into A of shape (nC, nH*nW) and computes A @ A.T.
    A = np.array([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]], np.float32)  # nC=3, nH*nW=2
    a = jnp.asarray(A.T[None, None])  # (1, 1, nH*nW, nC)
    G = np.asarray(losses.gram_matrix(a))
    assert G.shape == (1, 3, 3)
    np.testing.assert_array_equal(G[0], [[5.0, -2.0, 5.0], [-2.0, 1.0, -1.0], [5.0, -1.0, 10.0]])
    np.testing.assert_allclose(G[0], A @ A.T)


def test_gram_normalizations_by_hand():
    a = jnp.arange(1.0, 13.0).reshape(1, 2, 2, 3)  # H=W=2, C=3
    flat = np.arange(1.0, 13.0).reshape(4, 3)
    G = flat.T @ flat
    np.testing.assert_allclose(losses.gram_matrix(a)[0], G)
    np.testing.assert_allclose(losses.gram_matrix(a, normalize="hw")[0], G / 4)
    np.testing.assert_allclose(losses.gram_matrix(a, normalize="chw")[0], G / 12)
    assert G[0, 0] == 1 + 16 + 49 + 100  # sum of channel 0 squared


def test_gram_symmetric_psd_batched():
    a = rng_acts((2, 5, 7, 6))
    G = np.asarray(losses.gram_matrix(a), np.float64)
    assert G.shape == (2, 6, 6)
    np.testing.assert_allclose(G, np.swapaxes(G, -1, -2), rtol=1e-6)
    for g in G:
        assert np.linalg.eigvalsh(g).min() > -1e-4 * np.abs(g).max()


# --------------------------------------------------------------------------- content cost


def test_content_cost_by_hand():
    a_C = jnp.zeros((1, 2, 2, 3))
    a_G = jnp.arange(12.0).reshape(1, 2, 2, 3)  # sum of squares 0..11 = 506
    assert float(losses.content_cost(a_C, a_G)) == pytest.approx(506 / 48)  # 4 * nH*nW*nC = 48
    assert float(losses.content_cost(a_C, a_G, normalization="mse")) == pytest.approx(506 / 12)
    assert float(losses.content_cost(a_C, a_G, normalization="half_sum")) == pytest.approx(253.0)


def test_content_cost_matches_course_formula_random():
    a_C, a_G = rng_acts((1, 4, 4, 3), 1), rng_acts((1, 4, 4, 3), 2)
    m, nH, nW, nC = a_G.shape
    expected = np.sum((np.asarray(a_C) - np.asarray(a_G)) ** 2) / (4 * nH * nW * nC)
    assert float(losses.content_cost(a_C, a_G)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "normalization, factor",
    [("course", lambda n: 1 / (2 * n)), ("mse", lambda n: 2 / n), ("half_sum", lambda n: 1.0)],
)
def test_content_cost_analytic_gradient(normalization, factor):
    a_C, a_G = rng_acts((1, 3, 5, 4), 3), rng_acts((1, 3, 5, 4), 4)
    g = jax.grad(lambda x: losses.content_cost(a_C, x, normalization=normalization))(a_G)
    n = a_G.size  # nH * nW * nC
    np.testing.assert_allclose(g, factor(n) * (a_G - a_C), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- style cost


def test_layer_style_cost_by_hand():
    # two pixels, three channels: G_S and G_G written out by hand
    a_S = jnp.array([[[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]])  # (1, 1, 2, 3): G_S = diag(1, 1, 0)
    a_G = jnp.array([[[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]])  # G_G = all 2s
    # G_S - G_G = [[-1,-2,-2],[-2,-1,-2],[-2,-2,-2]] -> sum of squares = 1+4+4+4+1+4+4+4+4 = 30
    assert float(losses.layer_style_cost(a_S, a_G)) == pytest.approx(30 / (4 * 9 * 4))  # 4 nC^2 (nH nW)^2
    # chw: (G/6) differences, mean over 9 entries; hw: (G/2) differences, mean over 9
    assert float(losses.layer_style_cost(a_S, a_G, normalization="chw")) == pytest.approx(30 / 36 / 9)
    assert float(losses.layer_style_cost(a_S, a_G, normalization="hw")) == pytest.approx(30 / 4 / 9)


def test_layer_style_cost_matches_course_formula_random():
    a_S, a_G = rng_acts((1, 4, 4, 3), 5), rng_acts((1, 4, 4, 3), 6)
    m, nH, nW, nC = a_G.shape
    S = np.asarray(a_S, np.float64).reshape(nH * nW, nC).T
    G = np.asarray(a_G, np.float64).reshape(nH * nW, nC).T
    expected = np.sum((S @ S.T - G @ G.T) ** 2) / (4 * nC**2 * (nH * nW) ** 2)
    assert float(losses.layer_style_cost(a_S, a_G)) == pytest.approx(expected, rel=1e-5)


def test_layer_style_cost_analytic_gradient():
    # J = sum((G_G - G_S)^2) / (4 C^2 (HW)^2), G_G = F^T F with F (HW, C): dJ/dF = F (G_G - G_S) / (C^2 (HW)^2)
    a_S, a_G = rng_acts((1, 3, 4, 5), 7), rng_acts((1, 3, 4, 5), 8)
    F = np.asarray(a_G, np.float64).reshape(12, 5)
    S = np.asarray(a_S, np.float64).reshape(12, 5)
    expected = F @ (F.T @ F - S.T @ S) / (25 * 144)
    g = jax.grad(lambda x: losses.layer_style_cost(a_S, x))(a_G)
    np.testing.assert_allclose(np.asarray(g).reshape(12, 5), expected, rtol=1e-4, atol=1e-7)


def test_style_cost_weights_as_course_list_or_mapping():
    taps_S = {"a": rng_acts((1, 4, 4, 3), 9), "b": rng_acts((1, 2, 2, 5), 10)}
    taps_G = {"a": rng_acts((1, 4, 4, 3), 11), "b": rng_acts((1, 2, 2, 5), 12)}
    STYLE_LAYERS = [("a", 0.2), ("b", 0.8)]
    expected = 0.2 * losses.layer_style_cost(taps_S["a"], taps_G["a"]) + 0.8 * losses.layer_style_cost(
        taps_S["b"], taps_G["b"]
    )
    assert float(losses.style_cost(taps_S, taps_G, STYLE_LAYERS)) == pytest.approx(float(expected), rel=1e-6)
    assert float(losses.style_cost(taps_S, taps_G, dict(STYLE_LAYERS))) == pytest.approx(float(expected), rel=1e-6)
    hw = losses.style_cost(taps_S, taps_G, STYLE_LAYERS, normalization="hw")
    assert float(hw) == pytest.approx(
        float(0.2 * losses.layer_style_cost(taps_S["a"], taps_G["a"], normalization="hw")
              + 0.8 * losses.layer_style_cost(taps_S["b"], taps_G["b"], normalization="hw")), rel=1e-6)


def test_gram_target_and_cost_match_layer_cost_and_allow_other_sizes():
    a_S, a_G = rng_acts((1, 6, 4, 3), 13), rng_acts((1, 6, 4, 3), 14)
    for norm in losses.STYLE_NORMALIZATIONS:
        t = losses.gram_target(a_S, normalization=norm)
        assert float(losses.gram_cost(t, a_G, normalization=norm)) == pytest.approx(
            float(losses.layer_style_cost(a_S, a_G, normalization=norm)), rel=1e-6
        )
    # a style image of another size: each Gram is scaled by its own H*W
    big = jnp.tile(a_S, (1, 2, 3, 1))  # same statistics, 6x the pixels
    for norm in losses.STYLE_NORMALIZATIONS:
        assert float(losses.layer_style_cost(big, a_G, normalization=norm)) == pytest.approx(
            float(losses.layer_style_cost(a_S, a_G, normalization=norm)), rel=1e-5
        )


# --------------------------------------------------------------------------- scale behaviour


@pytest.mark.parametrize("norm", losses.STYLE_NORMALIZATIONS)
def test_style_cost_scale_laws(norm):
    a_S, a_G = rng_acts((1, 4, 4, 3), 15), rng_acts((1, 4, 4, 3), 16)
    base = float(losses.layer_style_cost(a_S, a_G, normalization=norm))
    # activations x s: Gram x s^2, squared differences x s^4; a relative cost does not change
    scale = 1.0 if norm == "relative" else 81.0
    assert float(losses.layer_style_cost(3 * a_S, 3 * a_G, normalization=norm)) == pytest.approx(scale * base, rel=1e-5)
    # tiling both images 2x2: every normalisation is size-invariant
    t = lambda a: jnp.tile(a, (1, 2, 2, 1))
    assert float(losses.layer_style_cost(t(a_S), t(a_G), normalization=norm)) == pytest.approx(base, rel=1e-5)
    # duplicating the channels: G becomes [[G, G], [G, G]]
    d = lambda a: jnp.concatenate([a, a], axis=-1)
    factor = {"course": 1.0, "chw": 0.25, "hw": 1.0, "relative": 1.0}[norm]
    assert float(losses.layer_style_cost(d(a_S), d(a_G), normalization=norm)) == pytest.approx(factor * base, rel=1e-5)


def test_gram_scale_laws():
    a = rng_acts((1, 3, 3, 4), 17)
    G = losses.gram_matrix(a)
    np.testing.assert_allclose(losses.gram_matrix(2 * a), 4 * G, rtol=1e-6)
    t = jnp.tile(a, (1, 2, 2, 1))
    np.testing.assert_allclose(losses.gram_matrix(t), 4 * G, rtol=1e-5)
    np.testing.assert_allclose(losses.gram_matrix(t, normalize="hw"), losses.gram_matrix(a, normalize="hw"), rtol=1e-5)
    np.testing.assert_allclose(losses.gram_matrix(t, normalize="chw"), G / 36, rtol=1e-5)


@pytest.mark.parametrize("norm, tile_factor", [("course", 1.0), ("mse", 1.0), ("half_sum", 4.0), ("relative", 1.0)])
def test_content_cost_scale_laws(norm, tile_factor):
    a_C, a_G = rng_acts((1, 4, 4, 3), 18), rng_acts((1, 4, 4, 3), 19)
    base = float(losses.content_cost(a_C, a_G, normalization=norm))
    scale = 1.0 if norm == "relative" else 4.0
    assert float(losses.content_cost(2 * a_C, 2 * a_G, normalization=norm)) == pytest.approx(scale * base, rel=1e-6)
    if norm == "relative":  # by hand
        assert base == pytest.approx(float(jnp.sum((a_C - a_G) ** 2) / jnp.sum(a_C ** 2)), rel=1e-6)
    t = lambda a: jnp.tile(a, (1, 2, 2, 1))
    assert float(losses.content_cost(t(a_C), t(a_G), normalization=norm)) == pytest.approx(
        tile_factor * base, rel=1e-5
    )


# --------------------------------------------------------------------------- total variation


@pytest.mark.parametrize("kind", losses.TV_KINDS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_tv_of_constant_image_is_zero(kind, reduction):
    assert float(losses.total_variation(jnp.full((2, 8, 9, 3), 0.7), kind=kind, reduction=reduction)) == 0.0


def test_tv_by_hand():
    x = jnp.array([[0.0, 1.0, 3.0], [2.0, 2.0, 0.0]])[None, :, :, None]  # (1, 2, 3, 1)
    # vertical diffs: 2, 1, -3; horizontal: 1, 2, 0, -2
    assert float(losses.total_variation(x)) == pytest.approx(6 + 5)
    assert float(losses.total_variation(x, kind="squared")) == pytest.approx(14 + 9)
    assert float(losses.total_variation(x, reduction="mean")) == pytest.approx(6 / 3 + 5 / 4)
    # gradient of the squared TV: 2 * sum over the 4-neighbours of (x_ij - x_nb)
    g = jax.grad(lambda v: losses.total_variation(v, kind="squared"))(x)[0, :, :, 0]
    np.testing.assert_allclose(g, [[-6.0, -4.0, 10.0], [4.0, 6.0, -10.0]], rtol=1e-6)


# --------------------------------------------------------------------------- transforms, errors, surface


def test_jit_equals_eager_and_vmap_equals_loop():
    a_C, a_G = rng_acts((3, 4, 4, 5), 20), rng_acts((3, 4, 4, 5), 21)
    with jax.disable_jit():
        eager = [float(losses.layer_style_cost(a_C[i], a_G[i])) for i in range(3)]
        eager_c = [float(losses.content_cost(a_C[i], a_G[i])) for i in range(3)]
    vm = jax.vmap(losses.layer_style_cost)(a_C, a_G)
    vmc = jax.vmap(losses.content_cost)(a_C, a_G)
    np.testing.assert_allclose(vm, eager, rtol=1e-5)
    np.testing.assert_allclose(vmc, eager_c, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(losses.gram_matrix)(a_C), losses.gram_matrix(a_C), rtol=1e-6)


def test_no_retrace_on_second_call():
    # each jitted loss compiles once per shape and options: new values of the same shape reuse the program
    # (a shape no other test uses, so the first call here always compiles)
    a, b = rng_acts((1, 5, 7, 3), 22), rng_acts((1, 5, 7, 3), 23)
    calls = [
        (losses.gram_matrix, lambda x, y: losses.gram_matrix(x)),
        (losses.gram_matrix, lambda x, y: losses.gram_matrix(x, normalize="chw")),
        (losses.gram_target, lambda x, y: losses.gram_target(x)),
        (losses.content_cost, lambda x, y: losses.content_cost(x, y)),
        (losses.layer_style_cost, lambda x, y: losses.layer_style_cost(x, y, normalization="hw")),
        (losses.total_variation, lambda x, y: losses.total_variation(x)),
    ]
    for fn, call in calls:
        n = fn._cache_size()
        first = call(a, b)
        assert fn._cache_size() == n + 1
        second = call(b, 0.5 * a)
        assert fn._cache_size() == n + 1, fn.__name__
        assert not np.allclose(first, second)  # computed anew, not a cached value


def test_errors_name_the_argument():
    a = jnp.zeros((1, 2, 2, 3))
    with pytest.raises(InputError, match=r"^a_G: expected the shape of a_C, \(1, 2, 2, 3\); got \(1, 2, 3, 3\)"):
        losses.content_cost(a, jnp.zeros((1, 2, 3, 3)))
    with pytest.raises(InputError, match=r"^a_G: expected 3 channels like a_S"):
        losses.layer_style_cost(a, jnp.zeros((1, 2, 2, 4)))
    with pytest.raises(InputError, match=r"^normalization: expected one of 'course', 'chw', 'hw', 'relative'; got 'l2'"):
        losses.layer_style_cost(a, a, normalization="l2")
    with pytest.raises(InputError, match=r"^a: expected activations of shape \(\.\.\., H, W, C\), got shape \(3, 3\)"):
        losses.gram_matrix(jnp.zeros((3, 3)))
    with pytest.raises(InputError, match=r"^taps_G: expected activations for layer 'x'"):
        losses.style_cost({"x": a}, {}, [("x", 1.0)])
    with pytest.raises(InputError, match=r"^kind: expected one of 'l1', 'squared'; got 'l2'"):
        losses.total_variation(a, kind="l2")


def test_api_surface():
    assert set(losses.__all__) == {
        "CONTENT_NORMALIZATIONS", "STYLE_NORMALIZATIONS", "TV_KINDS", "gram_matrix", "gram_target",
        "gram_cost", "content_cost", "layer_style_cost", "style_cost", "total_cost", "total_variation",
    }
    for name in losses.__all__:
        assert hasattr(losses, name)
