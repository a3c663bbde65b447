"""Every technique on every kind of model, through the one model contract, checked by values.

The models: jaxviz's VGG16 (its layers, 8 channels wide), ResNet-18
and small CNN; a user's linen CNN with functional ``nn.relu``; a user's
residual linen model tapped inside a block; a Flax NNX model. For each, the
test builds its references by routes that do not go through the contract:
the module's own ``apply``, the same module with the ReLU rule built in, the
network entered after the tap (``start=``) or with the tap's output replaced
through ``nn.intercept_methods``, flax's ``capture_intermediates``.

Parity with Captum on ResNet-18 (a torch.nn re-creation of torchvision's, the
same weights) closes the file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxviz import attribution as A
from jaxviz import dream, embed, models
from jaxviz.errors import InputError, ModelError
from jaxviz.featvis import maps, patches
from jaxviz.models import relus

TARGET = [1, 3]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@dataclasses.dataclass
class Case:
    net: Any  # what the user passes to the techniques
    params: Any
    x: jax.Array
    layer: str  # a spatial tap
    plain: Callable  # (params, x) -> logits, the model's own forward
    guided: Callable  # (params, x) -> logits with guided_relu built in
    rest: Callable  # (a, x) -> logits from the tap's value a
    tap: Callable  # x -> the tap's activations
    cam: bool  # a global-average-pool + linear head


def _replace(module, params, x, path, value):
    """``module.apply`` with the submodule at ``path`` returning ``value`` (not the adapter's mechanism)."""

    def icpt(next_fun, args, kwargs, ctx):
        out = next_fun(*args, **kwargs)
        if ctx.method_name == "__call__" and "/".join(ctx.module.path) == path:
            return value
        return out

    with nn.intercept_methods(icpt):
        return module.apply(params, x)


def _captured(module, params, x, path):
    _, state = module.apply(params, x, capture_intermediates=True)
    node = state["intermediates"]
    for part in path.split("/"):
        node = node[part]
    return node["__call__"][0]


class UserCNN(nn.Module):
    """A CNN as a user writes it: functional nn.relu, flax's max pool, no jaxviz names."""

    relu: Any = None

    @nn.compact
    def __call__(self, x):
        act = self.relu or nn.relu
        x = act(nn.Conv(8, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = act(nn.Conv(8, (3, 3))(x))
        return nn.Dense(5)(x.mean((1, 2)))


class Block(nn.Module):
    relu: Any = None

    @nn.compact
    def __call__(self, x):
        act = self.relu or nn.relu
        y = act(nn.Conv(8, (3, 3), name="inner")(x))
        return act(x + nn.Conv(8, (3, 3), name="outer")(y))


class ResidualNet(nn.Module):
    relu: Any = None

    @nn.compact
    def __call__(self, x):
        act = self.relu or nn.relu
        x = act(nn.Conv(8, (3, 3), strides=(2, 2), name="stem")(x))
        x = Block(self.relu, name="block")(x)
        return nn.Dense(5, name="head")(x.mean((1, 2)))


class NNXNet(nnx.Module):
    def __init__(self, rngs, relu=nnx.relu):
        self.relu = relu
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.blocks = nnx.List([nnx.Conv(8, 8, (3, 3), rngs=rngs) for _ in range(2)])
        self.head = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, x):
        x = self.relu(self.conv(x))
        for block in self.blocks:
            x = x + self.relu(block(x))
        return self.head(x.mean((1, 2)))


def _images(n, size, seed=0):
    return jnp.asarray(np.random.RandomState(seed).rand(n, size, size, 3), jnp.float32)


def _native(net, params, x, layer, cam):
    return Case(net, params, x, layer,
                plain=lambda p, v: net.apply(p, v),
                guided=lambda p, v: net.apply(p, v, relu=relus.guided_relu),
                rest=lambda a, v: net.apply(params, a, start=layer),
                tap=lambda v: net.apply(params, v, taps=layer)[layer], cam=cam)


def _linen(cls, layer, size, key):
    module = cls()
    x = _images(2, size, key)
    params = module.init(jax.random.key(key), x)
    return Case(module, params, x, layer,
                plain=module.apply,
                guided=lambda p, v: cls(relu=relus.guided_relu).apply(p, v),
                rest=lambda a, v: _replace(module, params, v, layer, a),
                tap=lambda v: _captured(module, params, v, layer), cam=False)


def _nnx():
    module = NNXNet(nnx.Rngs(3))
    net, state = models.from_nnx(module, input_shape=(1, 16, 16, 3))
    guided_module = NNXNet(nnx.Rngs(3), relu=relus.guided_relu)  # the same weights: the same seed

    def plain(p, v):
        return nnx.merge(nnx.graphdef(module), p)(v)

    def guided(p, v):
        return nnx.merge(nnx.graphdef(guided_module), p)(v)

    def h1(v):
        h0 = module.relu(module.conv(v))
        return h0 + module.relu(module.blocks[0](h0))

    def rest(a, v):
        return module.head((h1(v) + module.relu(a)).mean((1, 2)))

    return Case(net, state, _images(2, 16, 4), "blocks/1", plain, guided, rest,
                tap=lambda v: module.blocks[1](h1(v)), cam=False)


@pytest.fixture(scope="module", params=["vgg16", "resnet18", "small_cnn", "user_cnn", "residual", "nnx"])
def case(request):
    name = request.param
    if name == "vgg16":  # VGG16's layers at 8 channels each: the structure is what the techniques meet
        net = models.VGG(stages=tuple((8,) * len(s) for s in models.VGG16_STAGES), fc_features=32, num_classes=5)
        x = _images(2, 32, 1)
        return _native(net, jax.jit(net.init)(jax.random.key(0), x), x, "relu5_3", cam=False)
    if name == "resnet18":
        net = models.resnet18(num_classes=5)
        x = _images(2, 32, 2)
        return _native(net, jax.jit(net.init)(jax.random.key(1), x), x, "layer3", cam=True)
    if name == "small_cnn":
        net = models.small_cnn(num_classes=5)
        x = _images(2, 32, 3)
        return _native(net, jax.jit(net.init)(jax.random.key(2), x), x, "relu3", cam=True)
    if name == "user_cnn":
        return _linen(UserCNN, "Conv_1", 16, 5)
    if name == "residual":
        return _linen(ResidualNet, "block/inner", 16, 6)  # inside the residual block
    return _nnx()


def _grad(fn, params, x):
    return jax.grad(lambda v: jnp.sum(jnp.take_along_axis(fn(params, v), jnp.asarray(TARGET)[:, None], 1)))(x)


def test_saliency_and_input_x_gradient(case):
    g = _grad(case.plain, case.params, case.x)
    assert rel_err(A.saliency(case.net, case.params, case.x, TARGET, abs=False), g) < 1e-5
    assert rel_err(A.input_x_gradient(case.net, case.params, case.x, TARGET), case.x * g) < 1e-5


def test_integrated_gradients_equals_the_riemann_sum_by_hand(case):
    steps = 4  # right sums: the all-zero image (alpha = 0) ties every max pool, where round-off picks the winner
    ours = A.integrated_gradients(case.net, case.params, case.x, TARGET, steps=steps, method="riemann_right",
                                  batch_size=3)
    want = sum(_grad(case.plain, case.params, case.x * (k / steps)) for k in range(1, steps + 1)) / steps * case.x
    assert rel_err(ours, want) < 1e-4


def test_guided_backprop_equals_the_model_with_the_rule_built_in(case):
    ours = A.guided_backprop(case.net, case.params, case.x, TARGET)
    want = _grad(case.guided, case.params, case.x)
    assert rel_err(ours, want) < 1e-5
    assert rel_err(ours, _grad(case.plain, case.params, case.x)) > 1e-3  # the rule changed something


def test_grad_cam_equals_the_gradient_at_the_tap_by_another_route(case):
    a = case.tap(case.x)
    g = jax.grad(lambda a: jnp.sum(jnp.take_along_axis(case.rest(a, case.x), jnp.asarray(TARGET)[:, None], 1)))(a)
    want = np.einsum("nhwc,nc->nhw", np.asarray(a), np.asarray(g).mean((1, 2)))
    ours = A.grad_cam(case.net, case.params, case.x, TARGET, layer=case.layer, relu=False)
    assert ours.shape == a.shape[:3]
    assert rel_err(ours, want) < 1e-4
    np.testing.assert_allclose(maps.feature_maps(case.net, case.params, case.x, case.layer), a, rtol=1e-5, atol=1e-6)


def test_cam_where_the_head_allows_it_and_one_line_elsewhere(case):
    if case.cam:
        cam = A.cam(case.net, case.params, case.x, TARGET)
        gc = A.grad_cam(case.net, case.params, case.x, TARGET, relu=False)  # the default layer: the GAP's input
        h, w = cam.shape[1:]
        assert rel_err(cam, gc * h * w) < 1e-4  # CAM = Grad-CAM * h * w for a GAP + linear head
    else:
        with pytest.raises(InputError, match=r"^net: cam needs a global-average-pool \+ linear head named in "
                                             r"net.cam_layers \(or layer= and dense=\); .+ has none, use grad_cam$"):
            A.cam(case.net, case.params, case.x, TARGET)


def test_occlusion_equals_the_loop_over_windows(case):
    size = case.x.shape[1]
    win = size // 4
    ours = A.occlusion(case.net, case.params, case.x, TARGET, window=win, stride=win, baseline=0.0, batch_size=5)
    base = np.take_along_axis(np.asarray(case.plain(case.params, case.x)), np.asarray(TARGET)[:, None], 1)[:, 0]
    want = np.zeros(case.x.shape, np.float32)
    for i in range(0, size, win):
        for j in range(0, size, win):
            occluded = case.x.at[:, i:i + win, j:j + win, :].set(0.0)
            out = np.asarray(case.plain(case.params, occluded))
            drop = base - np.take_along_axis(out, np.asarray(TARGET)[:, None], 1)[:, 0]
            want[:, i:i + win, j:j + win, :] = drop[:, None, None, None]
    assert rel_err(ours, want) < 1e-3


def test_feature_space_and_patch_techniques_run_on_the_tap(case):
    # DeepDream's objective is 1/2 |a|^2 summed over channels, averaged over the tap's positions
    value, grad = dream.gradient(case.net, case.params, case.x[:1], layers=case.layer)
    a = case.tap(case.x[:1])
    want = 0.5 * float(jnp.sum(a.astype(jnp.float32) ** 2)) / (a.shape[1] * a.shape[2])
    np.testing.assert_allclose(float(value), want, rtol=1e-4)
    assert float(jnp.abs(grad).max()) > 0
    # top patches: the image that drives each channel hardest, at the measured receptive field
    top = patches.top_patches(case.net, case.params, case.x, layer=case.layer, channels=[0, 1], k=1)
    peak = np.asarray(a)  # one image: the winner is image 0 for each channel
    full = np.asarray(case.tap(case.x))
    for c in range(2):
        assert top.index[c, 0] == int(np.argmax(full[..., c].reshape(2, -1).max(1)))
        np.testing.assert_allclose(top.values[c, 0], full[..., c].max(), rtol=1e-5)
    assert top.patches.shape[2] == top.field.size and peak.ndim == 4
    # embeddings default to the tap before the outputs and equal a mean over positions for a spatial tap
    feats = embed.features(case.net, case.params, case.x, layer=case.layer, pool="mean", size=case.x.shape[1])
    np.testing.assert_allclose(feats.vectors, full.mean((1, 2)), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Captum on ResNet-18: the same torchvision-layout weights on both sides


torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")


@pytest.fixture(scope="module")
def resnet():
    import copy

    import torch_reference as tr

    from jaxviz import weights

    ref = tr.TorchResNet("resnet18", num_classes=10, seed=3)
    ref64 = copy.deepcopy(ref).double()
    ref64.mean, ref64.std = ref64.mean.double(), ref64.std.double()
    net = models.resnet18(num_classes=10)
    params = weights.convert(ref.state_dict(), net)
    x = np.random.RandomState(7).rand(2, 64, 64, 3).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        yield net, ref, ref64, params, jnp.asarray(x), tr.to_nchw(x)


def _as_exact_as_pytorch(ours, make_captum, xt):
    """jaxviz's float32 map is as close to Captum's float64 map as Captum's own float32 map is (at most 1.5x as
    far, and within 1e-4 where PyTorch is that exact). On this random ResNet float32 round-off alone moves
    Captum's maps by 2e-4 (guided backprop) to 5e-3 (saliency), mostly through ReLU and max-pool decisions."""
    cap32 = make_captum(False)(xt.clone().requires_grad_()).detach().numpy()
    cap64 = make_captum(True)(xt.double().clone().requires_grad_()).detach().numpy()
    ours = np.asarray(ours)
    if ours.ndim == 4:
        ours = ours.transpose(0, 3, 1, 2)
    own = rel_err(cap32, cap64)
    assert rel_err(ours, cap64) <= max(1.5 * own, 1e-4), (rel_err(ours, cap64), own)


def test_resnet_guided_backprop_saliency_and_ig_equal_captum(resnet):
    net, ref, ref64, params, x, xt = resnet
    pick = lambda d: ref64 if d else ref  # noqa: E731
    _as_exact_as_pytorch(A.guided_backprop(net, params, x, TARGET),
                         lambda d: lambda v: captum_attr.GuidedBackprop(pick(d)).attribute(v, target=TARGET), xt)
    _as_exact_as_pytorch(A.saliency(net, params, x, TARGET, abs=False),
                         lambda d: lambda v: captum_attr.Saliency(pick(d)).attribute(v, target=TARGET, abs=False), xt)
    _as_exact_as_pytorch(A.integrated_gradients(net, params, x, TARGET, steps=5),
                         lambda d: lambda v: captum_attr.IntegratedGradients(pick(d)).attribute(
                             v, target=TARGET, n_steps=5, method="gausslegendre"), xt)


def test_resnet_layer_grad_cam_inside_a_stage_equals_captum(resnet):
    net, ref, ref64, params, x, xt = resnet
    ours = A.grad_cam(net, params, x, TARGET, layer="layer3.0", relu=False)
    assert ours.shape == (2, 4, 4)

    def make(double):
        model = ref64 if double else ref
        return lambda v: captum_attr.LayerGradCam(model, model.layer3[0]).attribute(v, target=TARGET)[:, 0]

    _as_exact_as_pytorch(ours, make, xt)


def test_resnet_occlusion_equals_captum(resnet):
    net, ref, ref64, params, x, xt = resnet
    ours = A.occlusion(net, params, x, TARGET, window=16, stride=8, baseline=0.5, batch_size=16)

    def make(double):
        model = ref64 if double else ref

        def run(v):
            with torch.no_grad():
                return captum_attr.Occlusion(model).attribute(v, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                                              baselines=0.5, target=TARGET, perturbations_per_eval=16)
        return run

    _as_exact_as_pytorch(ours, make, xt)


def test_a_model_without_relus_is_refused_by_the_relu_methods():
    class Smooth(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(jnp.tanh(nn.Conv(4, (3, 3))(x)).mean((1, 2)))

    net = Smooth()
    x = _images(1, 8)
    params = jax.jit(net.init)(jax.random.key(0), x)
    for method in (A.guided_backprop, A.deconvnet):
        with pytest.raises(ModelError, match=r"^net: found no ReLU to swap in TappedModule\(Smooth\)"):
            method(net, params, x, 0)


USER_MODELS = ["user_cnn", "residual", "nnx"]  # jaxviz's own models have their own style and render tests


@pytest.mark.parametrize("case", USER_MODELS, indirect=True)
def test_style_transfer_losses_equal_the_formulas_on_the_tap(case):
    """Style transfer on any model: with the case's tap as content and style layer, the losses at the start
    equal the course's formulas on activations read without the contract."""
    from jaxviz import losses, style

    content, painting = case.x[:1], case.x[1:]
    overrides = dict(content_layers=((case.layer, 1.0),), style_layers=((case.layer, 1.0),), content_weight=1.0,
                     style_weight=1.0, tv_weight=0.0, init="random", feature_scale=1.0, optimizer="adam",
                     learning_rate=1e-3)
    state = style.init(case.net, case.params, content, painting, preset="gatys", seed=3, **overrides)
    got = style.evaluate(case.net, case.params, state)
    cfg = state.config
    a_g = case.tap(style.result(state)).astype(jnp.float32)
    a_c = case.tap(content).astype(jnp.float32)
    a_s = case.tap(painting).astype(jnp.float32)
    want_c = losses.content_cost(a_c, a_g, normalization=cfg.content_normalization)
    want_s = losses.gram_cost(losses.gram_target(a_s[0], normalization=cfg.style_normalization), a_g,
                              normalization=cfg.style_normalization)
    np.testing.assert_allclose(got.content, [want_c], rtol=1e-4)
    np.testing.assert_allclose(got.style, [want_s], rtol=1e-4)
    state, _ = style.update(case.net, case.params, state, steps=3)
    after = style.evaluate(case.net, case.params, state)
    assert float(after.total[0]) < float(got.total[0])  # it optimises the tap it was given


@pytest.mark.parametrize("case", USER_MODELS, indirect=True)
def test_activation_maximisation_raises_the_channel_read_without_the_contract(case):
    from jaxviz.featvis import render as R

    size = case.x.shape[1]
    img, history = R.render(case.net, case.params, R.channel(case.layer, 0), key=jax.random.key(0), size=size,
                            steps=12, transforms=None, return_history=True)
    final = float(jnp.mean(case.tap(img)[..., 0]))
    assert final > float(history[0]) and float(history[-1]) > float(history[0])


@pytest.mark.parametrize("case", ["vgg16", "user_cnn"], indirect=True)
def test_an_empty_batch_gives_empty_results(case):
    """0 images in, 0 maps out, the image's layout kept (VGG's classifier divided by the batch size once)."""
    empty = case.x[:0]
    n, h, w, _ = empty.shape
    for method in (A.saliency, A.input_x_gradient, A.integrated_gradients, A.smoothgrad, A.guided_backprop,
                   A.deconvnet, A.occlusion):
        assert method(case.net, case.params, empty, 0).shape == (0, h, w, 3), method.__name__
    assert A.grad_cam(case.net, case.params, empty, 0, upsample=True).shape == (0, h, w)
    assert maps.feature_maps(case.net, case.params, empty, case.layer).shape[0] == 0


# --------------------------------------------------------------------------- the metrics on every model


def _target_scores(case, x, probabilities):
    out = np.asarray(case.plain(case.params, x), np.float64)
    if probabilities:
        out = np.exp(out - out.max(1, keepdims=True))
        out /= out.sum(1, keepdims=True)
    return np.take_along_axis(out, np.asarray(TARGET)[:, None], 1)[:, 0]


def test_deletion_insertion_and_infidelity_equal_the_formulas_by_hand(case):
    from jaxviz.attribution import metrics

    x = np.asarray(case.x)
    n, h, w, _ = x.shape
    attr = np.random.default_rng(7).normal(size=x.shape).astype(np.float32)
    steps = 4
    dele = metrics.deletion(case.net, case.params, case.x, TARGET, attr, steps=steps, batch_size=3)
    ins = metrics.insertion(case.net, case.params, case.x, TARGET, attr, steps=steps, batch_size=3, baseline=0.25)
    order = np.argsort(-attr.sum(-1).reshape(n, -1), axis=1, kind="stable")
    want_d, want_i = np.zeros((n, steps + 1)), np.zeros((n, steps + 1))
    for s in range(steps + 1):
        k = int(round(s * h * w / steps))
        first = np.zeros((n, h * w), bool)
        np.put_along_axis(first, order[:, :k], True, 1)
        first = first.reshape(n, h, w, 1)
        want_d[:, s] = _target_scores(case, jnp.asarray(np.where(first, 0.0, x)), True)
        want_i[:, s] = _target_scores(case, jnp.asarray(np.where(first, x, 0.25)), True)
    np.testing.assert_allclose(dele.scores, want_d, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ins.scores, want_i, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dele.auc, (want_d.sum(1) - 0.5 * (want_d[:, 0] + want_d[:, -1])) / steps, rtol=1e-4)
    # infidelity: mean_s (attr . I_s - (f(x) - f(x - I_s)))^2, I_s = stdev * normal(fold_in(key, i * S + s))
    key, samples, stdev = jax.random.key(3), 3, 0.1
    ours = metrics.infidelity(case.net, case.params, case.x, TARGET, attr, key=key, samples=samples, stdev=stdev,
                              batch_size=2)
    clean = _target_scores(case, case.x, False)
    want = np.zeros(n)
    for i in range(n):
        for s in range(samples):
            pert = stdev * np.asarray(jax.random.normal(jax.random.fold_in(key, i * samples + s), (h * w * 3,)))
            pert = pert.reshape(h, w, 3)
            out = _target_scores(case, jnp.asarray(x - pert[None]), False)[i] if n else 0.0
            want[i] += (float(np.sum(attr[i] * pert)) - (clean[i] - out)) ** 2 / samples
    np.testing.assert_allclose(ours, want, rtol=1e-3)


@pytest.mark.parametrize("case", ["small_cnn", "user_cnn", "residual", "nnx"], indirect=True)
def test_perturbation_metrics_equal_their_formulas_by_hand(case):
    """pixel flipping, faithfulness correlation (its documented subset draws) and the local Lipschitz estimate
    (its documented noise) on the small models of every kind (the loops by hand are slow on VGG16 and
    ResNet18), against loops written from the definitions."""
    from jaxviz import attribution as A
    from jaxviz.attribution import metrics

    x = np.asarray(case.x)
    n, h, w, _ = x.shape
    attr = np.random.default_rng(5).normal(size=(n, h, w)).astype(np.float32)
    step = h * w // 4
    flip = metrics.pixel_flipping(case.net, case.params, case.x, TARGET, attr, features_in_step=step, baseline=0.5,
                                  batch_size=3)
    order = np.argsort(-attr.reshape(n, -1), axis=1, kind="stable")
    want = np.zeros((n, 4))
    for s in range(4):
        gone = np.zeros((n, h * w), bool)
        np.put_along_axis(gone, order[:, :(s + 1) * step], True, 1)
        want[:, s] = _target_scores(case, jnp.asarray(np.where(gone.reshape(n, h, w, 1), 0.5, x)), True)
    np.testing.assert_allclose(flip.scores, want, rtol=1e-4, atol=1e-6)
    # faithfulness correlation: subset r of image i = choice(fold_in(key, i * runs + r), F, size, no replacement)
    key, runs, size = jax.random.key(2), 4, 10
    fc = metrics.faithfulness_correlation(case.net, case.params, case.x, TARGET, attr, subset_size=size, runs=runs,
                                          key=key, batch_size=3)
    clean = _target_scores(case, case.x, False)
    for i in range(n):
        deltas, sums = [], []
        for r in range(runs):
            pick = np.asarray(jax.random.choice(jax.random.fold_in(key, i * runs + r), h * w, (size,), replace=False))
            gone = np.zeros(h * w, bool)
            gone[pick] = True
            xp = np.where(gone.reshape(1, h, w, 1), 0.0, x)
            deltas.append(clean[i] - _target_scores(case, jnp.asarray(xp), False)[i])
            sums.append(attr[i].ravel()[pick].sum())
        np.testing.assert_allclose(fc[i], np.corrcoef(sums, deltas)[0, 1], rtol=1e-3, atol=1e-4)
    # local Lipschitz: max_s ||a(x + d_s) - a(x)|| / ||d_s||, d_s = stdev * normal(fold_in(key, i * S + s))
    samples, stdev = 2, 0.05
    lip = metrics.local_lipschitz(case.net, case.params, case.x, TARGET, samples=samples, stdev=stdev, key=key,
                                  batch_size=3)
    ref = np.asarray(A.saliency(case.net, case.params, case.x, TARGET))
    for i in range(n):
        vals = []
        for s in range(samples):
            d = stdev * np.asarray(jax.random.normal(jax.random.fold_in(key, i * samples + s), (h * w * 3,)))
            xp = jnp.asarray(x[i:i + 1] + d.reshape(1, h, w, 3))
            a = np.asarray(A.saliency(case.net, case.params, xp, TARGET[i]))
            vals.append(np.linalg.norm(a - ref[i]) / np.linalg.norm(d))
        np.testing.assert_allclose(lip[i], max(vals), rtol=1e-3)


def test_model_randomization_goes_from_the_output_down_on_every_model(case):
    """The cascade starts at the head and ends at the convolution that sees the image (found by shape here),
    whatever the order of the params dict's keys (a converted file's come sorted)."""
    from jaxviz.attribution import metrics

    r = metrics.model_randomization(case.net, case.params, case.x, TARGET, method="saliency")
    nested = "params" in case.params
    inner = case.params["params"] if nested else case.params
    first_conv = maps.find_convolution(case.params).split("/")[0]  # the kernel with 3 input channels
    assert r.layers[-1] == first_conv
    head = [k for k in inner if any(np.ndim(v) == 2 and np.shape(v)[-1] == 5 for v in jax.tree_util.tree_leaves(inner[k]))]
    assert r.layers[0] in head
    assert r.spearman.shape == (len(r.layers), case.x.shape[0])
    assert np.all(np.abs(r.spearman) <= 1 + 1e-9) and r.spearman[-1].mean() < 0.9  # all randomised: the map changed
    shuffled = dict(sorted(inner.items()))  # sorted keys: the order a converted file has
    params = dict(case.params, params=shuffled) if nested else shuffled
    assert metrics.model_randomization(case.net, params, case.x, TARGET, method="saliency").layers == r.layers
