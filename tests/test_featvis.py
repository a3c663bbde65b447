"""Feature maps, filters and activation maximisation (objectives, parameterisations, transforms)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxviz import models, viz, weights
from jaxviz.errors import InputError
from jaxviz.featvis import maps
from jaxviz.featvis import render as R

NET = models.VGG(stages=((8,), (16,)), fc_features=32, num_classes=10, pool_output=(2, 2))


def _uniform(seed, *shape):
    """Test data from NumPy (a jax.random draw of a new shape costs a compilation)."""
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)



@pytest.fixture(scope="module")
def params():
    return weights.random(NET, seed=0)


# =========================================================================== maps and filters


def test_feature_maps_are_the_tap_and_the_grid_puts_the_strongest_channel_first(params):
    x = _uniform(0, 2, 32, 32, 3)
    fm = maps.feature_maps(NET, params, x, "relu2_1")
    np.testing.assert_array_equal(fm, NET.apply(params, x, taps=("relu2_1",))["relu2_1"])
    m = np.zeros((4, 5, 3), np.float32)
    m[..., 0] = np.arange(20).reshape(4, 5) / 100  # weak, a ramp
    m[..., 2] = np.arange(20).reshape(4, 5)  # strongest, same ramp
    pic = maps.feature_map_grid(m, order="mean", min_tile=1, pad=1, ncols=3)
    ramp = viz.colormap(np.arange(20).reshape(4, 5) / 19, "viridis")
    np.testing.assert_allclose(pic[1:5, 1:6], ramp, atol=1e-6)  # channel 2 first
    np.testing.assert_allclose(pic[1:5, 7:12], ramp, atol=1e-6)  # then channel 0
    np.testing.assert_allclose(pic[1:5, 13:18], viz.colormap(np.zeros((4, 5)), "viridis"), atol=1e-6)  # constant
    explicit = maps.feature_map_grid(m, order=[1, 2], min_tile=1, pad=1)
    np.testing.assert_allclose(explicit[1:5, 7:12], ramp, atol=1e-6)
    assert maps.feature_map_grid(m, min_tile=20, pad=0, ncols=3).shape == (16, 60, 3)  # 4x5 maps enlarged x4
    # by default the tile depends on the map: 8 px per cell for small maps, at least 48 px, at most 128
    for side, tile in ((5, 50), (7, 56), (15, 120), (28, 140), (128, 128), (200, 200)):
        one = np.random.default_rng(side).uniform(size=(side, side, 1)).astype(np.float32)
        assert maps.feature_map_grid(one, pad=0).shape == (tile, tile, 3), side
    # labels: each tile's channel index in its corner ("input" on the image), in the order drawn
    big = maps.feature_map_grid(m, order="mean", min_tile=40, pad=0, ncols=4, labels=True, image=np.ones((8, 10, 3)))
    plain = maps.feature_map_grid(m, order="mean", min_tile=40, pad=0, ncols=4, image=np.ones((8, 10, 3)))
    tiles = [plain[:, 40 * i:40 * (i + 1)] for i in range(4)]  # 4x5 maps enlarged x8
    for i, text in enumerate(["input", "2", "0", "1"]):
        np.testing.assert_array_equal(big[:, 40 * i:40 * (i + 1)], viz.label(tiles[i], text))


def test_first_layer_filters_as_rgb_tiles_grey_at_zero(params):
    k = maps.filters(params, "conv1_1")
    kernel = np.asarray(params["params"]["conv1_1"]["kernel"])
    assert k.shape == (8, 3, 3, 3)
    np.testing.assert_array_equal(k[5], kernel[..., 5])
    pic = maps.filter_grid(params, tile=3, pad=1, ncols=4)
    assert pic.shape == (2 * 3 + 3, 4 * 3 + 5, 3)
    np.testing.assert_allclose(pic[1:4, 1:4], 0.5 + 0.5 * k[0] / np.abs(k).max(), atol=1e-6)
    # deeper kernels: the input-channel mean through RdBu_r, 0.5 (white) at zero, the largest |mean| at an end
    from matplotlib import colormaps

    deeper = maps.filter_grid(params, "conv2_1", tile=6)
    m = maps.filters(params, "conv2_1").mean(-1)
    assert deeper.shape == (2 + 4 * 8, 2 + 4 * 8, 3)  # 16 kernels of 3x3 enlarged to 6x6, 4 per row
    for i in (0, 7, 15):
        r, c = 2 + 8 * (i // 4), 2 + 8 * (i % 4)
        want = colormaps["RdBu_r"](0.5 + 0.5 * m[i] / np.abs(m).max())[..., :3]
        np.testing.assert_allclose(deeper[r:r + 6:2, c:c + 6:2], want, atol=1e-6)
    # the gaps: white around RGB kernels (zero is grey there), dark grey around these (zero is white)
    assert (pic[0] == 1).all() and (deeper[0] == 0.25).all() and (deeper[2:8, 8:10] == 0.25).all()
    with pytest.raises(InputError, match=r"^layer: expected a convolution in params \(conv1_1, conv2_1\), got 'conv7_1'"):
        maps.filters(params, "conv7_1")


# =========================================================================== objectives


def _acts():
    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5) / 10
    return {"l": jnp.asarray(a), "fc": jnp.asarray(a[:, 0, 0, :]), "logits": jnp.asarray(a[:, 1, 1, :])}, a


def test_objectives_by_hand():
    acts, a = _acts()
    np.testing.assert_allclose(R.channel("l", 2)(acts), a[..., 2].mean((1, 2)).sum(), rtol=1e-6)
    np.testing.assert_allclose(R.channel("l", 2, batch=1)(acts), a[1, ..., 2].mean(), rtol=1e-6)
    np.testing.assert_allclose(R.channel("fc", 3)(acts), a[:, 0, 0, 3].sum(), rtol=1e-6)
    np.testing.assert_allclose(R.neuron("l", 4)(acts), a[:, 1, 2, 4].sum(), rtol=1e-6)  # centre of 3x4
    np.testing.assert_allclose(R.neuron("l", 4, y=0, x=3, batch=0)(acts), a[0, 0, 3, 4], rtol=1e-6)
    np.testing.assert_allclose(R.class_logit(1)(acts), a[:, 1, 1, 1].sum(), rtol=1e-6)
    v = np.array([1.0, 0, 2.0, 0, -2.0], np.float32)
    np.testing.assert_allclose(R.direction("l", v)(acts), (a @ (v / 3)).mean((1, 2)).sum(), rtol=1e-6)
    combo = R.channel("l", 0) + 2 * R.channel("l", 1) - R.neuron("l", 3) / 4
    want = a[..., 0].mean((1, 2)).sum() + 2 * a[..., 1].mean((1, 2)).sum() - a[:, 1, 2, 3].sum() / 4
    np.testing.assert_allclose(combo(acts), want, rtol=1e-6)
    assert set(combo.layers) == {"l"}
    np.testing.assert_allclose(sum([R.channel("l", 0), R.channel("fc", 1)])(acts),
                               a[..., 0].mean((1, 2)).sum() + a[:, 0, 0, 1].sum(), rtol=1e-6)


def test_diversity_is_minus_mean_gram_cosine_similarity_and_penalties():
    e = np.zeros((3, 2, 2, 2), np.float32)
    e[0, ..., 0] = 1  # gram diag(4, 0)
    e[1, ..., 0] = 2  # same direction as image 0
    e[2, ..., 1] = 1  # orthogonal gram
    # pairs (0,1) and (1,0) have cosine 1, the rest 0: -(2) / 3
    np.testing.assert_allclose(R.diversity("l")({"l": jnp.asarray(e)}), -2 / 3, rtol=1e-6)
    np.testing.assert_allclose(R.diversity("l")({"l": jnp.asarray(e[:1])}), 0.0, atol=1e-7)
    x = np.zeros((1, 3, 3, 3), np.float32)
    x[0, 1, 1] = 1.0
    # |dy|: 2 of 18 differences are 1 in each channel ... mean over (1, 2, 3, 3) = 6 / 18
    np.testing.assert_allclose(R.total_variation()({"input": jnp.asarray(x)}), 6 / 18 + 6 / 18, rtol=1e-6)
    np.testing.assert_allclose(R.l2()({"input": jnp.asarray(x)}), (3 * 0.25 + 24 * 0.25) / 27, rtol=1e-6)


def test_objectives_are_pytrees_whose_structure_ignores_the_index():
    a, b = R.channel("l", 3), R.channel("l", 4)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(R.channel("m", 3))
    acts, arr = _acts()
    traced = jax.jit(lambda o: o(acts))(b)
    np.testing.assert_allclose(traced, arr[..., 4].mean((1, 2)).sum(), rtol=1e-6)


def test_objective_errors():
    with pytest.raises(InputError, match=r"^layer: expected a layer name \(str\), got 3"):
        R.channel(3, 0)
    with pytest.raises(InputError, match=r"^channel: expected an integer index, got 1.5"):
        R.channel("l", 1.5)
    with pytest.raises(InputError, match=r"^vector: expected shape \(C,\), got \(2, 2\)"):
        R.direction("l", np.ones((2, 2)))
    with pytest.raises(InputError, match=r"^batch: expected None or a non-negative int"):
        R.channel("l", 0, batch=-1)
    with pytest.raises(TypeError, match=r"unsupported operand type\(s\) for \+: 'Objective' and 'float'"):
        R.channel("l", 0) + 1.0  # objectives add objectives; a constant would not change the optimum


# =========================================================================== parameterisations, transforms


def test_parameterisations_give_images_in_unit_range_of_the_right_size():
    for p, hw in ((R.pixel(), (16, 16)), (R.fourier(), (15, 22)), (R.fourier(decay_power=1.5, decorrelate=False), (16, 9))):
        v = p.init(jax.random.key(0), 2, hw)
        np.testing.assert_array_equal(v, p.init(jax.random.key(0), 2, hw))  # a function of the key
        assert not np.array_equal(v, p.init(jax.random.key(1), 2, hw))
        np.testing.assert_allclose(np.std(v), 0.01, rtol=0.2)
        img = jax.jit(lambda v: p.image(v, hw))(v)
        assert img.shape == (2,) + hw + (3,)
        assert float(img.min()) > 0 and float(img.max()) < 1 and float(img.std()) > 1e-4
    # zero variables: grey
    np.testing.assert_allclose(R.fourier().image(jnp.zeros((1, 3, 8, 5, 2)), (8, 8)), 0.5, atol=1e-7)
    # the colour basis: an image constant t in the decorrelated basis is sigmoid(t @ M.T)
    t = jnp.ones((1, 2, 2, 3)) * jnp.array([0.3, -0.2, 0.1])
    m = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    m = m / np.linalg.norm(m, axis=0).max()
    np.testing.assert_allclose(R.pixel().image(t, (2, 2))[0, 0, 0], jax.nn.sigmoid(m @ np.array([0.3, -0.2, 0.1])),
                               rtol=1e-5)


def test_transforms_by_hand():
    x = _uniform(1, 2, 9, 9, 3)
    key = jax.random.key(2)
    affine = jax.jit(R.transforms._affine)  # one program for every zoom and angle
    np.testing.assert_allclose(affine(x, 1.0, 0.0), x, atol=1e-6)
    rot = affine(x, 1.0, np.pi / 2)
    assert any(np.allclose(rot, np.rot90(x, k, axes=(1, 2)), atol=1e-5) for k in (1, 3))
    zoom = affine(x, 2.0, 0.0)  # the centre pixel stays, neighbours spread out
    np.testing.assert_allclose(zoom[:, 4, 4], x[:, 4, 4], atol=1e-6)
    np.testing.assert_allclose(zoom[:, 4, 6], x[:, 4, 5], atol=1e-6)
    np.testing.assert_allclose(zoom[:, 4, 5], (x[:, 4, 4] + x[:, 4, 5]) / 2, atol=1e-6)
    # the random transforms pick uniformly from their lists
    scales = [float(R.RandomScale((0.5, 1.0, 2.0)).sample(jnp.array([u, 0.0]))[0]) for u in (0.0, 0.4, 0.99)]
    assert scales == [0.5, 1.0, 2.0]
    angle = float(R.RandomRotate((-10.0, 10.0)).sample(jnp.array([0.7, 0.0]))[1])
    np.testing.assert_allclose(angle, np.pi / 18, rtol=1e-6)
    padded = R.Pad(2, 0.25).apply(None, x)
    assert padded.shape == (2, 13, 13, 3) and float(padded[0, 0, 0, 0]) == 0.25
    jitter = jax.jit(jax.vmap(R.Jitter(3), in_axes=(0, None)))
    crops = np.asarray(jitter(jax.random.split(key, 20), x))
    assert crops.shape == (20, 2, 6, 6, 3)
    windows = {(a, b): np.asarray(x[:, a:a + 6, b:b + 6]) for a in range(4) for b in range(4)}
    offsets = [next(ab for ab, w in windows.items() if np.array_equal(c, w)) for c in crops]
    assert len(set(offsets)) > 5
    u = jax.random.uniform(key, (4, 2))
    comp = R.Compose((R.Jitter(3), R.Compose((R.Jitter(2),)), R.RandomScale((2.0,)), R.RandomRotate((90.0,))))
    assert comp.transforms[:2] == (R.Jitter(3), R.Jitter(2))  # nested: flattened
    # consecutive zoom and rotation are resampled once, as one similarity transform
    want = affine(R.Jitter(2).apply(u[1], R.Jitter(3).apply(u[0], x)), 2.0, np.pi / 2)
    np.testing.assert_allclose(jax.jit(comp)(key, x), want, atol=1e-6)


def test_redirected_relu_gradient():
    x = jnp.array([[-1.0, -2.0, 3.0]])
    np.testing.assert_array_equal(R.redirected_relu(x), jax.nn.relu(x))
    # some unit alive: the ordinary ReLU gradient
    g = jax.grad(lambda z: jnp.sum(R.redirected_relu(z) * jnp.array([1.0, 1.0, 1.0])))(x)
    np.testing.assert_array_equal(g, [[0.0, 0.0, 1.0]])
    # all dead: pass the cotangent where it pushes the pre-activation up (negative loss gradient)
    dead = jnp.array([[-1.0, -2.0, -3.0]])
    g = jax.grad(lambda z: jnp.sum(R.redirected_relu(z) * jnp.array([-1.0, 2.0, -3.0])))(dead)
    np.testing.assert_array_equal(g, [[-1.0, 0.0, -3.0]])


# =========================================================================== rendering


def _linear_net():
    """conv1_1 (one channel) on raw pixels: an objective linear in the image."""
    net = models.VGG(stages=((1,),), classifier=False, normalize=False)
    k = _normal(3, 3, 3, 3, 1) * 0.3
    return net, {"params": {"conv1_1": {"kernel": k, "bias": jnp.zeros((1,))}}}


@pytest.mark.parametrize("param", [R.pixel(decorrelate=False), R.fourier()], ids=["pixel", "fourier-decorrelated"])
def test_activation_maximisation_finds_the_analytic_maximiser(param):
    # maximise mean(conv(x)) - lam * mean((x - 0.5)^2): concave, maximiser x* = 0.5 + G n / (2 lam)
    # with G = d mean(conv(x)) / dx (a constant: the objective's linear part) and n = pixels * 3
    net, p = _linear_net()
    lam, hw = 8.0, (10, 12)
    obj = R.channel("conv1_1", 0) - lam * R.l2()
    G = jax.grad(lambda x: net.apply(p, x, taps=("conv1_1",))["conv1_1"].mean())(jnp.zeros((1,) + hw + (3,)))
    want = 0.5 + G * (hw[0] * hw[1] * 3) / (2 * lam)
    assert 0.05 < float(want.min()) and float(want.max()) < 0.95  # interior: reachable through the sigmoid
    img, hist = R.render(net, p, obj, key=jax.random.key(4), size=hw, steps=1000, param=param, transforms=None,
                         learning_rate=0.1, return_history=True)
    np.testing.assert_allclose(img, want, atol=2e-3)
    best = float(obj({"conv1_1": net.apply(p, want, taps=("conv1_1",))["conv1_1"], "input": want}))
    np.testing.assert_allclose(float(hist[-1]), best, atol=1e-4)


def test_render_on_random_vgg_drives_each_channel_far_above_noise(params):
    n, size = 6, 40
    imgs = R.render_channels(NET, params, "relu2_1", list(range(n)), key=jax.random.key(5), size=size, steps=64,
                             transforms=R.standard_transforms(0.4))
    assert imgs.shape == (n, size, size, 3)
    got = np.asarray(NET.apply(params, imgs, taps=("relu2_1",))["relu2_1"].mean((1, 2)))[np.arange(n), np.arange(n)]
    noise = _uniform(6, 16, size, size, 3)  # uniform noise: the most contrast there is
    on_noise = np.asarray(NET.apply(params, noise, taps=("relu2_1",))["relu2_1"].mean((1, 2)))[:, :n]
    assert np.all(got > on_noise.max(0)), (got, on_noise.max(0))  # above the best of 16 noise images
    assert np.median(got / on_noise.mean(0)) > 5.0, got / on_noise.mean(0)


def test_render_each_equals_a_loop_of_renders_and_compiles_once(params):
    kw = dict(size=32, steps=6, transforms=None, param=R.fourier())
    key = jax.random.key(7)
    batch = R.render_channels(NET, params, "relu2_1", [1, 4, 9], key=key, **kw)
    keys = jax.random.split(key, 3)
    for i, c in enumerate([1, 4, 9]):
        single = R.render(NET, params, R.channel("relu2_1", c), key=keys[i], **kw)
        np.testing.assert_allclose(batch[i], single[0], atol=1e-5)
    # with lucid's random transforms too: instance i draws render's transforms from keys[i]
    std = dict(kw, transforms=R.standard_transforms())
    batch_std = R.render_channels(NET, params, "relu2_1", [1, 4], key=key, **std)
    keys2 = jax.random.split(key, 2)
    single = R.render(NET, params, R.channel("relu2_1", 4), key=keys2[1], **std)
    np.testing.assert_allclose(batch_std[1], single[0], atol=1e-5)
    size = R.loop._run_each._cache_size()
    R.render_channels(NET, params, "relu2_1", [0, 2, 3], key=jax.random.key(8), **kw)
    assert R.loop._run_each._cache_size() == size  # other channels, other key: no re-trace
    size = R.loop._run._cache_size()
    R.render(NET, params, R.channel("relu2_1", 5), key=keys[0], **kw)
    assert R.loop._run._cache_size() == size


def test_render_each_takes_a_plain_list_of_values_as_the_array():
    net = models.VGG(stages=((2,),), classifier=False, normalize=False)
    p = {"params": {"conv1_1": {"kernel": _normal(3, 3, 3, 3, 2) * 0.3, "bias": jnp.zeros((2,))}}}
    kw = dict(key=jax.random.key(3), size=8, steps=2, param=R.pixel(), transforms=None)
    make = lambda c: R.channel("conv1_1", c)  # noqa: E731
    from_list = R.render_each(net, p, make, [0, 1], **kw)
    from_array = R.render_each(net, p, make, np.array([0, 1]), **kw)
    assert from_list.shape[0] == 2
    np.testing.assert_array_equal(from_list, from_array)
    assert not np.allclose(from_list[0], from_list[1])  # two objectives, two pictures


def test_split_runs_equal_one_run():
    net, p = _linear_net()
    obj, kw = R.channel("conv1_1", 0), dict(size=8, param=R.pixel(), transforms=R.Jitter(2))
    key = jax.random.key(9)
    state = R.render_init(key, size=8, param=R.pixel())
    one, h1 = R.render_update(net, p, obj, state, key, steps=6, **kw)
    half, h2 = R.render_update(net, p, obj, state, key, steps=3, **kw)
    two, h3 = R.render_update(net, p, obj, half, key, steps=3, **kw)
    np.testing.assert_allclose(two.variables, one.variables, atol=1e-6)
    np.testing.assert_allclose(jnp.concatenate([h2, h3]), h1, atol=1e-6)
    assert int(two.step) == 6


def test_host_loop_and_scan_give_the_same_render():
    net, p = _linear_net()
    kw = dict(key=jax.random.key(10), size=12, steps=5, param=R.pixel(), transforms=R.Compose((R.Pad(2), R.Jitter(3))),
              return_history=True)
    a, ha = R.render(net, p, R.channel("conv1_1", 0), loop="host", **kw)
    b, hb = R.render(net, p, R.channel("conv1_1", 0), loop="scan", **kw)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(ha, hb, atol=1e-6)
    assert R.host_loop("host") and not R.host_loop("scan")
    assert R.host_loop("auto") == (jax.default_backend() == "cpu")
    with pytest.raises(InputError, match=r"^loop: expected one of 'auto', 'scan', 'host'; got 'fast'"):
        R.host_loop("fast")


def test_render_inside_jit_and_vmap_equals_eager():
    net, p = _linear_net()
    obj = R.channel("conv1_1", 0)
    kw = dict(size=12, steps=4, param=R.fourier(), transforms=R.Jitter(2))
    keys = jax.random.split(jax.random.key(11), 2)
    eager = jnp.stack([R.render(net, p, obj, key=k, **kw) for k in keys])
    by_key = jax.jit(lambda k: R.render(net, p, obj, key=k, **kw))
    np.testing.assert_allclose(by_key(keys[1]), eager[1], atol=1e-5)  # the initial draw is the key's, traced or not
    by_params = jax.jit(lambda q: R.render(net, q, obj, key=keys[0], **kw))
    np.testing.assert_allclose(by_params(p), eager[0], atol=1e-5)
    np.testing.assert_allclose(jax.vmap(lambda k: R.render(net, p, obj, key=k, **kw))(keys), eager, atol=1e-5)
    # traced, "auto" runs the steps in one scan instead of unrolling a host loop into the program
    assert "scan[" in str(jax.make_jaxpr(lambda k: R.render(net, p, obj, key=k, **kw))(keys[0]))
    assert "scan[" not in str(jax.make_jaxpr(lambda k: R.render(net, p, obj, key=k, loop="host", **kw))(keys[0]))


def test_render_errors(params):
    with pytest.raises(InputError, match=r"^objective: unknown layer 'relu4_2'"):
        R.render(NET, params, R.channel("relu4_2", 0), key=jax.random.key(0), steps=1)
    with pytest.raises(InputError, match=r"^objective: expected an Objective"):
        R.render(NET, params, "relu2_1", key=jax.random.key(0), steps=1)
    with pytest.raises(InputError, match=r"^size: expected an int or \(height, width\), got 'big'"):
        R.render(NET, params, R.channel("relu2_1", 0), key=jax.random.key(0), size="big")
    with pytest.raises(InputError, match=r"^optimizer: expected an optax.GradientTransformation, got str"):
        R.render(NET, params, R.channel("relu2_1", 0), key=jax.random.key(0), optimizer="adam")
    with pytest.raises(InputError, match=r"^channels: relu2_1 has 16 channels \(0-15\), got 16$"):
        R.render_channels(NET, params, "relu2_1", [3, 16], key=jax.random.key(0))
    assert isinstance(R.loop._optimizer(optax.sgd(0.1), 0.05), optax.GradientTransformation)
    for bad in (0, -0.1, "0.1", True, float("nan")):
        with pytest.raises(InputError, match=r"^learning_rate: expected a positive number, got "):
            R.render(NET, params, R.channel("relu2_1", 0), key=jax.random.key(0), steps=1, learning_rate=bad)


def test_render_takes_a_numpy_learning_rate(params):
    kw = dict(key=jax.random.key(2), size=24, steps=3, transforms=None)
    got = R.render(NET, params, R.channel("relu2_1", 1), learning_rate=np.float32(0.25), **kw)
    np.testing.assert_array_equal(got, R.render(NET, params, R.channel("relu2_1", 1), learning_rate=0.25, **kw))
    assert not np.array_equal(got, R.render(NET, params, R.channel("relu2_1", 1), learning_rate=0.05, **kw))
