"""The model contract: ReLU rewriting, perturbation seams, adapters for linen/NNX/functions, measured geometry.

Every expectation is derived by hand or by an independent route (a module with
the custom ReLU built in, a model split by hand at the tap, the textbook
receptive-field recurrence), never by the code under test.
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxviz import models, weights
from jaxviz.errors import InputError, ModelError
from jaxviz.models import _jaxpr, protocol, relus

# --------------------------------------------------------------------------------------------
# the ReLU rewrite


def _many_relus(x):
    """Eight ReLUs, one of each form and place the rewrite must find."""
    y = jax.nn.relu(x)  # 1: custom_jvp around jit around max
    y = jnp.maximum(y - 0.5, 0)  # 2: max with a literal 0
    y = jnp.maximum(0.0, y * 2 - 0.5)  # 3: zero first
    y, _ = jax.lax.scan(lambda c, _: (nn.relu(c - 0.25), None), y, None, length=2)  # 4: inside scan (once)
    y = jax.lax.cond(True, jax.nn.relu, lambda a: a, y - 0.1)  # 5: inside a cond branch
    y = jax.checkpoint(jax.nn.relu)(y - 0.1)  # 6: inside remat
    y = jax.jit(lambda a: jnp.maximum(a, 0))(y - 0.1)  # 7: inside jit
    return jnp.clip(y - 0.1, 0)  # 8: clip with a lower bound 0 is a ReLU


def test_count_finds_every_form():
    x = jnp.linspace(-1.0, 2.0, 12).reshape(3, 4)
    assert _jaxpr.count_relus(_many_relus, x) == 8
    # not ReLUs: a max against 1, a max of two values, an integer max
    assert _jaxpr.count_relus(lambda x: jnp.maximum(x, 1.0) + jnp.maximum(x, x * 2), x) == 0
    assert _jaxpr.count_relus(lambda i: jnp.maximum(i, 0), jnp.arange(3)) == 0


def _guided_reference(x, w):
    """d/dx sum(w * relu(relu(x) * 2 - 1)) with guided backprop, by hand."""
    a = np.maximum(x, 0)
    z = a * 2 - 1
    g = w * (z > 0) * (w > 0)  # guided: positive gradients through positive inputs
    g = 2 * g
    return g * (x > 0) * (g > 0)


@pytest.mark.parametrize("wrap", ["plain", "jit", "scan", "remat", "cond"])
def test_guided_rule_swapped_wherever_the_relu_sits(wrap):
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(5, 7), jnp.float32)
    w = jnp.asarray(rng.randn(5, 7), jnp.float32)

    def body(v):
        return jax.nn.relu(jax.nn.relu(v) * 2 - 1)

    wrapped = {
        "plain": body,
        "jit": jax.jit(body),
        "scan": lambda v: jax.lax.scan(lambda c, _: (body(c), None), v, None, length=1)[0],
        "remat": jax.checkpoint(body),
        "cond": lambda v: jax.lax.cond(True, body, lambda a: a, v),
    }[wrap]

    def f(v):
        return jnp.sum(w * wrapped(v))

    g = jax.grad(relus.swap(f, relus.guided_relu))(x)
    np.testing.assert_allclose(g, _guided_reference(np.asarray(x), np.asarray(w)), rtol=1e-6)
    # the forward values are the function's own
    np.testing.assert_array_equal(relus.swap(f, relus.guided_relu)(x), f(x))


def test_deconv_rule_and_plain_gradient_differ_as_derived():
    x = jnp.asarray([-1.0, 2.0, 3.0])
    w = jnp.asarray([1.0, -1.0, 2.0])
    f = lambda v: jnp.sum(w * jnp.maximum(v, 0))  # noqa: E731
    np.testing.assert_array_equal(jax.grad(f)(x), [0.0, -1.0, 2.0])
    np.testing.assert_array_equal(jax.grad(relus.swap(f, relus.deconv_relu))(x), [1.0, 0.0, 2.0])
    np.testing.assert_array_equal(jax.grad(relus.swap(f, relus.guided_relu))(x), [0.0, 0.0, 2.0])


def test_swap_refuses_a_function_without_relus():
    with pytest.raises(ModelError, match=r"^net: found no ReLU to swap in <lambda>"):
        jax.grad(relus.swap(lambda x: jnp.sum(jnp.tanh(x)), relus.guided_relu))(jnp.ones(3))


def test_swap_under_jit_and_vmap():
    x = jnp.asarray(np.random.RandomState(1).randn(4, 6), jnp.float32)
    w = jnp.asarray(np.random.RandomState(2).randn(6), jnp.float32)

    def f(v):
        return jnp.sum(w * jax.nn.relu(jax.nn.relu(v) * 2 - 1))

    g = jax.grad(relus.swap(f, relus.guided_relu))
    eager = np.stack([g(r) for r in x])
    np.testing.assert_allclose(jax.jit(jax.vmap(g))(x), eager, rtol=1e-6)
    np.testing.assert_allclose(eager, _guided_reference(np.asarray(x), np.broadcast_to(np.asarray(w), x.shape)),
                               rtol=1e-6)


# --------------------------------------------------------------------------------------------
# a user's linen CNN, with functional ReLUs, and the same network with a ReLU seam built in


class UserCNN(nn.Module):
    """A CNN as a user writes it: functional nn.relu, no jaxviz names."""

    relu: object = None  # only the reference below sets it

    @nn.compact
    def __call__(self, x):
        act = self.relu or nn.relu
        x = act(nn.Conv(6, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = act(nn.Conv(8, (3, 3), strides=(2, 2))(x))
        return nn.Dense(3)(x.mean((1, 2)))


@pytest.fixture(scope="module")
def user():
    net = UserCNN()
    params = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    x = jnp.asarray(np.random.RandomState(3).rand(2, 16, 16, 3), jnp.float32)
    return net, params, x


def test_tapped_lists_submodules_in_call_order(user):
    net, params, x = user
    tapped = models.tapped(net, input_shape=(1, 16, 16, 3))
    assert tapped.layers == ("Conv_0", "Conv_1", "Dense_0")
    assert protocol.is_model(tapped) and hash(tapped) == hash(models.tapped(net, input_shape=(1, 16, 16, 3)))
    out, taps = tapped.run(params, x, ("Conv_1",))
    np.testing.assert_array_equal(out, net.apply(params, x))
    p = params["params"]
    h = nn.max_pool(nn.relu(nn.Conv(6, (3, 3)).apply({"params": p["Conv_0"]}, x)), (2, 2), (2, 2))
    np.testing.assert_allclose(taps["Conv_1"], nn.Conv(8, (3, 3), strides=(2, 2)).apply({"params": p["Conv_1"]}, h),
                               rtol=1e-6)


def test_tapped_guided_relu_equals_the_module_with_the_rule_built_in(user):
    net, params, x = user
    tapped = models.tapped(net, input_shape=(1, 16, 16, 3))
    got = jax.grad(lambda v: tapped.run(params, v, relu=relus.guided_relu)[0][:, 1].sum())(x)
    want = jax.grad(lambda v: UserCNN(relu=relus.guided_relu).apply(params, v)[:, 1].sum())(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert relus.count(tapped, params, x) == 2
    plain = jax.grad(lambda v: net.apply(params, v)[:, 1].sum())(x)
    assert not np.allclose(got, plain)  # the rule did change the gradient


def test_layer_gradient_equals_the_model_split_by_hand(user):
    net, params, x = user
    tapped = models.tapped(net, input_shape=(1, 16, 16, 3))
    a, g, out = protocol.layer_gradient(tapped, params, x, "Conv_1", lambda o: o[:, 2])
    p = params["params"]
    rest = lambda a: nn.Dense(3).apply({"params": p["Dense_0"]}, nn.relu(a).mean((1, 2)))[:, 2].sum()  # noqa: E731
    np.testing.assert_allclose(g, jax.grad(rest)(a), rtol=1e-6)
    np.testing.assert_array_equal(out, net.apply(params, x))


class Residual(nn.Module):
    """A residual block whose inner convolution is a tap: Grad-CAM's 'start' cannot reach inside it."""

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(4, (3, 3), name="inner")(x))
        return nn.relu(x + nn.Conv(4, (3, 3), name="outer")(y))


class ResidualNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="stem")(x)
        x = Residual(name="block")(x)
        return nn.Dense(2, name="head")(x.mean((1, 2)))


def test_layer_gradient_inside_a_residual_block():
    net = ResidualNet()
    params = jax.jit(net.init)(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))
    x = jnp.asarray(np.random.RandomState(4).rand(2, 8, 8, 3), jnp.float32)
    tapped = models.tapped(net, input_shape=(1, 8, 8, 3))
    assert tapped.layers == ("stem", "block/inner", "block/outer", "block", "head")
    assert tapped.resolve("block.inner") == "block/inner"  # torchvision-style dots
    a, g, _ = protocol.layer_gradient(tapped, params, x, "block/inner", lambda o: o[:, 0])
    p = params["params"]
    stem = nn.Conv(4, (3, 3)).apply({"params": p["stem"]}, x)

    def rest(inner):  # the block's output from its inner convolution, the skip path held fixed
        y = nn.relu(inner)
        z = nn.relu(stem + nn.Conv(4, (3, 3)).apply({"params": p["block"]["outer"]}, y))
        return nn.Dense(2).apply({"params": p["head"]}, z.mean((1, 2)))[:, 0].sum()

    np.testing.assert_allclose(g, jax.grad(rest)(a), rtol=1e-5, atol=1e-8)


def test_tapped_errors(user):
    net, params, x = user
    with pytest.raises(InputError, match=r"^input_shape: UserCNN could not run on an input of shape \(1, 16, 16\)"):
        models.tapped(net, input_shape=(1, 16, 16))
    tapped = models.tapped(net, input_shape=(1, 16, 16, 3))
    with pytest.raises(InputError, match=r"^taps: unknown layer 'conv9'; this network has Conv_0, Conv_1, Dense_0"):
        tapped.run(params, x, ("conv9",))
    with pytest.raises(InputError, match=r"^perturb: 'Conv_1' has activations of shape \(2, 4, 4, 8\), got an array"):
        tapped.run(params, x, perturb={"Conv_1": jnp.zeros((1, 4, 4, 8))})
    with pytest.raises(InputError, match=r"^module: expected a flax.linen Module, got function"):
        models.tapped(lambda x: x)


# --------------------------------------------------------------------------------------------
# functions and NNX


def test_function_model_perturbs_a_tap_made_inside_a_jit_body():
    """The tap is computed inside one jitted function and used again inside it: the perturbation must be
    added there, not after the call (where the later use inside would miss it)."""

    @jax.jit
    def body(w, x):
        h = jnp.tanh(x * w)
        return h, jnp.sum(h**2, axis=1)

    def f(params, x):
        h, out = body(params, x)
        return out, {"h": h}

    x = jnp.asarray(np.random.RandomState(5).randn(3, 4), jnp.float32)
    w = jnp.float32(0.7)
    net = models.from_function(f, params=w, input_shape=(3, 4))
    assert net.layers == ("h",)
    a, g, out = protocol.layer_gradient(net, w, x, "h", lambda o: o)
    np.testing.assert_allclose(g, 2 * np.tanh(np.asarray(x) * 0.7), rtol=1e-6)  # d sum(h^2) / dh = 2h
    np.testing.assert_allclose(a, np.tanh(np.asarray(x) * 0.7), rtol=1e-6)


class NNXCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.blocks = nnx.List([nnx.Conv(4, 4, (3, 3), rngs=rngs) for _ in range(2)])
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv(x))
        for block in self.blocks:
            x = x + nnx.relu(block(x))
        return self.head(x.mean((1, 2)))


def test_nnx_model_taps_layer_gradient_and_relus():
    module = NNXCNN(nnx.Rngs(0))
    net, state = models.from_nnx(module, input_shape=(1, 8, 8, 3))
    assert net.layers == ("conv", "blocks/0", "blocks/1", "head")
    x = jnp.asarray(np.random.RandomState(6).rand(2, 8, 8, 3), jnp.float32)
    out, taps = net.run(state, x, ("blocks/0",))
    np.testing.assert_allclose(out, module(x), rtol=1e-6)
    h0 = nnx.relu(module.conv(x))
    np.testing.assert_allclose(taps["blocks/0"], module.blocks[0](h0), rtol=1e-6)
    a, g, _ = protocol.layer_gradient(net, state, x, "blocks/1", lambda o: o[:, 0])
    h1 = h0 + nnx.relu(module.blocks[0](h0))
    rest = lambda b: module.head((h1 + nnx.relu(b)).mean((1, 2)))[:, 0].sum()  # noqa: E731
    np.testing.assert_allclose(g, jax.grad(rest)(a), rtol=1e-5, atol=1e-8)
    assert relus.count(net, state, x) == 3
    with pytest.raises(InputError, match=r"^net: a Flax NNX module holds its parameters; split it first"):
        protocol.as_model(module)


def test_adapters_are_jit_static_without_retracing(user):
    net, params, x = user
    tapped = models.tapped(net, input_shape=(1, 16, 16, 3))

    @chex.assert_max_traces(n=1)
    def taps(params, x, *, model):
        return model.run(params, x, ("Conv_0",), output=False)[1]["Conv_0"]

    f = jax.jit(taps, static_argnames="model")
    a = f(params, x, model=tapped)
    b = f(params, x + 0.1, model=models.tapped(net, input_shape=(1, 16, 16, 3)))  # an equal adapter: no new trace
    assert a.shape == b.shape == (2, 16, 16, 6)


# --------------------------------------------------------------------------------------------
# geometry


def _textbook(layers):
    """Receptive field, stride and offset by the recurrence r += (k - 1) * j, o -= p * j, j *= s."""
    r, j, o = 1, 1, 0
    for k, s, p in layers:
        r += (k - 1) * j
        o -= p * j
        j *= s
    return r, j, o


def test_geometry_of_vgg_taps_matches_the_recurrence():
    # VGG16's layer structure at 4 channels a layer: geometry does not depend on the widths
    net = models.VGG(stages=tuple((4,) * len(s) for s in models.VGG16_STAGES), classifier=False)
    params = jax.eval_shape(lambda: jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    plan = []
    for name in net.layers:
        if name.startswith("conv"):
            plan.append((3, 1, 1))
        elif name.startswith("pool"):
            plan.append((2, 2, 0))
        if name in ("relu1_1", "pool1", "relu3_2", "relu4_2", "pool5"):
            r, j, o = _textbook(plan)
            g = protocol.geometry(net, params, name, (224, 224))
            assert (g.size, g.stride, g.offset) == ((r, r), (j, j), (o, o)), name
    assert protocol.geometry(net, params, "relu4_2").size == (76, 76)  # the published VGG16 figure


def test_geometry_of_resnet18_layer3_matches_the_recurrence():
    net = models.resnet18()
    params = jax.eval_shape(lambda: jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    plan = [(7, 2, 3), (3, 2, 1)]  # stem conv, max pool
    plan += [(3, 1, 1)] * 4  # layer1: two basic blocks
    plan += [(3, 2, 1)] + [(3, 1, 1)] * 3  # layer2
    plan += [(3, 2, 1)] + [(3, 1, 1)] * 3  # layer3
    r, j, o = _textbook(plan)
    g = protocol.geometry(net, params, "layer3", (512, 512))
    assert g.stride == (j, j) and g.size == (r, r) and g.offset == (o, o)
    assert g.shape == (32, 32, 256)


def test_geometry_refuses_a_vector_tap():
    net = models.small_cnn()
    params = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ModelError, match=r"^layer: 'gap' of SmallCNN is not a spatial map"):
        protocol.geometry(net, params, "gap", (32, 32))
    assert protocol.default_layer(net, params, (1, 32, 32, 3)) == "relu3"
    g = protocol.geometry(net, params, "relu3", (32, 32))
    assert g.stride == (4, 4) and g.size == (18, 18) and math.prod(g.shape[:2]) == 64


def test_default_layer_is_measured_for_a_user_model(user):
    net, params, x = user
    tapped = models.tapped(net, input_shape=(1, 16, 16, 3))
    assert protocol.default_layer(tapped, params, x.shape) == "Conv_1"  # the deepest spatial tap


def test_suggested_layers_named_by_vgg_measured_elsewhere(user):
    from jaxviz.errors import InputError

    net, params, x = user
    tapped = models.tapped(net, input_shape=(1, 16, 16, 3))
    # two spatial taps (Conv_0 16x16, Conv_1 4x4): early is the first, deep at 0.7 of the depth the second
    assert [protocol.suggested_layer(tapped, params, x.shape, r) for r in ("early", "middle", "deep")] == [
        "Conv_0", "Conv_0", "Conv_1"]
    assert protocol.suggested_layers(tapped, params, x.shape, "style") == ("Conv_0", "Conv_1")  # one per map size
    vgg = models.vgg16()
    vgg_params = weights.random(models.VGG(stages=models.vgg16().stages, classifier=False), seed=0)
    shape = (1, 64, 64, 3)
    assert [protocol.suggested_layer(vgg, vgg_params, shape, r) for r in protocol.ROLES] == [
        "relu1_1", "relu3_1", "relu4_1", "relu4_2", "relu4_2"]
    assert protocol.suggested_layers(vgg, vgg_params, shape, "style") == tuple(f"relu{b}_1" for b in range(1, 6))
    with pytest.raises(InputError, match=r"^role: expected one of early, middle, deep, dream, content or 'style'"):
        protocol.suggested_layers(vgg, vgg_params, shape, "bogus")


def test_convolutions_are_found_by_shape_in_any_params_tree(user):
    from jaxviz.errors import InputError
    from jaxviz.featvis import maps

    net, params, x = user
    assert maps.convolutions(params) == ("Conv_0", "Conv_1")
    np.testing.assert_array_equal(maps.filters(params), np.transpose(params["params"]["Conv_0"]["kernel"], (3, 0, 1, 2)))
    r18 = weights.random(models.resnet18(), seed=0)
    convs = maps.convolutions(r18)
    assert convs[:3] == ("conv1", "layer1_0/conv1", "layer1_0/conv2") and len(convs) == 20  # 17 convs + 3 downsamples
    assert maps.find_convolution(r18, "layer2.0.downsample") == "layer2_0/downsample"
    assert maps.filters(r18, "layer1.0.conv1").shape == (64, 3, 3, 64)
    with pytest.raises(InputError, match=r"^layer: expected a convolution in params \(Conv_0, Conv_1\), got 'Dense_0'"):
        maps.filters(params, "Dense_0")


def test_layer_gradient_equals_vgg_start_fast_path():
    net = models.VGG(stages=((8,), (16, 16), (16, 16)), classifier=False)
    params = jax.jit(net.init)(jax.random.key(2), jnp.zeros((1, 32, 32, 3)))
    x = jnp.asarray(np.random.RandomState(7).rand(2, 32, 32, 3), jnp.float32)
    score = lambda o: o.sum((1, 2, 3))  # noqa: E731
    a, g, _ = protocol.layer_gradient(net, params, x, "relu3_2", score)
    want = jax.grad(lambda a: score(net.apply(params, a, start="relu3_2")).sum())(a)
    np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-9)
