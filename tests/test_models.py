"""VGG16/VGG19: names, parity with a torch.nn reference of torchvision's VGG, taps, seams, options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import models, weights
from jaxviz.errors import InputError

torch = pytest.importorskip("torch")
import torch_reference as tr  # noqa: E402


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_layer_names_follow_the_style_transfer_literature():
    v19 = models.vgg19().layers
    assert v19[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert sum(n.startswith("conv") for n in v19) == 16
    assert sum(n.startswith("conv") for n in models.vgg16().layers) == 13
    assert v19[-7:] == ("pool5", "avgpool", "fc6", "relu6", "fc7", "relu7", "fc8")
    assert {"relu4_2", "conv5_4", "pool3", "fc7"} <= set(v19)
    assert "conv5_4" not in models.vgg16().layers
    assert models.vgg19(classifier=False).layers[-1] == "pool5"


@pytest.mark.parametrize(
    "arch,shape", [("vgg19", (2, 224, 224, 3)), ("vgg16", (1, 100, 132, 3))], ids=["vgg19-224", "vgg16-100x132"]
)
def test_parity_with_torchvision_layout_reference_every_tap(arch, shape):
    ref = tr.make(arch, seed=1)
    net = models.get(arch)
    params = weights.from_torchvision(ref.state_dict(), arch)
    x = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        ours = net.apply(params, x, taps=net.layers + ("logits",))
    with torch.no_grad():
        theirs = ref.taps(tr.to_nchw(x))
        logits = ref(tr.to_nchw(x))
    assert set(theirs) == set(net.layers)
    for name, t in theirs.items():
        assert ours[name].shape == tr.to_nhwc(t).shape, name
        assert rel(ours[name], tr.to_nhwc(t)) < 1e-4, name
    assert rel(ours["logits"], logits.numpy()) < 1e-4


@pytest.mark.parametrize("size", [(7, 7), (9, 7), (13, 10), (3, 1), (1, 1), (16, 14)])
def test_adaptive_pool_matches_torch_bin_edges(size):
    x = np.random.default_rng(1).normal(size=(2, *size, 5)).astype(np.float32)
    ours = models.adaptive_avg_pool(jnp.asarray(x), (7, 7))
    theirs = torch.nn.AdaptiveAvgPool2d((7, 7))(tr.to_nchw(x))
    np.testing.assert_allclose(ours, tr.to_nhwc(theirs), rtol=1e-6, atol=1e-6)


TINY = dict(stages=((8,), (16, 16)), fc_features=32, num_classes=10, pool_output=(2, 2))


@pytest.fixture(scope="module")
def tiny():
    net = models.VGG(**TINY)
    return net, weights.random(net, seed=3)


def test_avg_pooling_matches_torch_avgpool():
    ref = tr.make(TINY["stages"], seed=2, num_classes=10, fc_features=32, pool_output=(2, 2), pooling="avg")
    net = models.VGG(**TINY, pooling="avg")
    params = weights.from_torchvision(ref.state_dict(), net)
    x = np.random.default_rng(0).uniform(size=(2, 36, 40, 3)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        ours = net.apply(params, x)
    with torch.no_grad():
        theirs = ref(tr.to_nchw(x)).numpy()
    assert rel(ours, theirs) < 1e-5


def _ops(fn, *args):
    return [e.primitive.name for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns]


def test_taps_stop_at_the_deepest_requested_layer(tiny):
    net, params = tiny
    x = jnp.full((1, 32, 32, 3), 0.5)
    ops = _ops(lambda x: net.apply(params, x, taps="relu1_1"), x)
    assert ops.count("conv_general_dilated") == 1 and "dot_general" not in ops
    ops_all = _ops(lambda x: net.apply(params, x), x)
    assert ops_all.count("conv_general_dilated") == 3 and ops_all.count("dot_general") == 3 + 2  # fc6-8 and the adaptive pool (8x8 -> 2x2)
    # params of later layers are not even needed
    only_first = {"params": {"conv1_1": params["params"]["conv1_1"]}}
    out = net.apply(only_first, x, taps=("relu1_1", "conv1_1"))
    np.testing.assert_allclose(out["relu1_1"], jnp.maximum(out["conv1_1"], 0))


def test_taps_dict_keys_as_given_and_aliases(tiny):
    net, params = tiny
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    out = net.apply(params, x, taps=("logits", "fc8", "pool1"))
    assert list(out) == ["logits", "fc8", "pool1"]
    np.testing.assert_array_equal(out["logits"], out["fc8"])
    np.testing.assert_allclose(out["logits"], net.apply(params, x), rtol=1e-6)
    assert out["pool1"].shape == (2, 16, 16, 8)


def test_jit_equals_eager(tiny):
    net, params = tiny
    x = jax.random.uniform(jax.random.key(1), (3, 40, 36, 3))
    eager = net.apply(params, x, taps=("relu2_2", "logits"))
    jitted = jax.jit(lambda p, x: net.apply(p, x, taps=("relu2_2", "logits")))(params, x)
    for k in eager:
        np.testing.assert_allclose(eager[k], jitted[k], rtol=1e-5, atol=1e-6)


def test_start_enters_the_network_after_a_tap(tiny):
    net, params = tiny
    x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
    taps = net.apply(params, x, taps=("pool1", "avgpool", "relu2_1", "logits"))
    np.testing.assert_allclose(net.apply(params, taps["pool1"], start="pool1"), taps["logits"], rtol=1e-5)
    np.testing.assert_allclose(net.apply(params, taps["avgpool"], start="avgpool"), taps["logits"], rtol=1e-5)
    # gradient w.r.t. a layer's activation, the Grad-CAM seam
    g = jax.grad(lambda a: net.apply(params, a, start="relu2_1")[:, 3].sum())(taps["relu2_1"])
    assert g.shape == taps["relu2_1"].shape and float(jnp.abs(g).sum()) > 0
    # chain rule: pulled back through the layers before the tap, it is the input gradient of the whole network
    _, pull = jax.vjp(lambda v: net.apply(params, v, taps=("relu2_1",))["relu2_1"], x)
    whole = jax.grad(lambda v: net.apply(params, v)[:, 3].sum())(x)
    np.testing.assert_allclose(pull(g)[0], whole, rtol=1e-4, atol=1e-6 * float(jnp.abs(whole).max()))


def test_relu_seam_replaces_every_relu(tiny):
    net, params = tiny
    x = jax.random.uniform(jax.random.key(3), (1, 32, 32, 3))
    calls = []

    def leaky(v):
        calls.append(v.shape)
        return jax.nn.leaky_relu(v, 0.1)

    out = net.apply(params, x, taps=("conv1_1", "relu1_1"), relu=leaky)
    np.testing.assert_allclose(out["relu1_1"], jax.nn.leaky_relu(out["conv1_1"], 0.1), rtol=1e-6)
    net.apply(params, x, relu=leaky)
    # 3 conv ReLUs + relu6 + relu7 (+ the 1 from the taps call above)
    assert len(calls) == 1 + 5
    same = net.clone(relu=leaky).apply(params, x)
    np.testing.assert_allclose(same, net.apply(params, x, relu=leaky), rtol=1e-6)


def test_normalize_switch(tiny):
    net, params = tiny
    x = jax.random.uniform(jax.random.key(4), (1, 32, 32, 3))
    mean, std = jnp.asarray(models.IMAGENET_MEAN), jnp.asarray(models.IMAGENET_STD)
    raw = net.clone(normalize=False).apply(params, (x - mean) / std)
    np.testing.assert_allclose(raw, net.apply(params, x), rtol=1e-5, atol=1e-6)


def test_train_drops_classifier_units_only(tiny):
    net, params = tiny
    x = jax.random.uniform(jax.random.key(5), (4, 32, 32, 3))
    taps = ("relu2_2", "relu6", "relu7")
    ev = net.apply(params, x, taps=taps)
    tr_ = net.apply(params, x, taps=taps, train=True, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(tr_["relu2_2"], ev["relu2_2"])  # no dropout in the features
    # relu6: each unit kept and scaled by 1 / (1 - 0.5), or zeroed (torchvision's p=0.5)
    kept = np.asarray(tr_["relu6"]) != 0
    np.testing.assert_allclose(np.asarray(tr_["relu6"])[kept], 2 * np.asarray(ev["relu6"])[kept], rtol=1e-6)
    live = np.asarray(ev["relu6"]) > 0
    assert 0.25 < kept[live].mean() < 0.75, kept[live].mean()
    with pytest.raises(InputError, match=r"^train: dropout needs a PRNG key; call apply\(params, x, train=True, "
                                         r"rngs=\{'dropout': key\}\)"):
        net.apply(params, x, train=True)
    no_drop = net.clone(dropout_rate=0.0)
    np.testing.assert_allclose(no_drop.apply(params, x, train=True), net.apply(params, x), rtol=1e-6)


def test_bfloat16_compute_keeps_float32_params(tiny):
    net, params = tiny
    x = jax.random.uniform(jax.random.key(5), (2, 32, 32, 3))
    bf = net.clone(dtype=jnp.bfloat16)
    out = bf.apply(params, x, taps=("relu2_2",))["relu2_2"]
    assert out.dtype == jnp.bfloat16
    ref = net.apply(params, x, taps=("relu2_2",))["relu2_2"]
    assert rel(out.astype(jnp.float32), ref) < 3e-2
    init = jax.eval_shape(bf.init, jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(init))


def test_random_init_matches_flax_init_structure(tiny):
    net, params = tiny
    init = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    shapes = jax.tree.map(lambda a: a.shape, init)
    assert shapes == jax.tree.map(lambda a: a.shape, params)


@pytest.mark.parametrize(
    "x,kw,message",
    [
        (np.zeros((32, 32, 3), np.float32), {}, r"images: expected shape \(N, H, W, 3\), got \(32, 32, 3\) \(add a batch axis"),
        (np.zeros((1, 32, 32, 4), np.float32), {}, r"images: expected shape \(N, H, W, 3\), got \(1, 32, 32, 4\)"),
        (np.zeros((1, 32, 32, 3), np.uint8), {}, r"images: expected a floating dtype with values in \[0, 1\], got uint8"),
        (np.zeros((1, 2, 32, 3), np.float32), {}, r"images: expected height and width >= 4, got 2x32"),
        (np.zeros((1, 32, 32, 3), np.float32), {"taps": "relu9_9"}, r"taps: unknown layer 'relu9_9'; this network has conv1_1"),
        (np.zeros((1, 32, 32, 3), np.float32), {"taps": ()}, r"taps: expected at least one layer name"),
        (np.zeros((1, 32, 32, 3), np.float32), {"taps": [3]}, r"taps: expected layer names \(str\), got 3"),
        (np.zeros((1, 8, 8, 16), np.float32), {"start": "pool2", "taps": "pool1"}, r"taps: every tap must come after start='pool2'"),
        (np.zeros((1, 8, 8, 16), np.float32), {"start": "nope"}, r"start: unknown layer 'nope'"),
    ],
)
def test_bad_input_is_refused_with_a_precise_message(tiny, x, kw, message):
    net, params = tiny
    with pytest.raises(InputError, match=message):
        net.apply(params, x, **kw)


def test_unknown_arch_and_pooling():
    with pytest.raises(InputError, match=r"arch: expected one of 'vgg16', 'vgg19', 'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152'; "
                                        r"got 'vgg11'"):
        models.get("vgg11")
    net = models.VGG(**TINY, pooling="median")
    with pytest.raises(InputError, match=r"pooling: expected 'max' or 'avg', got 'median'"):
        net.apply(weights.random(models.VGG(**TINY)), jnp.zeros((1, 32, 32, 3)))


def test_flipped_conv_grad_gives_the_same_gradients_inside_loops_too(tiny):
    net, params = tiny
    flipped = net.clone(conv_grad="flipped")
    x = jax.random.uniform(jax.random.key(6), (2, 32, 32, 3))

    def score(n, p, x):
        return jnp.sum(n.apply(p, x) ** 2)

    g_jax = jax.grad(score, argnums=(1, 2))(net, params, x)
    g_flip = jax.grad(score, argnums=(1, 2))(flipped, params, x)
    for a, b in zip(jax.tree.leaves(g_jax), jax.tree.leaves(g_flip)):  # input and every weight gradient
        np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(g_flip[1]).max()) > 0

    def descend(n):  # a gradient step inside a while loop, where the two forms reach XLA differently
        step = lambda i, v: v - 1e-3 * jax.grad(lambda u: score(n, params, u))(v)  # noqa: E731
        return jax.jit(lambda v: jax.lax.fori_loop(0, 3, step, v))(x)

    np.testing.assert_allclose(descend(flipped), descend(net), rtol=1e-6, atol=1e-7)
    # "auto": small maps' input gradients as matrix products on the CPU (this net's maps are all small), equal
    # to round-off (another summation order), weight gradients included, which flow through those
    auto = net.clone(conv_grad="auto")
    g_auto = jax.grad(score, argnums=(1, 2))(auto, params, x)
    for a, b in zip(jax.tree.leaves(g_jax), jax.tree.leaves(g_auto)):
        assert np.linalg.norm(a - b) <= 1e-6 * np.linalg.norm(a)
    assert not np.array_equal(g_auto[1], g_jax[1])  # the other form did run
    np.testing.assert_allclose(descend(auto), descend(net), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="custom_vjp"):  # the documented cost: no forward mode
        jax.jvp(lambda v: score(flipped, params, v), (x,), (x,))
    jax.jvp(lambda v: score(net, params, v), (x,), (x,))  # the default keeps it


def test_bad_conv_grad_is_refused(tiny):
    net, params = tiny
    with pytest.raises(InputError, match=r"conv_grad: expected one of 'jax', 'flipped', 'auto', got 'fast'"):
        net.clone(conv_grad="fast").apply(params, jnp.zeros((1, 32, 32, 3)))
