"""jaxviz.attribution on analytic toy models: hand-derived answers, transforms, batching, errors.

Captum parity on a VGG-layout network lives in test_attribution_captum.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import attribution as A
from jaxviz import execution, models
from jaxviz.attribution import _common
from jaxviz.errors import InputError, ModelError

from test_attribution_models import gapnet_closed_form, gapnet_params, linear, linear_params, quadratic

H, W = 6, 8


@pytest.fixture(scope="module")
def gap():
    net, params = gapnet_params()
    x = jnp.asarray(np.random.RandomState(0).rand(2, H, W, 3), jnp.float32)
    return net, params, x


@pytest.fixture(scope="module")
def lin():
    params = linear_params(H, W)
    x = jnp.asarray(np.random.RandomState(1).rand(2, H, W, 3), jnp.float32)
    return params, x


def wmap(params, t):
    return np.asarray(params["w"])[:, t].reshape(H, W, 3)


# ------------------------------------------------------------------ analytic answers: gradients


def test_saliency_linear_is_abs_weight(lin):
    params, x = lin
    np.testing.assert_allclose(A.saliency(linear, params, x, 2), np.broadcast_to(np.abs(wmap(params, 2)), x.shape), rtol=1e-6)
    np.testing.assert_allclose(A.saliency(linear, params, x, 2, abs=False), np.broadcast_to(wmap(params, 2), x.shape), rtol=1e-6)


def test_input_x_gradient_linear(lin):
    params, x = lin
    np.testing.assert_allclose(A.input_x_gradient(linear, params, x, 1), x * wmap(params, 1), rtol=1e-6)


def test_gradient_shap_linear_is_exact_and_complete(lin):
    """On a linear model every draw's gradient is w: the map is w * (x - mean of the drawn baselines); with one
    baseline, exactly w * (x - b), whose sum is the score difference (completeness)."""
    params, x = lin
    got = A.gradient_shap(linear, params, x, 1, baselines=0.25, samples=3, key=2)
    np.testing.assert_allclose(got, (x - 0.25) * wmap(params, 1), rtol=1e-5, atol=1e-6)
    diff = np.asarray(linear(params, x))[:, 1] - np.asarray(linear(params, jnp.full_like(x, 0.25)))[:, 1]
    np.testing.assert_allclose(np.asarray(got).sum((1, 2, 3)), diff, rtol=1e-4)
    bases = jnp.stack([jnp.zeros_like(x[0]), jnp.ones_like(x[0])])
    from jaxviz.attribution import shap

    which = np.asarray(shap.shap_draws(jax.random.key(5), jnp.arange(2 * 8), x.shape[1:], 8, 2)[0]).reshape(2, 8)
    got = A.gradient_shap(linear, params, x, 1, baselines=bases, samples=8, key=5, batch_size=3)
    mean_base = which.mean(1)[:, None, None, None]  # the drawn baselines' mean image (0 or 1 each)
    np.testing.assert_allclose(got, (x - mean_base) * wmap(params, 1), rtol=1e-4, atol=1e-5)
    # every draw is exact on a linear model: its convergence delta is round-off, also under jit
    _, delta = A.gradient_shap(linear, params, x, 1, baselines=bases, samples=8, key=5, batch_size=3, stdev=0.1,
                               return_delta=True)
    _, traced = jax.jit(lambda p: A.gradient_shap(linear, p, x, 1, baselines=bases, samples=8, key=5, batch_size=3,
                                                  stdev=0.1, return_delta=True))(params)
    scale = float(np.abs(np.asarray(linear(params, x))).max())
    assert delta.shape == (2, 8) and np.abs(np.asarray(delta)).max() < 1e-5 * scale
    np.testing.assert_allclose(traced, delta, atol=1e-5 * scale)
    with pytest.raises(InputError, match="return_delta"):
        A.gradient_shap(linear, params, x, 1, return_delta=1)
    with pytest.raises(InputError, match="baselines"):
        A.gradient_shap(linear, params, x, 1, baselines=np.zeros((2, 3, 3, 3)))


def test_targets_int_per_image_and_callable_agree(lin):
    params, x = lin
    per_image = A.saliency(linear, params, x, [0, 2], abs=False)
    np.testing.assert_allclose(per_image[0], wmap(params, 0), rtol=1e-6)
    np.testing.assert_allclose(per_image[1], wmap(params, 2), rtol=1e-6)
    np.testing.assert_allclose(A.saliency(linear, params, x, lambda z: z[:, 2]), A.saliency(linear, params, x, 2))
    np.testing.assert_allclose(A.saliency(linear, params, x, np.array([2, 2])), A.saliency(linear, params, x, 2))


def test_saliency_gapnet_closed_form(gap):
    net, params, x = gap
    np.testing.assert_allclose(A.saliency(net, params, x, 1, abs=False), gapnet_closed_form(params, x, 1)["saliency"],
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", A.integrated.RULES)
def test_integrated_gradients_linear_exact(lin, method):
    params, x = lin
    base = 0.25 * jnp.ones_like(x)
    attr, delta = A.integrated_gradients(linear, params, x, 1, baselines=base, steps=7, method=method, return_delta=True)
    np.testing.assert_allclose(attr, (x - base) * wmap(params, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(delta, 0.0, atol=1e-4)


@pytest.mark.parametrize(
    "method, factor",
    [("gausslegendre", lambda n: 1.0), ("riemann_middle", lambda n: 1.0), ("riemann_trapezoid", lambda n: 1.0),
     ("riemann_left", lambda n: (n - 1) / n), ("riemann_right", lambda n: (n + 1) / n)],
)
def test_integrated_gradients_quadratic_rules(method, factor):
    # class 0: f = c sum(x^2); the integrand 2 c a x^2 is linear in a, so IG from 0 is c x^2 for rules exact on
    # linear functions, and sum(alphas)/n * 2 c x^2 for left/right Riemann sums.
    x = jnp.asarray(np.random.RandomState(3).rand(1, 4, 4, 3), jnp.float32)
    params = {"c": jnp.float32(1.5)}
    n = 5
    attr = A.integrated_gradients(quadratic, params, x, 0, steps=n, method=method)
    np.testing.assert_allclose(attr, 1.5 * x**2 * factor(n), rtol=1e-5)


def test_quadrature_rules():
    a, w = A.quadrature("gausslegendre", 8)
    assert abs(w.sum() - 1) < 1e-12 and abs((w * a**7).sum() - 1 / 8) < 1e-12  # exact for degree 2n-1
    a, w = A.quadrature("riemann_trapezoid", 5)
    np.testing.assert_allclose(a, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(w, [0.125, 0.25, 0.25, 0.25, 0.125])


def test_guided_backprop_and_deconvnet_closed_form(gap):
    net, params, x = gap
    cf = gapnet_closed_form(params, x, 2)
    np.testing.assert_allclose(A.guided_backprop(net, params, x, 2), cf["guided"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(A.deconvnet(net, params, x, 2), cf["deconv"], rtol=1e-5, atol=1e-7)


def _bilinear_ref(maps, size):
    """(N, h, w) -> (N, H, W): output pixel o samples the input at (o + 0.5) * h / H - 0.5, clamped to the map."""
    def axis(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), lo] += 1 - (src - lo)
        m[np.arange(n_out), hi] += src - lo
        return m
    return np.einsum("Hh,nhw,Ww->nHW", axis(maps.shape[1], size[0]), maps, axis(maps.shape[2], size[1]))


def test_bilinear_reference_on_a_ramp():
    # a linear ramp stays linear inside (the reference's own check): 2x upsampling of 0, 1, 2 along a row
    ramp = np.arange(3.0)[None, None, :]
    np.testing.assert_allclose(_bilinear_ref(ramp, (1, 6))[0, 0], [0, 0.25, 0.75, 1.25, 1.75, 2])


def test_cam_and_grad_cam_closed_form(gap):
    net, params, x = gap
    cf = gapnet_closed_form(params, x, 0)
    np.testing.assert_allclose(A.cam(net, params, x, 0), cf["cam"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(A.grad_cam(net, params, x, 0, relu=False), cf["grad_cam"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(A.grad_cam(net, params, x, 0), np.maximum(cf["grad_cam"], 0), rtol=1e-5, atol=1e-7)
    # upsampling: nearest doubles every cell; bilinear keeps the mean of a linear ramp
    up = A.grad_cam(net, params, x, 0, relu=False, upsample=True, interpolation="nearest")
    np.testing.assert_allclose(up, np.repeat(np.repeat(cf["grad_cam"], 2, 1), 2, 2), rtol=1e-5, atol=1e-7)
    # bilinear (the default), half-pixel centres and clamped edges as PyTorch's interpolate(align_corners=False)
    up = A.grad_cam(net, params, x, 0, relu=False, upsample=True)
    np.testing.assert_allclose(up, _bilinear_ref(cf["grad_cam"], (H, W)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(A.cam(net, params, x, 0, upsample=True), _bilinear_ref(cf["cam"], (H, W)), rtol=1e-5,
                               atol=1e-6)
    # guided Grad-CAM = guided backprop x upsampled rectified Grad-CAM
    ggc = A.guided_grad_cam(net, params, x, 0, interpolation="nearest")
    expect = cf["guided"] * np.repeat(np.repeat(np.maximum(cf["grad_cam"], 0), 2, 1), 2, 2)[..., None]
    np.testing.assert_allclose(ggc, expect, rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------ SmoothGrad


def test_smoothgrad_linear_variants(lin):
    params, x = lin
    key = jax.random.key(3)
    w = wmap(params, 0)
    # the gradient of a linear model ignores the noise: mean w, mean of squares w^2, variance 0
    sg = A.smoothgrad(linear, params, x, 0, samples=5, stdev=0.3, key=key, options={"abs": False})
    np.testing.assert_allclose(sg, np.broadcast_to(w, x.shape), rtol=1e-5)
    sq = A.smoothgrad(linear, params, x, 0, samples=5, stdev=0.3, key=key, variant="smoothgrad_sq", options={"abs": False})
    np.testing.assert_allclose(sq, np.broadcast_to(w * w, x.shape), rtol=1e-5)
    var = A.smoothgrad(linear, params, x, 0, samples=5, stdev=0.3, key=key, variant="vargrad", options={"abs": False})
    np.testing.assert_allclose(var, 0.0, atol=1e-4 * np.max(w * w))


def test_smoothgrad_input_x_gradient_uses_the_documented_noise(lin):
    params, x = lin
    key, samples, stdev = jax.random.key(7), 4, 0.2
    w = wmap(params, 1)
    got = A.smoothgrad(linear, params, x, 1, method="input_x_gradient", samples=samples, stdev=stdev, key=key)
    items = jnp.arange(2 * samples)
    eps = stdev * _common.normal_noise(key, items, x.shape[1:], samples).reshape(2, samples, H, W, 3)
    np.testing.assert_allclose(got, (x + eps.mean(1)) * w, rtol=1e-4, atol=1e-6)
    # noise_level is a fraction of each image's range
    rng = (x.reshape(2, -1).max(1) - x.reshape(2, -1).min(1))
    got = A.smoothgrad(linear, params, x, 1, method="input_x_gradient", samples=samples, noise_level=0.2, key=key)
    eps = _common.normal_noise(key, items, x.shape[1:], samples).reshape(2, samples, H, W, 3).mean(1)
    np.testing.assert_allclose(got, (x + 0.2 * rng[:, None, None, None] * eps) * w, rtol=1e-4, atol=1e-6)


def test_smoothgrad_with_one_key_per_image_ignores_the_batch_position(lin):
    params, x = lin
    keys, samples, stdev = jax.random.split(jax.random.key(5), 2), 3, 0.2
    w = wmap(params, 1)
    got = A.smoothgrad(linear, params, x, 1, method="input_x_gradient", samples=samples, stdev=stdev, key=keys,
                       batch_size=2)
    # sample s of image i: normal(fold_in(keys[i], s)), drawn flat
    eps = np.stack([np.mean([np.asarray(jax.random.normal(jax.random.fold_in(keys[i], s), (H * W * 3,)))
                             for s in range(samples)], 0).reshape(H, W, 3) for i in range(2)])
    np.testing.assert_allclose(got, (x + stdev * eps) * w, rtol=1e-4, atol=1e-6)
    # each image alone, or the batch reversed, gives the same maps (a single key follows the position instead)
    for i in range(2):
        alone = A.smoothgrad(linear, params, x[i:i + 1], 1, method="input_x_gradient", samples=samples, stdev=stdev,
                             key=keys[i:i + 1])
        np.testing.assert_allclose(alone[0], got[i], rtol=1e-6, atol=1e-7)
    rev = A.smoothgrad(linear, params, x[::-1], 1, method="input_x_gradient", samples=samples, stdev=stdev,
                       key=keys[::-1])
    np.testing.assert_allclose(rev[::-1], got, rtol=1e-6, atol=1e-7)
    one = A.smoothgrad(linear, params, x, 1, method="input_x_gradient", samples=samples, stdev=stdev, key=keys[0])
    assert np.abs(np.asarray(one[1]) - np.asarray(got[1])).max() > 1e-3
    # legacy raw keys (jax.random.PRNGKey) work in both forms
    raw = jax.random.key_data(keys)
    np.testing.assert_array_equal(A.smoothgrad(linear, params, x, 1, method="input_x_gradient", samples=samples,
                                               stdev=stdev, key=raw, batch_size=2), got)
    with pytest.raises(InputError, match=r"^key: expected one PRNG key or one per image, shape \(\) or \(2,\), got "
                                         r"shape \(3,\)"):
        A.smoothgrad(linear, params, x, 1, key=jax.random.split(jax.random.key(0), 3))


def test_smoothgrad_over_integrated_gradients(lin):
    params, x = lin
    key = jax.random.key(1)
    got = A.smoothgrad(linear, params, x, 2, method="integrated_gradients", samples=3, stdev=0.1, key=key,
                       options={"steps": 4, "baselines": jnp.zeros_like(x)}, batch_size=2)
    eps = 0.1 * _common.normal_noise(key, jnp.arange(6), x.shape[1:], 3).reshape(2, 3, H, W, 3).mean(1)
    np.testing.assert_allclose(got, (x + eps) * wmap(params, 2), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ occlusion


def occlusion_reference(f, x, t, window, stride, baseline):
    """Independent brute-force occlusion: loop over windows (Captum's geometry)."""
    x = np.asarray(x, np.float64)
    n, h, w, _ = x.shape
    total, count = np.zeros((n, h, w)), np.zeros((h, w))
    clean = f(x)[:, t]
    for r0 in range(0, h, stride[0]):
        for c0 in range(0, w, stride[1]):
            if (r0 > 0 and r0 - stride[0] + window[0] >= h) or (c0 > 0 and c0 - stride[1] + window[1] >= w):
                continue  # the previous window already reached the edge
            occ = x.copy()
            occ[:, r0:r0 + window[0], c0:c0 + window[1]] = baseline
            total[:, r0:r0 + window[0], c0:c0 + window[1]] += (clean - f(occ)[:, t])[:, None, None]
            count[r0:r0 + window[0], c0:c0 + window[1]] += 1
    return np.repeat((total / count)[..., None], 3, -1)


@pytest.mark.parametrize("window, stride", [((1, 1), (1, 1)), ((3, 4), (3, 4)), ((4, 3), (3, 2)), ((6, 5), (2, 5))])
def test_occlusion_linear_matches_brute_force(lin, window, stride):
    params, x = lin
    f = lambda v: np.asarray(v.reshape(v.shape[0], -1) @ np.asarray(params["w"], np.float64) + np.asarray(params["b"]))  # noqa: E731
    got = A.occlusion(linear, params, x, 1, window=window, stride=stride, baseline=0.5, batch_size=5)
    np.testing.assert_allclose(got, occlusion_reference(f, x, 1, window, stride, 0.5), rtol=1e-4, atol=1e-5)


def test_occlusion_closed_forms(lin):
    params, x = lin
    contrib = (x - 0.5) * wmap(params, 0)  # per-pixel, per-channel contribution to the score
    # 1x1 windows: each pixel's score drop is its own contribution summed over channels
    got = A.occlusion(linear, params, x, 0, window=1, stride=1, baseline=0.5)
    np.testing.assert_allclose(got, np.repeat(contrib.sum(-1, keepdims=True), 3, -1), rtol=1e-4, atol=1e-5)
    # non-overlapping 2x4 windows: each pixel gets its window's total
    got = A.occlusion(linear, params, x, 0, window=(2, 4), stride=(2, 4), baseline=0.5)
    block = np.asarray(contrib).reshape(2, 3, 2, 2, 4, 3).sum((2, 4, 5))
    np.testing.assert_allclose(got[..., 0], np.repeat(np.repeat(block, 2, 1), 4, 2), rtol=1e-4, atol=1e-5)


def test_window_starts_match_captum_count():
    assert list(A.window_starts(10, 4, 3)) == [0, 3, 6]  # the window at 6 reaches the edge
    assert list(A.window_starts(10, 4, 4)) == [0, 4, 8]  # the last one is clipped to 8..9
    for L, w, s in [(224, 32, 16), (32, 6, 4), (10, 10, 3), (7, 2, 2)]:
        assert len(A.window_starts(L, w, s)) == math.ceil((L - w) / s) + 1


def test_occlusion_baseline_image(lin):
    params, x = lin
    base = jnp.asarray(np.random.RandomState(5).rand(H, W, 3), jnp.float32)
    got = A.occlusion(linear, params, x, 0, window=1, stride=1, baseline=base)
    contrib = ((x - base) * wmap(params, 0)).sum(-1, keepdims=True)
    np.testing.assert_allclose(got, np.repeat(contrib, 3, -1), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ conformance over METHODS

OPTIONS = {
    "smoothgrad": dict(samples=3, stdev=0.1, key=jax.random.key(0), batch_size=2),
    "integrated_gradients": dict(steps=4, batch_size=3),
    "occlusion": dict(window=3, stride=2, batch_size=4),
    "score_cam": dict(batch_size=3),
    "ablation_cam": dict(batch_size=3),
    "feature_ablation": dict(segments=3, batch_size=4),
    "rise": dict(masks=10, cells=2, batch_size=6),
    "gradient_shap": dict(samples=3, stdev=0.1, key=jax.random.key(0), batch_size=2),
    "kernel_shap": dict(segments=3, samples=12, batch_size=5),
    "lime": dict(segments=3, samples=12, batch_size=5, alpha=0.001),
    "deeplift": dict(baselines=0.2, batch_size=1),
    "deeplift_shap": dict(baselines=np.stack([np.full((H, W, 3), v, np.float32) for v in (0.1, 0.6, 0.3)]),
                          batch_size=4),
}
#: methods whose map does not depend on the target (Eigen-CAM: the activation's principal component)
TARGET_FREE = {"eigen_cam"}


def _call(name, net, params, x, t=2):
    out = A.METHODS[name](net, params, x, t, **OPTIONS.get(name, {}))
    return out


@pytest.fixture(scope="module")
def biased():
    """FullGrad needs convolutions (GapNet's 1x1 "conv" is a Dense): a small VGG, 3 classes like GapNet."""
    from jaxviz import weights

    net = models.VGG(stages=((4,), (4,)), fc_features=8, num_classes=3, pool_output=(1, 1))
    params = weights.random(net, seed=3)
    x = jnp.asarray(np.random.RandomState(0).rand(2, H, W, 3), jnp.float32)
    return net, params, x


def _model_for(name, gap, request):
    return request.getfixturevalue("biased") if name == "full_grad" else gap


@pytest.mark.parametrize("name", sorted(A.METHODS))
def test_conformance(gap, name, request):
    net, params, x = _model_for(name, gap, request)
    out = _call(name, net, params, x)
    expect_shape = (2, H // 2, W // 2) if name in A.LAYER_METHODS else x.shape[:3] if name in A.PIXEL_MAP_METHODS else x.shape
    assert out.shape == expect_shape and out.dtype == jnp.float32
    assert np.all(np.isfinite(out)) and np.any(out != 0)
    # jit == eager
    jitted = jax.jit(lambda p, v: _call(name, net, p, v))(params, x)
    np.testing.assert_allclose(jitted, out, rtol=1e-5, atol=1e-7)
    # vmap == loop (two batches of two images stacked)
    x2 = jnp.stack([x, x[::-1] * 0.9])
    mapped = jax.vmap(lambda v: _call(name, net, params, v))(x2)
    for b in range(2):
        np.testing.assert_allclose(mapped[b], _call(name, net, params, x2[b]), rtol=1e-5, atol=1e-7)
    # no re-tracing on a second call with new values of the same shapes
    before = sum(_common.TRACES.values())
    _call(name, net, params, x * 0.5)
    assert sum(_common.TRACES.values()) == before


@pytest.mark.parametrize("name", sorted(set(A.METHODS) - TARGET_FREE))
def test_traced_out_of_range_target_gives_nan_not_a_plausible_map(gap, name, request):
    """Under the caller's jit the target cannot be checked: the bad image's map is all NaN, the good one unchanged."""
    net, params, x = _model_for(name, gap, request)
    k = 3
    for bad in (k, -1):
        out = np.asarray(jax.jit(lambda t: _call(name, net, params, x, t))(jnp.array([1, bad])))
        assert np.isnan(out[1]).all()
        np.testing.assert_allclose(out[0], _call(name, net, params, x, [1, 1])[0], rtol=1e-5, atol=1e-7)
    with pytest.raises(InputError, match=rf"^target: expected class indices in \[0, {k}\), got {k}$"):
        _call(name, net, params, x, [1, k])  # concrete: refused outright


@pytest.mark.parametrize("name", sorted(A.SAMPLING_METHODS))
def test_batch_size_independence(gap, name):
    net, params, x = gap
    opts = dict(OPTIONS[name])
    results = []
    for b in (1, 3, 1000):
        opts["batch_size"] = b
        results.append(A.METHODS[name](net, params, x, [0, 2], **opts))
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-5, atol=1e-7)


def test_registry_and_exports():
    assert set(A.METHODS) == {"saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop",
                              "deconvnet", "grad_cam", "cam", "guided_grad_cam", "occlusion", "full_grad",
                              "feature_ablation", "rise", "gradient_shap", "kernel_shap",
                              "lime", "lrp", "deeplift", "deeplift_shap", *A.CAM_METHODS}
    for name in A.__all__:
        assert hasattr(A, name), name
    assert A.LAYER_METHODS <= set(A.METHODS) and A.SAMPLING_METHODS <= set(A.METHODS)


@pytest.mark.parametrize("name", sorted(A.CALLABLE_METHODS))
def test_callable_models_accepted(lin, name):
    params, x = lin
    out = A.METHODS[name](linear, params, x, 0, **OPTIONS.get(name, {}))
    assert out.shape == (x.shape[:3] if name in A.PIXEL_MAP_METHODS else x.shape)


# ------------------------------------------------------------------ errors


def test_errors(gap, lin):
    net, params, x = gap
    lp, lx = lin
    with pytest.raises(InputError, match=r"^images: expected shape \(N, H, W, 3\), got \(6, 8, 3\)"):
        A.saliency(net, params, x[0], 0)
    with pytest.raises(InputError, match=r"^target: expected class indices in \[0, 3\), got 3"):
        A.saliency(net, params, x, 3)
    with pytest.raises(InputError, match=r"^target: expected one class index per image \(2,\), got shape \(3,\)"):
        A.saliency(net, params, x, [0, 1, 2])
    with pytest.raises(InputError, match=r"^target: expected a class index"):
        A.saliency(net, params, x, None)
    with pytest.raises(ModelError, match=r"^net: found no ReLU to swap in linear"):  # never plain gradients
        A.guided_backprop(linear, lp, lx, 0)
    with pytest.raises(ModelError, match=r"^net: found no ReLU to swap in linear"):
        A.deconvnet(linear, lp, lx, 0)
    with pytest.raises(InputError, match=r"^method: expected one of 'gausslegendre'"):
        A.integrated_gradients(net, params, x, 0, method="simpson")
    with pytest.raises(InputError, match=r"^steps: expected >= 2 for riemann_left, got 1"):
        A.integrated_gradients(net, params, x, 0, steps=1, method="riemann_left")
    with pytest.raises(InputError, match=r"^batch_size: expected a positive int, got 0"):
        A.occlusion(net, params, x, 0, window=2, batch_size=0)
    with pytest.raises(InputError, match=r"^stride: expected at most the window \(2, 2\)"):
        A.occlusion(net, params, x, 0, window=2, stride=3)
    with pytest.raises(InputError, match=r"^window: expected at most the image size 6x8, got 7x7"):
        A.occlusion(net, params, x, 0, window=7)
    with pytest.raises(InputError, match=r"^baseline: expected a number or an array broadcastable"):
        A.occlusion(net, params, x, 0, window=2, baseline=jnp.zeros((5, 5, 3)))
    with pytest.raises(InputError, match=r"^variant: expected one of 'smoothgrad'"):
        A.smoothgrad(net, params, x, 0, variant="mean")
    with pytest.raises(InputError, match=r"^method: expected one of 'saliency'"):
        A.smoothgrad(net, params, x, 0, method="smoothgrad")
    with pytest.raises(InputError, match=r"^layer: unknown layer 'relu9'"):
        A.grad_cam(net, params, x, 0, layer="relu9")
    with pytest.raises(InputError, match=r"^layer: expected a spatial tap"):
        A.grad_cam(net, params, x, 0, layer="gap")
    with pytest.raises(InputError, match=r"^target: cam needs class indices"):
        A.cam(net, params, x, lambda z: z[:, 0])
    with pytest.raises(InputError, match=r"^target: a callable target must map logits"):
        A.saliency(net, params, x, lambda z: z)


# ------------------------------------------------------------------ fast max-pool gradients


@pytest.mark.parametrize("size", [8, 9])
def test_fast_pools_identical_values_and_gradients(size):
    import flax.linen as nn

    from jaxviz.attribution._fastpool import fast_pools

    def f(k, x):
        h = jnp.tanh(jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
        h = jnp.round(h * 4) / 4  # many ties inside the next pool's windows
        return nn.max_pool(jax.nn.relu(h), (2, 2), strides=(2, 2)).sum((1, 2, 3))

    k = jnp.asarray(np.random.RandomState(0).randn(3, 3, 3, 4), jnp.float32)
    for x in (np.random.RandomState(1).rand(2, size, size, 3), np.zeros((2, size, size, 3))):
        x = jnp.asarray(x, jnp.float32)
        fast = fast_pools(f)
        assert jnp.array_equal(fast(k, x), f(k, x))
        g_ref = jax.grad(lambda v: f(k, v).sum())(x)
        g_fast = jax.jit(jax.grad(lambda v: fast(k, v).sum()))(x)
        assert jnp.array_equal(g_fast, g_ref)  # same element chosen in every window, ties included
        # forward mode works too (custom JVP)
        assert jnp.allclose(jax.jvp(lambda v: fast(k, v), (x,), (jnp.ones_like(x),))[1],
                            jax.jvp(lambda v: f(k, v), (x,), (jnp.ones_like(x),))[1])


# ------------------------------------------------------------------ incremental occlusion (issue 6)


@pytest.mark.parametrize(
    "stages, size, window, stride, baseline, batch",
    [
        (((4,), (8,)), 32, 6, 4, 0.5, 7),  # clipped last window (ceil((32 - 6) / 4) + 1 = 8 windows)
        (((4, 4), (8,), (8,)), 37, (7, 5), (3, 5), "image", 5),  # odd size: VALID pools drop a row
        (((4,), (8, 8)), 20, 3, 2, 0.0, 64),  # small window, several convs per block
        (((4,), (8,), (8,), (8,)), 48, 16, 16, 0.25, 3),  # non-overlapping, falls back early
        (((4,), (8,), (8,)), (44, 30), (9, 6), (5, 4), 0.5, 6),  # rectangular image
    ],
)
def test_incremental_occlusion_equals_full(stages, size, window, stride, baseline, batch):
    from jaxviz import models, weights

    net = models.VGG(stages=stages, fc_features=16, num_classes=5, pool_output=(2, 2))
    params = weights.random(net, seed=3)
    h, w = (size, size) if isinstance(size, int) else size
    x = jnp.asarray(np.random.RandomState(0).rand(2, h, w, 3), jnp.float32)
    if baseline == "image":
        baseline = jnp.asarray(np.random.RandomState(1).rand(2, h, w, 3), jnp.float32)
    kw = dict(window=window, stride=stride, baseline=baseline)
    full = A.occlusion(net, params, x, [1, 3], method="full", batch_size=8, **kw)
    scale = float(jnp.max(jnp.abs(full)))
    assert scale > 0
    # one patch size for all windows, and window groups sized separately (edge windows change less)
    for groups in (1, 3):
        inc = A.occlusion(net, params, x, [1, 3], method="incremental", batch_size=batch, groups=groups, **kw)
        np.testing.assert_allclose(inc, full, rtol=0, atol=1e-4 * scale, err_msg=f"groups={groups}")
    assert len(A.occlusion_plan(net, (h, w), window=window, stride=stride, groups=3).groups) > 1


def test_incremental_occlusion_with_average_pooling():
    # the style-transfer option: 2x2 average pools; the patch pools average clean and recomputed values alike
    from jaxviz import models, weights

    net = models.VGG(stages=((4,), (8,), (8,)), fc_features=16, num_classes=5, pool_output=(2, 2), pooling="avg")
    params = weights.random(net, seed=4)
    x = jnp.asarray(np.random.RandomState(2).rand(1, 40, 40, 3), jnp.float32)
    kw = dict(window=8, stride=4, baseline=0.5)
    full = A.occlusion(net, params, x, 2, method="full", **kw)
    scale = float(jnp.max(jnp.abs(full)))
    assert scale > 0
    for groups in (1, 2):
        inc = A.occlusion(net, params, x, 2, method="incremental", groups=groups, **kw)
        np.testing.assert_allclose(inc, full, rtol=0, atol=1e-4 * scale, err_msg=f"groups={groups}")


def test_incremental_occlusion_under_x64():
    """jax_enable_x64 makes index arithmetic int64; the patch slices mixed int32 and int64 starts and failed."""
    from jaxviz import models, weights

    net = models.VGG(stages=((8,), (16,)), num_classes=10, fc_features=32)
    params = weights.random(net, seed=0)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    want = A.occlusion(net, params, x, 3, window=8, stride=4, method="full")
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        got = A.occlusion(net, params, x, 3, window=8, stride=4, method="incremental")
    finally:
        jax.config.update("jax_enable_x64", prev)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(jnp.abs(want).max()))


def test_window_groups_plan():
    from jaxviz import models
    from jaxviz.attribution import _incremental as inc

    vgg19 = models.vgg19()
    one = A.occlusion_plan(vgg19, (224, 224), window=32, stride=16)
    four = A.occlusion_plan(vgg19, (224, 224), window=32, stride=16, groups=4)
    assert len(one.groups) == 1 and one.groups[0].windows == 169 and one.fallback == "relu5_1"
    # bands: 3 row runs across all columns + the main row run split into 4 column runs
    assert len(four.groups) == 2 * 4 - 1
    cells = sorted((r, c) for g in four.groups for r in g.rows for c in g.cols)
    assert cells == [(r, c) for r in range(13) for c in range(13)]  # every window exactly once
    # the "about 1/4", derived from scratch: follow each window's changed rows through the layers (a 3x3
    # convolution widens them by one on each side, a 2x2 pool halves them, both clipped to the map); one group
    # sizes every patch for the widest window; the first convolution whose patch would be its whole map, and
    # every one after it, runs in full
    starts = list(range(0, 224 - 32 + 1, 16))
    regions = [(s, s + 32) for s in starts]
    length, cin, patch, full, fell_back = 224, 3, 0.0, 0.0, False
    per_window = np.zeros(len(starts) ** 2)  # each window's own patches, without falling back: a lower bound
    for stage in models.VGG19_STAGES:
        for cout in stage:
            regions = [(max(lo - 1, 0), min(hi + 1, length)) for lo, hi in regions]
            macs = 9 * cin * cout
            widest = max(hi - lo for lo, hi in regions)
            fell_back = fell_back or (cin != 3 and widest >= length)
            patch += macs * (length * length if fell_back else widest * widest)
            full += macs * length * length
            sizes = np.array([hi - lo for lo, hi in regions])
            per_window += macs * np.outer(sizes, sizes).ravel()
            cin = cout
        length //= 2
        regions = [(lo // 2, min(-(-hi // 2), length)) for lo, hi in regions]
    assert one.cost == pytest.approx(patch / full, rel=1e-9)
    assert one.cost == pytest.approx(0.2314, abs=5e-4)  # the figure the docs quote
    # groups size patches per run of windows: between one size for all and a size per window
    assert per_window.mean() / full < four.cost < one.cost
    assert per_window.mean() / full == pytest.approx(0.178, abs=5e-4)  # the docs' "0.178 with a size per window"
    assert four.cost == pytest.approx(0.2003, abs=5e-4)  # the figure the docs quote (dynamic programming's split)
    edge = min(four.groups, key=lambda g: g.cost)
    assert edge.fallback == "pool5" and edge.cost < one.cost
    # every patch stays inside its map and covers the window's changed region
    for g in four.groups:
        for k, step in enumerate(g.steps, 1):
            assert g.pos_h[:, k].min() >= 0 and (g.pos_h[:, k] + step.size[0]).max() <= step.length[0]
            assert g.pos_w[:, k].min() >= 0 and (g.pos_w[:, k] + step.size[1]).max() <= step.length[1]

    # the dynamic programme finds the best split into runs (brute force over all splits)
    import itertools

    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 9, size=(7, 3))
    weight = rng.uniform(size=3)
    for k in (1, 2, 3):
        runs = inc._partition(sizes, weight, k)
        got = sum(len(r) * float(sizes[r].max(0) @ weight) for r in runs)
        best = min(
            sum(len(p) * float(sizes[p].max(0) @ weight) for p in np.split(np.arange(7), list(cuts)))
            for j in range(k) for cuts in itertools.combinations(range(1, 7), j)
        )
        assert got == pytest.approx(best) and len(runs) <= k
        assert np.array_equal(np.concatenate(runs), np.arange(7))


def test_auto_groups_weighs_saved_work_against_compilation():
    import importlib

    from jaxviz import models

    occ = importlib.import_module("jaxviz.attribution.occlusion")  # the module (the package exports the function)
    vgg19 = models.vgg19()
    one = A.occlusion_plan(vgg19, (224, 224), window=32, stride=16)
    many = A.occlusion_plan(vgg19, (224, 224), window=32, stride=16, groups=occ.AUTO_GROUPS)
    saved_per_image = (one.cost - many.cost) * one.full_macs * 169
    assert one.full_macs == pytest.approx(19.5e9, rel=0.01)  # VGG19's known 19.6 GMACs
    need = int(np.ceil(occ.AUTO_GROUPS_SAVED_MACS["cpu"] / saved_per_image))
    kw = dict(window=32, stride=16, backend="cpu")
    assert A.occlusion_auto_groups(vgg19, (224, 224), images=need - 1, **kw) == 1
    assert A.occlusion_auto_groups(vgg19, (224, 224), images=need, **kw) == occ.AUTO_GROUPS
    # accelerators run the saved work far faster than they compile: the same call keeps one group there
    assert A.occlusion_auto_groups(vgg19, (224, 224), window=32, stride=16, images=need, backend="gpu") == 1
    assert A.occlusion_auto_groups(linear, (8, 8), images=10**6) == 1  # not a VGG: no plan
    with pytest.raises(InputError, match=r"^groups: expected a positive int or None, got 0"):
        A.occlusion(linear, linear_params(H, W), jnp.zeros((1, H, W, 3)), 0, window=2, groups=0)
    with pytest.raises(InputError, match=r"^groups: only the incremental method groups windows; got groups=2 with"):
        A.occlusion(linear, linear_params(H, W), jnp.zeros((1, H, W, 3)), 0, window=2, groups=2, method="full")


def test_chunked_map_even_chunks_compile_one_program():
    calls = []

    def body(idx):
        calls.append(idx.shape[0])
        return idx * 2

    out = jax.jit(lambda: execution.chunked_map(body, 81, 16, even=True))()
    np.testing.assert_array_equal(out, 2 * np.arange(81))
    assert calls == [9]  # 9 chunks of 9: no remainder program, nothing padded
    calls.clear()
    out = jax.jit(lambda: execution.chunked_map(body, 23, 16, even=True))()
    np.testing.assert_array_equal(out, 2 * np.arange(23))
    assert calls == [12]  # 2 chunks of 12, the last item repeated once
    calls.clear()
    jax.jit(lambda: execution.chunked_map(body, 23, 16))()
    assert calls == [16, 7]  # the plain form: a full chunk and a remainder


def test_incremental_plan_and_auto_choice():
    from jaxviz import models
    from jaxviz.attribution.occlusion import _use_incremental

    vgg19 = models.vgg19()
    p = A.occlusion_plan(vgg19, (224, 224), window=32, stride=16)
    assert 0.2 < p.cost < 0.3  # the estimate: about 1/4 of the full convolution work
    assert A.occlusion_plan(vgg19, (512, 512), window=32, stride=16).cost < 0.07  # about 1/17
    assert _use_incremental(vgg19, "auto", (224, 224), (32, 32), (16, 16))
    assert not _use_incremental(vgg19, "auto", (64, 64), (48, 48), (16, 16))  # the window covers the image
    assert A.occlusion_plan(linear, (8, 8)) is None
    with pytest.raises(InputError, match=r"^method: 'incremental' needs a jaxviz VGG network, got function"):
        A.occlusion(linear, linear_params(H, W), jnp.zeros((1, H, W, 3)), 0, window=2, method="incremental")


def _masked_occlusion_reference(net, params, x, target, plan):
    """Occlusion as the plan's patches define it, computed without patches: every window's occluded image runs
    through the whole network one layer at a time, and after each step the map outside that step's patch is
    reset to the clean image's map. Equal to the exact occlusion when the patches cover every changed region;
    the definition of the approximate one when they are capped."""
    names = [s.name for s in plan.groups[0].steps]
    clean = net.apply(params, x, taps=tuple(names))
    base = float(net.apply(params, x)[0, target])
    h, w = x.shape[1:3]
    wh, ww = plan.input_size
    total = np.zeros((h, w))
    count = np.zeros((h, w))

    def score(img, masks, steps):
        a = img[None]
        for k, (name, m) in enumerate(zip(steps, masks)):
            a = net.apply(params, a, taps=(name,))[name] if k == 0 else net.apply(
                params, a, start=steps[k - 1], taps=(name,))[name]
            a = jnp.where(m[None, :, :, None], a, clean[name])
        return net.apply(params, a, start=steps[-1])[0, target]

    for g in plan.groups:
        steps = tuple(s.name for s in g.steps)
        run = jax.jit(jax.vmap(lambda img, *m: score(img, m, steps)))
        imgs, masks, boxes = [], [[] for _ in steps], []
        for i, r in enumerate(g.rows):
            for j, c in enumerate(g.cols):
                r0, c0 = int(g.pos_h[i, 0]), int(g.pos_w[j, 0])
                occ = np.array(x[0])
                occ[r0:r0 + wh, c0:c0 + ww] = 0.0
                imgs.append(occ)
                boxes.append((r0, c0))
                for k, s in enumerate(g.steps):
                    m = np.zeros(s.length, bool)
                    m[g.pos_h[i, k + 1]:g.pos_h[i, k + 1] + s.size[0], g.pos_w[j, k + 1]:g.pos_w[j, k + 1] + s.size[1]] = True
                    masks[k].append(m)
        scores = np.asarray(run(jnp.asarray(np.stack(imgs)), *(jnp.asarray(np.stack(m)) for m in masks)))
        for (r0, c0), sc in zip(boxes, scores):
            total[r0:r0 + wh, c0:c0 + ww] += base - sc
            count[r0:r0 + wh, c0:c0 + ww] += 1
    return np.broadcast_to((total / count)[None, :, :, None], x.shape)


def test_approximate_incremental_occlusion():
    from jaxviz import models, weights

    net = models.VGG(stages=((4, 4), (8, 8), (8,)), fc_features=16, num_classes=5, pool_output=(2, 2))
    params = weights.random(net, seed=2)
    x = jnp.asarray(np.random.RandomState(0).rand(1, 48, 48, 3), jnp.float32)
    kw = dict(window=6, stride=4, batch_size=32)
    exact = A.occlusion(net, params, x, 1, method="full", **kw)
    scale = float(jnp.max(jnp.abs(exact)))
    # a cap the exact patches never reach changes nothing
    np.testing.assert_allclose(A.occlusion(net, params, x, 1, approximate=1.0, **kw), exact, rtol=0, atol=1e-5 * scale)
    # the reference, checked on the exact plan first: it then equals the full method
    ref = _masked_occlusion_reference(net, params, x, 1, A.occlusion_plan(net, (48, 48), window=6, stride=4))
    np.testing.assert_allclose(ref, exact, rtol=0, atol=1e-5 * scale)
    for cap, groups in ((0.2, 1), (0.5, 3)):
        plan = A.occlusion_plan(net, (48, 48), window=6, stride=4, approximate=cap, groups=groups)
        got = A.occlusion(net, params, x, 1, approximate=cap, groups=groups, **kw)
        ref = _masked_occlusion_reference(net, params, x, 1, plan)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale)
        assert float(jnp.linalg.norm(got - exact)) > 1e-3 * float(jnp.linalg.norm(exact))  # the cap binds here
    # each capped patch is the exact one cut to ceil(cap * L) (when a cap binds at step k, the exact region at
    # k + 1 still reaches the cap: convolutions grow regions, pools halve both the region and the cap)
    exact_plan = A.occlusion_plan(net, (48, 48), window=6, stride=4)
    for cap in (0.2, 0.5):
        capped = A.occlusion_plan(net, (48, 48), window=6, stride=4, approximate=cap)
        for s, e in zip(capped.groups[0].steps, exact_plan.groups[0].steps):
            assert s.name == e.name
            for d in range(2):
                assert s.size[d] == min(e.size[d], max(1, int(np.ceil(cap * s.length[d])))), (cap, s.name, d)
    assert A.occlusion_plan(net, (48, 48), window=6, stride=4, approximate=0.2).cost < A.occlusion_plan(
        net, (48, 48), window=6, stride=4).cost
    with pytest.raises(InputError, match=r"^approximate: expected a fraction in \(0, 1\] or None, got 0"):
        A.occlusion(net, params, x, 1, approximate=0, **kw)
    with pytest.raises(InputError, match=r"^approximate: only the incremental method approximates"):
        A.occlusion(net, params, x, 1, approximate=0.5, method="full", **kw)


def test_vgg_gradients_use_flipped_convolutions_and_match_the_plain_callable():
    # the methods differentiate a jaxviz VGG with conv_grad="auto" (fast inside lax.scan on XLA:CPU); a plain
    # callable keeps JAX's transpose: same numbers, eagerly and under jit with more chunks than are unrolled
    from jaxviz import models, weights

    net = models.VGG(stages=((4,), (8, 8)), fc_features=16, num_classes=5, pool_output=(2, 2))
    params = weights.random(net, seed=3)
    x = jax.random.uniform(jax.random.key(4), (2, 32, 32, 3))
    plain = lambda p, v: net.apply(p, v)  # noqa: E731
    steps, bs = 4 * (execution.UNROLL + 1), 2
    with pytest.raises(TypeError, match="custom_vjp"):  # reverse mode only: the flipped form is in use
        jax.jvp(lambda v: _common.forward(net)(params, v), (x,), (x,))
    jax.jvp(lambda v: _common.forward(plain)(params, v), (x,), (x,))
    ref = A.integrated_gradients(plain, params, x, 1, steps=steps, batch_size=bs)
    eager = A.integrated_gradients(net, params, x, 1, steps=steps, batch_size=bs)
    traced = jax.jit(lambda v: A.integrated_gradients(net, params, v, 1, steps=steps, batch_size=bs))(x)
    assert float(jnp.abs(ref).max()) > 0
    np.testing.assert_allclose(eager, ref, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(traced, ref, rtol=1e-5, atol=1e-9)


def test_legacy_raw_keys_of_the_rbg_implementation_are_accepted(lin):
    """rbg (a common TPU setting) keys are 4 words, threefry's 2: a raw key is checked against the default one."""
    params, x = lin
    prev = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    try:
        raw = jax.random.PRNGKey(3)
        assert raw.shape == (4,)
        got = A.smoothgrad(linear, params, x, 1, method="input_x_gradient", samples=2, stdev=0.1, key=raw)
        want = A.smoothgrad(linear, params, x, 1, method="input_x_gradient", samples=2, stdev=0.1,
                            key=jax.random.wrap_key_data(raw))
        np.testing.assert_array_equal(got, want)
        with pytest.raises(InputError, match=r"^key: expected a PRNG key"):
            A.smoothgrad(linear, params, x, 1, key=jnp.zeros((2,), jnp.uint32))  # threefry-sized: not rbg's
    finally:
        jax.config.update("jax_default_prng_impl", prev)


def test_images_closed_over_by_a_jitted_caller():
    """docs/attribution.md: a method can be wrapped in jax.jit with the images a closed-over JAX array (the range
    check of a model's images ran jnp ops on them inside the trace: ConcretizationTypeError)."""
    from jaxviz import models, weights

    net = models.VGG(stages=((4,), (8,)), num_classes=5, fc_features=8)
    params = weights.random(net, seed=0)
    images = jnp.asarray(np.random.RandomState(3).rand(2, 32, 32, 3), jnp.float32)
    got = jax.jit(lambda t: A.saliency(net, params, images, t))(jnp.array([1, 2]))
    np.testing.assert_allclose(got, A.saliency(net, params, images, np.array([1, 2])), rtol=1e-5, atol=1e-7)
    big = images * 255  # still checked when closed over
    with pytest.raises(InputError, match=r"0-255 picture"):
        jax.jit(lambda t: A.saliency(net, params, big, t))(jnp.array([1, 2]))


def test_smoothgrad_across_batch_sizes_agrees_to_the_documented_bound():
    """The samples are the same whatever batch_size or the number of images per call; the maps agree to
    float32 round-off per sample, which noisy inputs amplify through ReLUs and max pools near zero: within 0.3%
    of the map's maximum (README, docs/attribution.md). The same call twice gives the same bits."""
    net = models.small_cnn(num_classes=5)  # convolutions, ReLUs and max pools: where the round-off flips
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)
    params = jax.jit(net.init)(jax.random.key(0), x)
    keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.key(0), c))(jnp.arange(2, dtype=jnp.uint32))
    f = jax.jit(lambda x, k, t, bs: A.smoothgrad(net, params, x, t, key=k, samples=12, batch_size=bs),
                static_argnums=3)
    ref = np.asarray(f(x, keys, jnp.array([1, 2]), 12))
    np.testing.assert_array_equal(np.asarray(f(x, keys, jnp.array([1, 2]), 12)), ref)
    for got in (f(x, keys, jnp.array([1, 2]), 5), f(x[:1], keys[:1], jnp.array([1]), 12)):
        got = np.asarray(got)
        assert np.abs(got - ref[: len(got)]).max() <= 3e-3 * np.abs(ref[: len(got)]).max()
