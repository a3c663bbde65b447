"""jaxviz.attribution.metrics: closed forms on a linear model, Captum parity with identical perturbations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import attribution as A
from jaxviz.attribution import _common, metrics
from jaxviz.errors import InputError

from test_attribution_models import gapnet_closed_form, gapnet_params, linear, linear_params

H, W = 4, 5


@pytest.fixture(scope="module")
def lin():
    params = linear_params(H, W, k=3, seed=4)
    x = jnp.asarray(np.random.RandomState(2).rand(2, H, W, 3), jnp.float32)
    return params, x


def test_deletion_and_insertion_linear_closed_form(lin):
    params, x = lin
    attr = A.input_x_gradient(linear, params, x, 1)  # per-channel contributions to the score (baseline 0)
    contrib = np.asarray(attr, np.float64).sum(-1).reshape(2, -1)
    top = np.sort(contrib, axis=1)[:, ::-1]
    steps = 4
    counts = np.round(np.arange(steps + 1) * H * W / steps).astype(int)  # 0 5 10 15 20 pixels
    removed = np.stack([top[:, :c].sum(1) for c in counts], 1)
    f_x = np.asarray(linear(params, x))[:, 1]
    bias = float(params["b"][1])

    d = metrics.deletion(linear, params, x, 1, attr, steps=steps, probabilities=False, batch_size=3)
    np.testing.assert_allclose(d.fractions, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(d.scores, f_x[:, None] - removed, rtol=1e-4, atol=1e-4)
    curve = f_x[:, None] - removed
    np.testing.assert_allclose(d.auc, (curve.sum(1) - 0.5 * (curve[:, 0] + curve[:, -1])) / steps, rtol=1e-4, atol=1e-4)

    ins = metrics.insertion(linear, params, x, 1, attr[..., 0] * 3, steps=steps, probabilities=False)  # (N, H, W) maps
    # ranking by attr[..., 0] differs from the channel sum, so check with the same ranking
    order = np.argsort(-np.asarray(attr[..., 0]).reshape(2, -1), axis=1, kind="stable")
    ranked = np.take_along_axis(contrib, order, 1)
    inserted = np.stack([ranked[:, :c].sum(1) for c in counts], 1)
    np.testing.assert_allclose(ins.scores, bias + inserted, rtol=1e-4, atol=1e-4)

    # probabilities: the softmax of the same logits; batch_size does not matter
    p = metrics.deletion(linear, params, x, 1, attr, steps=steps, batch_size=7)
    p1 = metrics.deletion(linear, params, x, 1, attr, steps=steps, batch_size=1)
    np.testing.assert_allclose(p.scores, p1.scores, rtol=1e-6)
    np.testing.assert_allclose(p.scores[:, 0], jax.nn.softmax(linear(params, x))[:, 1], rtol=1e-5)


def test_infidelity_zero_for_exact_linear_explanation(lin):
    params, x = lin
    # for f linear, f(x) - f(x - I) = w . I exactly, so the gradient has zero infidelity
    attr = A.saliency(linear, params, x, 0, abs=False)
    inf = metrics.infidelity(linear, params, x, 0, attr, samples=6, stdev=0.1, key=jax.random.key(3), batch_size=4)
    assert inf.shape == (2,) and float(jnp.max(inf)) < 1e-8
    bad = metrics.infidelity(linear, params, x, 0, -attr, samples=6, stdev=0.1, key=jax.random.key(3))
    assert float(jnp.min(bad)) > 1e-3


def test_max_sensitivity_linear_closed_form(lin):
    params, x = lin
    # saliency of a linear model does not move at all
    np.testing.assert_allclose(metrics.max_sensitivity(linear, params, x, 2, samples=4, options={"abs": False}), 0.0,
                               atol=1e-6)
    # input x gradient moves by delta * w: max_s ||delta_s w|| / ||x w||
    key, samples, radius = jax.random.key(9), 5, 0.05
    got = metrics.max_sensitivity(linear, params, x, 2, method="input_x_gradient", samples=samples, radius=radius,
                                  key=key, batch_size=3)
    w = np.asarray(params["w"])[:, 2].reshape(H, W, 3)
    delta = radius * np.asarray(_common.uniform_noise(key, jnp.arange(2 * samples), (H, W, 3), 1.0, samples))
    delta = delta.reshape(2, samples, H, W, 3)
    ratio = np.linalg.norm((delta * w).reshape(2, samples, -1), axis=2) / np.linalg.norm(
        (np.asarray(x) * w).reshape(2, 1, -1), axis=2)
    np.testing.assert_allclose(got, ratio.max(1), rtol=1e-4)


def test_captum_infidelity_and_sensitivity_with_identical_perturbations(lin):
    torch = pytest.importorskip("torch")
    cm = pytest.importorskip("captum.metrics")
    captum_attr = pytest.importorskip("captum.attr")
    params, x = lin
    samples, stdev, key = 5, 0.1, jax.random.key(11)
    tw = torch.from_numpy(np.array(params["w"])).double()
    tb = torch.from_numpy(np.array(params["b"])).double()

    def torch_linear(v):  # NHWC flattening, same as `linear`
        return v.reshape(v.shape[0], -1) @ tw + tb

    xt = torch.from_numpy(np.asarray(x, np.float64))
    attr = A.input_x_gradient(linear, params, x, [0, 2])
    noise = stdev * np.asarray(_common.normal_noise(key, jnp.arange(2 * samples), (H, W, 3), samples), np.float64)
    noise_t = torch.from_numpy(noise)

    def perturb(inputs):
        return noise_t, inputs - noise_t

    for normalize in (False, True):
        cap = cm.infidelity(torch_linear, perturb, xt, torch.from_numpy(np.asarray(attr, np.float64)), target=[0, 2],
                            n_perturb_samples=samples, normalize=normalize)
        ours = metrics.infidelity(linear, params, x, [0, 2], attr, samples=samples, stdev=stdev, key=key,
                                  normalize=normalize)
        np.testing.assert_allclose(ours, cap.numpy(), rtol=2e-3, atol=1e-7)
    # one value per pixel (an upsampled Grad-CAM's shape) counts for all three channels: Captum, which wants the
    # inputs' shape, gets the map repeated over the channels
    pixel = np.asarray(attr, np.float64).sum(-1)
    cap = cm.infidelity(torch_linear, perturb, xt, torch.from_numpy(np.repeat(pixel[..., None], 3, -1)), target=[0, 2],
                        n_perturb_samples=samples)
    ours = metrics.infidelity(linear, params, x, [0, 2], pixel.astype(np.float32), samples=samples, stdev=stdev, key=key)
    np.testing.assert_allclose(ours, cap.numpy(), rtol=2e-3, atol=1e-7)
    assert not np.allclose(ours, metrics.infidelity(linear, params, x, [0, 2], attr, samples=samples, stdev=stdev,
                                                    key=key), rtol=1e-2)
    with pytest.raises(InputError, match=r"^attributions: expected shape \(2, 4, 5, 3\) or \(2, 4, 5\), got \(2, 4, 5, 2\)$"):
        metrics.infidelity(linear, params, x, 0, np.zeros((2, H, W, 2), np.float32))

    radius = 0.05
    unif = radius * np.asarray(_common.uniform_noise(key, jnp.arange(2 * samples), (H, W, 3), 1.0, samples), np.float64)
    unif_t = torch.from_numpy(unif)
    cap = cm.sensitivity_max(captum_attr.InputXGradient(torch_linear).attribute, xt.clone().requires_grad_(),
                             perturb_func=lambda inputs, r: inputs + unif_t, perturb_radius=radius,
                             n_perturb_samples=samples, target=[0, 2])
    ours = metrics.max_sensitivity(linear, params, x, [0, 2], method="input_x_gradient", samples=samples, radius=radius,
                                   key=key)
    np.testing.assert_allclose(ours, cap.detach().numpy(), rtol=1e-4)


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.RandomState(0)
    a = rng.randint(0, 5, size=(3, 40)).astype(float)
    b = a + rng.randn(3, 40)
    got = metrics.spearman(a, b)
    for i in range(3):
        assert abs(got[i] - spearmanr(a[i], b[i]).statistic) < 1e-12


def test_spearman_of_two_rankings_and_bad_shapes():
    from scipy.stats import spearmanr

    a, b = np.array([3.0, 1.0, 4.0, 1.0, 5.0]), np.array([2.0, 7.0, 1.0, 8.0, 2.0])
    got = metrics.spearman(a, b)  # two 1-D arrays: one correlation, not five one-element rows
    assert np.ndim(got) == 0 and abs(got - spearmanr(a, b).statistic) < 1e-12
    assert metrics.spearman(np.arange(5.0), np.arange(5.0)) == 1.0
    for x, y in ((np.ones(3), np.ones(4)), (np.ones((2, 3)), np.ones((3, 2))), (1.0, 2.0)):
        with pytest.raises(InputError, match=r"^a, b: expected two arrays of one shape"):
            metrics.spearman(x, y)


def test_auc_of_lists_and_too_short_curves():
    np.testing.assert_allclose(metrics.auc([1.0, 0.5, 0.0]), 0.5)
    np.testing.assert_allclose(metrics.auc(np.array([[0.0, 1.0], [1.0, 1.0]])), [0.5, 1.0])
    for bad in ([1.0], 2.0):
        with pytest.raises(InputError, match=r"^curve: expected at least 2 samples along the last axis"):
            metrics.auc(bad)


def test_model_randomization_cascade(lin):
    params, x = lin
    r = metrics.model_randomization(linear, params, x, 0, method="saliency", return_maps=True)
    assert r.layers == ("b", "w")  # from the output down (dict order reversed for a plain callable)
    np.testing.assert_allclose(r.spearman[0], 1.0)  # the bias does not change a linear model's gradient
    assert np.all(np.abs(r.spearman[1]) < 0.5)  # a re-drawn weight matrix gives an unrelated map
    assert r.maps.shape == (2, 2, H, W, 3)


def test_randomize_redraws_with_each_arrays_scale():
    rng = np.random.RandomState(0)
    tree = {"kernel": jnp.asarray(3.0 * rng.randn(60, 50), jnp.float32), "bias": jnp.zeros(7)}
    a = metrics._randomize(tree, jax.random.key(1))
    b = metrics._randomize(tree, jax.random.key(2))
    assert a["kernel"].shape == (60, 50) and a["bias"].shape == (7,)
    np.testing.assert_allclose(np.std(np.asarray(a["kernel"])), np.std(np.asarray(tree["kernel"])), rtol=0.05)
    assert abs(np.corrcoef(np.ravel(a["kernel"]), np.ravel(tree["kernel"]))[0, 1]) < 0.1  # a fresh draw
    np.testing.assert_array_equal(a["bias"], 0.0)  # zero arrays stay zero
    assert not np.allclose(a["kernel"], b["kernel"])  # another key, another draw
    np.testing.assert_array_equal(a["kernel"], metrics._randomize(tree, jax.random.key(1))["kernel"])  # reproducible


def test_model_randomization_on_a_model_uses_layer_order():
    net, params = gapnet_params()
    x = jnp.asarray(np.random.RandomState(0).rand(2, 6, 8, 3), jnp.float32)
    key = jax.random.key(5)
    r = metrics.model_randomization(net, params, x, 2, method="grad_cam", options={"relu": False}, key=key,
                                    absolute=False, return_maps=True)
    assert r.layers == ("fc", "conv1") and r.spearman.shape == (2, 2)
    # cascading: step j re-draws layer j on top of the layers already re-drawn (layer j's draw from fold_in(key, j))
    p = params["params"]
    fc = metrics._randomize(p["fc"], jax.random.fold_in(key, 0))
    conv1 = metrics._randomize(p["conv1"], jax.random.fold_in(key, 1))
    step0 = {"params": {"conv1": p["conv1"], "fc": fc}}
    step1 = {"params": {"conv1": conv1, "fc": fc}}
    expect = [gapnet_closed_form(q, x, 2)["grad_cam"] for q in (step0, step1)]
    np.testing.assert_allclose(r.maps, np.stack(expect), rtol=1e-5, atol=1e-6)
    from scipy.stats import spearmanr

    original = gapnet_closed_form(params, x, 2)["grad_cam"]
    for j in range(2):
        for i in range(2):
            want = spearmanr(original[i].ravel(), expect[j][i].ravel()).statistic
            np.testing.assert_allclose(r.spearman[j, i], want, atol=1e-6)
    with pytest.raises(InputError, match=r"^layers: unknown parameter group 'fc9'"):
        metrics.model_randomization(net, params, x, 2, layers=["fc9"])


def test_metric_errors(lin):
    params, x = lin
    with pytest.raises(InputError, match=r"^attributions: expected shape \(2, 4, 5, 3\) or \(2, 4, 5\), got \(2, 4, 4\)"):
        metrics.deletion(linear, params, x, 0, jnp.zeros((2, 4, 4)))
    with pytest.raises(InputError, match=r"^attributions: expected shape \(2, 4, 5, 3\) or \(2, 4, 5\), got \(2, 4, 4\)$"):
        metrics.infidelity(linear, params, x, 0, jnp.zeros((2, 4, 4)))
    with pytest.raises(InputError, match=r"^method: expected one of"):
        metrics.max_sensitivity(linear, params, x, 0, method="lime")


# ------------------------------------------------------------------ meaning: a small CNN trained in the test


def _bright_square_data(rng, n, size=16, side=4):
    """Noisy backgrounds; label 1 images carry a bright square at a random position (mask returned)."""
    x = 0.4 * rng.rand(n, size, size, 3).astype(np.float32)
    y = rng.randint(0, 2, n)
    mask = np.zeros((n, size, size), bool)
    for k in np.nonzero(y)[0]:
        r, c = rng.randint(0, size - side + 1, 2)
        x[k, r:r + side, c:c + side] = 0.9 + 0.1 * rng.rand(side, side, 3)
        mask[k, r:r + side, c:c + side] = True
    return x, y, mask


def test_trained_cnn_attributions_fall_on_the_object_and_fail_randomisation():
    import flax.linen as nn
    import optax

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
            x = nn.relu(nn.Conv(8, (3, 3), name="conv2")(x))
            return nn.Dense(2, name="fc")(jnp.mean(x, axis=(1, 2)))

    model = Tiny()
    f = lambda p, x: model.apply(p, x)  # noqa: E731  (a plain callable: the generic code path)
    rng = np.random.RandomState(0)
    params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    opt = optax.sgd(0.05, momentum=0.9)
    state = opt.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, g = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(f(p, x), y).mean())(params)
        upd, state = opt.update(g, state)
        return optax.apply_updates(params, upd), state, loss

    for _ in range(150):
        x, y, _ = _bright_square_data(rng, 32)
        params, state, loss = step(params, state, jnp.asarray(x), jnp.asarray(y))
    x, y, mask = _bright_square_data(np.random.RandomState(1), 64)
    acc = float(jnp.mean(jnp.argmax(f(params, jnp.asarray(x)), -1) == y))
    assert acc > 0.9, acc
    pos = y == 1
    xs, ms = jnp.asarray(x[pos][:8]), mask[pos][:8]
    area = ms.mean()  # 1/16 of the image
    sal = np.asarray(A.saliency(f, params, xs, 1)).sum(-1)
    occ = np.asarray(A.occlusion(f, params, xs, 1, window=4, stride=2, baseline=0.2))[..., 0]
    for heat in (sal, np.maximum(occ, 0)):
        on_object = (heat * ms).sum((1, 2)) / heat.sum((1, 2))
        assert np.all(on_object > 3 * area), on_object  # far more mass than the object's share of pixels
    r = metrics.model_randomization(f, params, xs, 1, method="saliency")
    assert r.layers == ("fc", "conv2", "conv1")
    assert r.spearman[-1].mean() < 0.5  # the fully randomised model's maps no longer rank pixels like the trained one
    assert r.spearman[-1].mean() < r.spearman[0].mean() + 0.2
