"""LRP (attribution.propagation, models.layerwise): zennit 0.5 parity, conservation, closed forms, any model.

zennit is installed --no-deps by the README's test command; it imports torchvision for its ResNet canonizers'
block classes, which tests/stand_ins/ provides (the ResNet test points zennit at the reference blocks of
tests/torch_reference.py). zennit sees the normalised image and the normalised bounds, as its users pass them;
jaxviz takes images in [0, 1] and carries the bounds through the model's normalisation itself.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import attribution as A
from jaxviz import models, weights
from jaxviz.attribution import propagation as P
from jaxviz.errors import InputError, ModelError

STAGES = ((8, 8), (16,))
SIZE = 32
TARGET = [3, 7]
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def zero_biases(params):
    return jax.tree_util.tree_map_with_path(lambda p, a: jnp.zeros_like(a) if "bias" in str(p) else a, params)


LRP0 = {"conv": P.Epsilon(0.0), "dense": P.Epsilon(0.0), "avg_pool": P.Norm(0.0), "sum": P.Norm(0.0),
        "activation": P.Pass()}


@pytest.fixture(scope="module")
def vgg():
    net = models.VGG(stages=STAGES, fc_features=32, num_classes=10, pool_output=(2, 2))
    params = weights.random(net, seed=1)
    x = jnp.asarray(np.random.RandomState(0).rand(2, SIZE, SIZE, 3), jnp.float32)
    return net, params, x


# ------------------------------------------------------------------ conservation and closed forms

def test_lrp0_conserves_the_score_and_equals_gradient_times_input(vgg):
    """Without biases, LRP-0 (epsilon 0, Pass on ReLUs, winner-take-all pools) is gradient x input on a ReLU
    network, the input being the first layer's (the normalised image: the normalisation passes relevance on),
    and the input relevance sums to the target's logit."""
    net, params, x = vgg
    p0 = zero_biases(params)
    raw = net.clone(preprocess="none")
    xn = (x - MEAN) / STD
    with jax.default_matmul_precision("highest"):
        rel = P.lrp(net, p0, x, TARGET, composite=LRP0)
        logits = net.apply(p0, x)
        gxi = A.input_x_gradient(raw, p0, xn, TARGET)
    np.testing.assert_allclose(rel.sum(axis=(1, 2, 3)), logits[jnp.arange(2), jnp.array(TARGET)], rtol=1e-4)
    assert rel_err(rel, gxi) < 1e-4


@pytest.mark.parametrize("name", sorted(P.COMPOSITES))
def test_every_composite_conserves_without_biases(vgg, name):
    """The rules redistribute: with zero biases and the stabilisers at 1e-9, every composite's relevance sums
    to the score (Flat and ZBox included: ZBox's bounds terms cancel the relevance they take)."""
    net, params, x = vgg
    p0 = zero_biases(params)
    comp = P.COMPOSITES[name](epsilon=1e-9, stabilizer=1e-9)
    with jax.default_matmul_precision("highest"):
        rel = P.lrp(net, p0, x, TARGET, composite=comp)
        logits = net.apply(p0, x)
    np.testing.assert_allclose(rel.sum(axis=(1, 2, 3)), logits[jnp.arange(2), jnp.array(TARGET)], rtol=2e-3)


def _functional(params, x):
    """A plain function: functional ReLUs, a residual sum, an average pool, a global mean, no flax."""
    h = jax.lax.conv_general_dilated(x, params["w1"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jnp.maximum(h + params["b1"], 0)
    g = jax.lax.conv_general_dilated(h, params["w2"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(g + h)  # residual
    h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0
    return jnp.mean(h, axis=(1, 2)) @ params["w3"] + params["b3"]


def _functional_params(seed=0, bias=True):
    k = jax.random.split(jax.random.key(seed), 5)
    p = {"w1": jax.random.normal(k[0], (3, 3, 3, 6)) * 0.5, "b1": jax.random.normal(k[1], (6,)) * 0.1,
         "w2": jax.random.normal(k[2], (3, 3, 6, 6)) * 0.3, "w3": jax.random.normal(k[3], (6, 4)),
         "b3": jax.random.normal(k[4], (4,)) * 0.1}
    if not bias:
        p["b1"], p["b3"] = jnp.zeros_like(p["b1"]), jnp.zeros_like(p["b3"])
    return p


def test_plain_function_layers_and_conservation():
    params = _functional_params(bias=False)
    x = jnp.asarray(np.random.RandomState(2).rand(3, 8, 8, 3), jnp.float32)
    found = P.layers(_functional, params, x)
    kinds = [k for k, _, _ in found]
    assert kinds == ["first", "activation", "conv", "sum", "activation", "avg_pool", "avg_pool", "dense"]
    with jax.default_matmul_precision("highest"):
        rel = P.lrp(_functional, params, x, 1, composite=LRP0)
        logits = _functional(params, x)
    np.testing.assert_allclose(rel.sum(axis=(1, 2, 3)), logits[:, 1], rtol=1e-4)
    # every rule of LRP-0 is the z-rule, the residual sum's too, so on a bias-free ReLU network it is
    # gradient x input (the gradient copies relevance to both summands; x * R / (a + b) splits it: same sum)
    with jax.default_matmul_precision("highest"):
        gxi = A.input_x_gradient(_functional, params, x, 1)
    assert rel_err(rel, gxi) < 1e-4


def test_proportional_max_pool_rule_and_the_default_winner():
    """A 2x2 max pool then a sum: the default hands each window's relevance to its maximum; Norm() on
    "max_pool" spreads it in proportion to the four inputs (x / sum of the window times the window's max)."""
    def f(_, x):
        m = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return jnp.sum(m, axis=(1, 2)) @ jnp.eye(3, dtype=x.dtype)  # a fixed dense map keeps one "layer"

    x = jnp.asarray(np.random.RandomState(3).rand(1, 4, 4, 3) + 0.1, jnp.float32)
    comp = {"dense": P.Epsilon(0.0), "avg_pool": P.Norm(0.0)}
    # the fixed identity matrix is not a parameter: give f a parameter so LRP finds a dense layer
    g = lambda p, x: f(None, x) @ p  # noqa: E731
    p = jnp.eye(3)
    win = np.asarray(P.lrp(g, p, x, 0, composite=comp))
    prop = np.asarray(P.lrp(g, p, x, 0, composite={**comp, "max_pool": P.Norm(0.0)}))
    xs = np.asarray(x)[0, :, :, 0]
    want_win = np.zeros((4, 4))
    want_prop = np.zeros((4, 4))
    for i in range(0, 4, 2):
        for j in range(0, 4, 2):
            w = xs[i:i + 2, j:j + 2]
            a = np.unravel_index(np.argmax(w), w.shape)
            want_win[i + a[0], j + a[1]] = w.max()
            want_prop[i:i + 2, j:j + 2] = w / w.sum() * w.max()
    np.testing.assert_allclose(win[0, :, :, 0], want_win, rtol=1e-5)
    np.testing.assert_allclose(prop[0, :, :, 0], want_prop, rtol=1e-5)
    assert np.all(win[0, :, :, 1:] == 0) and np.all(prop[0, :, :, 1:] == 0)


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(6, (3, 3), use_bias=False, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn1")(x)
        x = nn.relu(x)
        x = nn.Conv(8, (3, 3), use_bias=False, name="conv2")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn2")(x)
        x = nn.relu(x)
        return nn.Dense(5, name="fc")(jnp.mean(x, axis=(1, 2)))


class _FoldedNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(8, (3, 3), name="conv2")(x))
        return nn.Dense(5, name="fc")(jnp.mean(x, axis=(1, 2)))


def test_batchnorm_is_folded_into_its_convolution():
    """zennit's MergeBatchNorm canonizer, found in the program: a linen net with inference BatchNorms gives the
    relevance of the same net with the BatchNorms folded into the convolutions by hand (Gamma and ZPlus use
    the folded weights' signs, so an unfolded BatchNorm would give other numbers)."""
    x = jnp.asarray(np.random.RandomState(4).rand(2, 10, 10, 3), jnp.float32)
    bn = _BNNet()
    v = bn.init(jax.random.key(0), x)
    rng = np.random.RandomState(5)
    stats = {k: {"mean": jnp.asarray(rng.normal(0, 0.2, n), jnp.float32),
                 "var": jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)} for k, n in (("bn1", 6), ("bn2", 8))}
    prm = jax.tree.map(lambda a: a, v["params"])
    for k, n in (("bn1", 6), ("bn2", 8)):
        prm[k] = {"scale": jnp.asarray(rng.choice([-1, 1], n) * rng.uniform(0.5, 1.5, n), jnp.float32),
                  "bias": jnp.asarray(rng.normal(0, 0.1, n), jnp.float32)}
    variables = {"params": prm, "batch_stats": stats}
    folded = {}
    for conv, b in (("conv1", "bn1"), ("conv2", "bn2")):
        s = prm[b]["scale"] / jnp.sqrt(stats[b]["var"] + 1e-5)
        folded[conv] = {"kernel": prm[conv]["kernel"] * s, "bias": prm[b]["bias"] - stats[b]["mean"] * s}
    folded["fc"] = prm["fc"]
    fnet = _FoldedNet()
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(bn.apply(variables, x), fnet.apply({"params": folded}, x), rtol=1e-4, atol=1e-5)
        for comp in ("epsilon_gamma_box", "epsilon_plus", "epsilon_alpha2_beta1_flat"):
            got = P.lrp(bn, variables, x, 2, composite=comp)
            want = P.lrp(fnet, {"params": folded}, x, 2, composite=comp)
            assert rel_err(got, want) < 1e-4, comp
    kinds = [(k, n) for k, n, _ in P.layers(bn, variables, x)]
    assert kinds[0] == ("first", "conv1") and ("conv", "conv2") in kinds and ("dense", "fc") in kinds


def test_name_patterns_override_kinds_and_typos_are_refused(vgg):
    net, params, x = vgg
    by_pattern = P.lrp(net, params, x, TARGET, composite=P.epsilon_plus().with_rules({"conv*": P.ZPlus()}))
    np.testing.assert_allclose(by_pattern, P.lrp(net, params, x, TARGET, composite="epsilon_plus"), rtol=1e-5,
                               atol=1e-9)
    comp = P.epsilon_plus().with_rules({"conv1_2": P.Epsilon(0.25)})
    rules = {n: r for _, n, r in P.layers(net, params, x, comp)}
    assert rules["conv1_2"] == P.Epsilon(0.25) and rules["conv2_1"] == P.ZPlus()
    assert rel_err(P.lrp(net, params, x, TARGET, composite=comp), by_pattern) > 1e-3
    with pytest.raises(InputError, match="'conv9_9' matches no layer; layers: conv1_1, conv1_2"):
        P.lrp(net, params, x, TARGET, composite=P.epsilon_plus().with_rules({"conv9_9": P.Epsilon()}))


def test_errors(vgg):
    net, params, x = vgg
    with pytest.raises(InputError, match="composite: expected one of epsilon_gamma_box"):
        P.lrp(net, params, x, 0, composite="epsilon")
    with pytest.raises(InputError, match=r"rules\['conv'\]: expected a rule"):
        P.lrp(net, params, x, 0, composite={"conv": "gamma"})
    with pytest.raises(InputError, match="alpha - beta == 1"):
        P.AlphaBeta(3.0, 1.0)
    with pytest.raises(ModelError, match="no convolution or dense layer"):
        P.lrp(lambda p, x: jnp.sum(x, axis=(1, 2)) * p, jnp.ones(()), x, 0)
    with pytest.raises(ModelError, match="ZBox"):
        P.lrp(net, params, x, 0, composite={"conv": P.ZBox(), "dense": P.Epsilon()})
    with pytest.raises(InputError, match="Gamma needs a layer with weights"):
        P.lrp(_functional, _functional_params(), x, 0, composite={"avg_pool": P.Gamma(), "conv": P.ZPlus()})


def test_one_trace_of_the_model_per_shape(vgg):
    """The layer listing and the composite's checks ride on the trace that compiles: a model is traced once per
    input shape (besides the batch-1 probes of the model contract), and never again for another target."""
    net, params, x = vgg
    calls = []

    def fn(p, v):
        calls.append(v.shape[0])
        return net.apply(p, v)

    first = P.lrp(fn, params, x, TARGET)
    assert calls.count(2) == 1
    np.testing.assert_allclose(first, P.lrp(net, params, x, TARGET), rtol=1e-6, atol=1e-9)
    seen = len(calls)
    assert rel_err(P.lrp(fn, params, x, [t + 1 for t in TARGET]), first) > 1e-3 and len(calls) == seen
    P.lrp(fn, params, x[:1], TARGET[:1])
    assert calls[seen:] == [1]


def test_nnx_module_through_the_adapter():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.fc = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.fc(jnp.mean(nnx.relu(self.conv(x)), axis=(1, 2)))

    fn, params = models.from_nnx(Net(nnx.Rngs(0)), input_shape=(1, 8, 8, 3))
    x = jnp.asarray(np.random.RandomState(6).rand(2, 8, 8, 3), jnp.float32)
    p0 = zero_biases(params)
    with jax.default_matmul_precision("highest"):
        rel = P.lrp(fn, p0, x, 1, composite=LRP0)
        np.testing.assert_allclose(rel.sum(axis=(1, 2, 3)), fn.run(p0, x)[0][:, 1], rtol=1e-4)


# ------------------------------------------------------------------ zennit 0.5 parity

def _zennit():
    pytest.importorskip("torch")
    if importlib.util.find_spec("torchvision") is None:  # no CPU build here: zennit only imports it
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "stand_ins"))
    return pytest.importorskip("zennit")


def _zennit_relevance(model, composite, x, target, classes):
    import torch
    import torch_reference as tr
    from zennit.attribution import Gradient

    xn = tr.to_nchw((np.asarray(x) - MEAN) / STD)
    with Gradient(model, composite) as attributor:
        _, rel = attributor(xn.requires_grad_(), lambda out: out * torch.eye(classes)[target])
    return tr.to_nhwc(rel)


@pytest.fixture(scope="module")
def zennit_vgg():
    _zennit()
    import torch_reference as tr

    ref = tr.make(STAGES, seed=0, num_classes=10, fc_features=32, pool_output=(2, 2))
    net = models.VGG(stages=STAGES, fc_features=32, num_classes=10, pool_output=(2, 2))
    params = weights.from_torchvision(ref.state_dict(), net)
    x = jnp.asarray(np.random.RandomState(0).rand(2, SIZE, SIZE, 3), jnp.float32)
    return tr.Normalised(ref).eval(), net, params, x  # zennit sees the normalised image, as its users give it


@pytest.mark.parametrize("name", sorted(P.COMPOSITES))
def test_equals_zennit_on_vgg(zennit_vgg, name):
    import torch
    import torch_reference as tr

    model, net, params, x = zennit_vgg
    low, high = (torch.tensor((v - MEAN) / STD).view(1, 3, 1, 1) for v in (0.0, 1.0))
    want = _zennit_relevance(model, tr.zennit_composite(name, low, high), x, TARGET, 10)
    with jax.default_matmul_precision("highest"):
        got = P.lrp(net, params, x, TARGET, composite=name)
    assert rel_err(got, want) < 1e-3
    assert rel_err(got, want) < 1e-5  # what it measures here (float32 round-off)


@pytest.mark.parametrize("name", ["epsilon_gamma_box", "epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_equals_zennit_on_resnet18_with_its_canonizer(name):
    """zennit's ResNetCanonizer (BatchNorm merged, the residual sum as a Norm-rule Sum) against jaxviz's ResNet
    (BatchNorm folded at conversion, the residual add found in the program)."""
    _zennit()
    import torch
    import torch_reference as tr
    import zennit.torchvision as ztv

    ztv.ResNetBasicBlock, ztv.ResNetBottleneck = tr._BasicBlock, tr._Bottleneck  # the stand-in's are placeholders
    ref = tr.TorchResNet("resnet18", seed=0)
    net = models.resnet18()
    params = weights.from_torchvision(ref.state_dict(), net)
    ref.mean, ref.std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)  # zennit sees the normalised image
    x = jnp.asarray(np.random.RandomState(1).rand(2, 48, 48, 3), jnp.float32)
    low, high = (torch.tensor((v - MEAN) / STD).view(1, 3, 1, 1) for v in (0.0, 1.0))
    comp = tr.zennit_composite(name, low, high, canonizers=[ztv.ResNetCanonizer()])
    want = _zennit_relevance(ref, comp, x, TARGET, 1000)
    with jax.default_matmul_precision("highest"):
        got = P.lrp(net, params, x, TARGET, composite=name)
    assert rel_err(got, want) < 1e-3


def test_equals_captums_lrp_with_its_epsilon_rule(zennit_vgg):
    """Captum's LRP (EpsilonRule, epsilon 1e-9, on every convolution, linear and pooling layer; ReLUs pass) is
    the composite of Epsilon(1e-9) rules; Captum also starts from the target's output value. (Captum's
    GammaRule is another gamma rule than zennit's: it keeps the bias and one denominator for both signs.)"""
    captum_attr = pytest.importorskip("captum.attr")
    import copy

    import captum.attr._utils.lrp_rules as captum_rules
    import torch
    import torch_reference as tr

    model, net, params, x = zennit_vgg
    ref = model.m

    class Plain(torch.nn.Module):  # Captum's LRP needs every operation to be a module: no normalisation inside
        def __init__(self):
            super().__init__()
            self.features, self.avgpool, self.classifier = ref.features, ref.avgpool, ref.classifier

        def forward(self, v):
            return self.classifier(torch.flatten(self.avgpool(self.features(v)), 1))

    xn = tr.to_nchw((np.asarray(x) - MEAN) / STD)
    want = tr.to_nhwc(captum_attr.LRP(Plain().eval()).attribute(xn.clone().requires_grad_(), target=TARGET))
    comp = {"conv": P.Epsilon(1e-9), "dense": P.Epsilon(1e-9), "avg_pool": P.Epsilon(1e-9), "activation": P.Pass()}
    with jax.default_matmul_precision("highest"):
        got = P.lrp(net, params, x, TARGET, composite=comp)
    assert rel_err(got, want) < 1e-5
    # Captum's Alpha1_Beta0_Rule without biases is ZPlus without biases on non-negative inputs (every convolution
    # after the first: Captum's rule clamps the weights but not the inputs, so the first keeps Epsilon)
    plain = copy.deepcopy(Plain().eval())
    for m in list(plain.features)[1:]:
        if isinstance(m, torch.nn.Conv2d):
            m.rule = captum_rules.Alpha1_Beta0_Rule(set_bias_to_zero=True)
    want = tr.to_nhwc(captum_attr.LRP(plain).attribute(xn.clone().requires_grad_(), target=TARGET))
    comp = {**comp, "conv": P.ZPlus(1e-9, zero_bias=True), "first": P.Epsilon(1e-9)}
    with jax.default_matmul_precision("highest"):
        got = P.lrp(net, params, x, TARGET, composite=comp)
    assert rel_err(got, want) < 1e-5


def test_equals_zennit_on_full_vgg16():
    """torchvision's VGG16 layout in full (13 convolutions, the adaptive pool that replicates a 2x2 map to 7x7, the
    4096-4096-1000 head), random weights, 64 px images: two composites against zennit."""
    _zennit()
    import torch
    import torch_reference as tr

    ref = tr.make("vgg16", seed=0)
    net = models.vgg16()
    params = weights.from_torchvision(ref.state_dict(), net)
    x = jnp.asarray(np.random.RandomState(7).rand(1, 64, 64, 3), jnp.float32)
    low, high = (torch.tensor((v - MEAN) / STD).view(1, 3, 1, 1) for v in (0.0, 1.0))
    for name in ("epsilon_gamma_box", "epsilon_plus_flat"):
        want = _zennit_relevance(tr.Normalised(ref).eval(), tr.zennit_composite(name, low, high), x, [207], 1000)
        with jax.default_matmul_precision("highest"):
            got = P.lrp(net, params, x, 207, composite=name)
        assert rel_err(got, want) < 1e-3, name


def test_maps_smaller_than_the_kernel_are_convolutions_to_lrp_also_through_a_function_jitted_before():
    """On XLA:CPU jaxviz's models compute a 3x3 convolution of a 2x2 map as a matrix product over patches
    (models.layers.conv); LRP must still find convolutions there (gamma, not epsilon, in EpsilonGammaBox), also
    when the model comes as a function that was jitted and run before LRP traced it."""
    net = models.VGG(stages=((4,), (6, 6)), fc_features=8, num_classes=3, pool_output=(1, 1))
    params = weights.random(net, seed=2)
    x = jnp.asarray(np.random.RandomState(5).rand(2, 4, 4, 3), jnp.float32)  # stage 2 runs on 2x2 maps
    jitted = jax.jit(lambda p, v: net.apply(p, v))
    jitted(params, x)  # traced outside LRP: its cached program has the patch products
    want = [("first", "conv1_1"), ("conv", "conv2_1"), ("conv", "conv2_2"), ("dense", "fc6"), ("dense", "fc7"),
            ("dense", "fc8")]
    assert [(k, n) for k, n, _ in P.layers(net, params, x) if k != "max_pool" and k != "activation"] == want
    assert [k for k, _, _ in P.layers(jitted, params, x) if k in ("first", "conv", "dense")] == [k for k, _ in want]
    ours = P.lrp(net, params, x, [0, 2])
    np.testing.assert_allclose(P.lrp(jitted, params, x, [0, 2]), ours, rtol=1e-5, atol=1e-6 * float(jnp.abs(ours).max()))
    eps = P.lrp(net, params, x, [0, 2], composite=P.epsilon_gamma_box().with_rules({"conv2_*": P.Epsilon()}))
    assert rel_err(eps, ours) > 1e-3  # the rule conv2_* get matters, so the equality above says it is gamma
