"""The CAM family against pytorch-grad-cam 1.5 on the same small VGG (tests/torch_reference.py's weights), with
pytorch-grad-cam's conventions (normalize=True, upsample=True), plus the options and the batching."""

from __future__ import annotations

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("torchvision") is None:  # no CPU build here: pytorch-grad-cam only imports it
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "stand_ins"))
pgc = pytest.importorskip("pytorch_grad_cam")

import torch_reference as tr  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from jaxviz import attribution as A  # noqa: E402
from jaxviz import models, weights  # noqa: E402
from jaxviz.attribution import cams  # noqa: E402

STAGES = ((8, 8), (16,))
SIZE = 32
TARGET = [3, 7]
LAYER, INDEX = "relu2_1", 6  # features: conv, relu, conv, relu, pool, conv, relu(6), pool

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # pgc.__del__ on exit

PEERS = {
    "grad_cam": "GradCAM", "grad_cam_plus_plus": "GradCAMPlusPlus", "xgrad_cam": "XGradCAM",
    "hires_cam": "HiResCAM", "grad_cam_elementwise": "GradCAMElementWise", "layer_cam": "LayerCAM",
    "eigen_cam": "EigenCAM", "eigen_grad_cam": "EigenGradCAM", "score_cam": "ScoreCAM",
    "ablation_cam": "AblationCAM",
}


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.fixture(scope="module")
def setup():
    net = models.VGG(stages=STAGES, fc_features=32, num_classes=10, pool_output=(2, 2))
    ref = tr.make(STAGES, seed=1, num_classes=10, fc_features=32, pool_output=(2, 2))
    params = weights.from_torchvision(ref.state_dict(), net)
    x = np.random.RandomState(1).rand(2, SIZE, SIZE, 3).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        yield net, ref, params, jnp.asarray(x), tr.to_nchw(x)


@pytest.fixture(autouse=True)
def _deterministic_eigen_sign(monkeypatch):
    """pytorch-grad-cam keeps LAPACK's arbitrary sign of the principal component; give it jaxviz's rule (the
    projection correlates positively with the channel sum) so the rest of the method can be compared exactly."""
    from pytorch_grad_cam import base_cam, eigen_cam, eigen_grad_cam, hirescam, layer_cam
    from pytorch_grad_cam.utils import svd_on_activations

    original = svd_on_activations.get_2d_projection

    def signed(batch):
        proj = original(batch)
        total = np.nan_to_num(batch).sum(1)
        for i in range(len(proj)):
            if np.sum(proj[i] * (total[i] - total[i].mean())) < 0:
                proj[i] = -proj[i]
        return proj

    for mod in (svd_on_activations, base_cam, eigen_cam, eigen_grad_cam, hirescam, layer_cam):
        if hasattr(mod, "get_2d_projection"):
            monkeypatch.setattr(mod, "get_2d_projection", signed)


def peer(name, ref, layers, xt, targets, **kw):
    cls = getattr(pgc, PEERS[name])
    extra = {"batch_size": 5} if name == "ablation_cam" else {}
    with cls(model=ref, target_layers=[ref.features[i] for i in layers], **extra) as cam:
        if name == "score_cam":
            cam.batch_size = 5
        return cam(input_tensor=xt, targets=targets, **kw)


@pytest.mark.parametrize("name", sorted(PEERS))
def test_equals_pytorch_grad_cam(setup, name):
    net, ref, params, x, xt = setup
    want = peer(name, ref, [INDEX], xt, [ClassifierOutputTarget(t) for t in TARGET])
    got = A.cam_map(name, net, params, x, TARGET, layer=LAYER, normalize=True, upsample=True, batch_size=5)
    assert got.shape == want.shape == (2, SIZE, SIZE)
    assert rel_err(got, want) < 1e-4, rel_err(got, want)


@pytest.mark.parametrize("name", ["grad_cam_plus_plus", "layer_cam", "eigen_grad_cam"])
def test_options_equal_pytorch_grad_cam(setup, name):
    """Several layers averaged, eigen_smooth, aug_smooth (flips x 0.9/1/1.1) and a callable target."""
    net, ref, params, x, xt = setup
    targets = [ClassifierOutputTarget(t) for t in TARGET]
    want = peer(name, ref, [3, INDEX], xt, targets)
    got = A.cam_map(name, net, params, x, TARGET, layer=["relu1_2", LAYER])
    assert rel_err(got, want) < 1e-4
    want = peer(name, ref, [INDEX], xt, targets, eigen_smooth=True)
    got = A.cam_map(name, net, params, x, TARGET, layer=LAYER, normalize=True, upsample=True, eigen_smooth=True)
    assert rel_err(got, want) < 1e-4
    want = peer(name, ref, [INDEX], xt, targets, aug_smooth=True)
    got = A.cam_map(name, net, params, x, TARGET, layer=LAYER, aug_smooth=True)
    assert rel_err(got, want) < 1e-4
    want = peer(name, ref, [INDEX], xt, [lambda o: o[3] - o[5]] * 2)
    got = A.cam_map(name, net, params, x, lambda out: out[:, 3] - out[:, 5], layer=LAYER, normalize=True,
                    upsample=True)
    assert rel_err(got, want) < 1e-4


def test_formulas_by_hand(setup):
    """Each gradient method from the activation and gradient computed here (jaxviz's own conventions: the
    layer's resolution, the map's values)."""
    net, _, params, x, _ = setup
    a = np.asarray(net.apply(params, x, taps=LAYER)[LAYER], np.float64)
    g = np.asarray(jax.grad(lambda d: jnp.sum(net.apply(params, x, perturb={LAYER: d})[jnp.arange(2), TARGET]))(
        jnp.zeros(a.shape, jnp.float32)), np.float64)
    s = a.sum((1, 2), keepdims=True)
    alpha = np.where(g != 0, g ** 2 / (2 * g ** 2 + s * g ** 3 + 1e-6), 0)
    by_hand = {
        "grad_cam": (a * g.mean((1, 2), keepdims=True)).sum(-1),
        "grad_cam_plus_plus": (a * (np.maximum(g, 0) * alpha).sum((1, 2), keepdims=True)).sum(-1),
        "xgrad_cam": (a * (g * a / (s + 1e-7)).sum((1, 2), keepdims=True)).sum(-1),
        "hires_cam": (g * a).sum(-1),
        "grad_cam_elementwise": np.maximum(g * a, 0).sum(-1),
        "layer_cam": (np.maximum(g, 0) * a).sum(-1),
    }
    for name, want in by_hand.items():
        got = A.METHODS[name](net, params, x, TARGET, layer=LAYER, relu=False)
        assert rel_err(got, want) < 1e-5, name
        np.testing.assert_allclose(A.METHODS[name](net, params, x, TARGET, layer=LAYER), np.maximum(got, 0))
    # the principal component: centred per channel, projected, signed towards the channel sum
    m = a.reshape(2, -1, a.shape[-1])
    m = m - m.mean(1, keepdims=True)
    for i in range(2):
        v = np.linalg.svd(m[i], full_matrices=False)[2][0]
        p = m[i] @ v
        total = a[i].reshape(-1, a.shape[-1]).sum(-1)
        p = p if np.sum(p * (total - total.mean())) >= 0 else -p
        got = np.asarray(A.eigen_cam(net, params, x, 0, layer=LAYER, relu=False))[i].ravel()
        assert rel_err(got, p) < 1e-4


def test_score_and_ablation_do_not_depend_on_batch_size(setup):
    net, _, params, x, _ = setup
    for name in ("score_cam", "ablation_cam"):
        maps = [np.asarray(A.METHODS[name](net, params, x, TARGET, layer=LAYER, batch_size=b)) for b in (1, 7, 64)]
        for m in maps[1:]:  # the same up to float32 round-off of other program shapes (weights are differences)
            assert rel_err(m, maps[0]) < 1e-5, name


def test_ablation_suffix_equals_the_whole_network(setup):
    """jaxviz's models run only the network after the layer for each ablated channel; any other model runs it
    whole with the channel removed through the perturbation seam: the same weights."""
    net, _, params, x, _ = setup
    fn, idx = None, jnp.asarray(TARGET, jnp.int32)
    fast = cams._ablation_core(net, params, x, idx, target_fn=fn, layer=LAYER, batch_size=8, eigen_smooth=False,
                               suffix=True)
    whole = cams._ablation_core(net, params, x, idx, target_fn=fn, layer=LAYER, batch_size=8, eigen_smooth=False,
                                suffix=False)
    np.testing.assert_allclose(fast, whole, rtol=1e-5, atol=1e-6 * float(jnp.abs(whole).max()))


def test_errors(setup):
    from jaxviz.errors import InputError

    net, _, params, x, _ = setup
    with pytest.raises(InputError, match="method: expected one of"):
        A.cam_map("gradcam", net, params, x, 0)
    with pytest.raises(InputError, match="layer: expected a spatial tap"):
        A.layer_cam(net, params, x, 0, layer="fc7")
    with pytest.raises(InputError, match="layer: expected a tap name or a non-empty sequence"):
        A.layer_cam(net, params, x, 0, layer=[])
    with pytest.raises(InputError, match="batch_size"):
        A.score_cam(net, params, x, 0, batch_size=0)


def test_full_grad_equals_pytorch_grad_cam(setup):
    """FullGrad: every convolution's bias-gradient plus the input-gradient term (pytorch-grad-cam finds the biased
    Conv2d modules; jaxviz the biased convolutions its model exposes as taps: the same 3 here)."""
    net, ref, params, x, xt = setup
    assert [t for t, _ in cams._biased_convolutions(net, params)] == ["conv1_1", "conv1_2", "conv2_1"]
    with pgc.FullGrad(model=ref, target_layers=[]) as cam:
        want = cam(input_tensor=xt, targets=[ClassifierOutputTarget(t) for t in TARGET])
    got = A.full_grad(net, params, x, TARGET)
    assert got.shape == want.shape == (2, SIZE, SIZE)
    assert rel_err(got, want) < 1e-4, rel_err(got, want)


def test_full_grad_needs_exposed_biases():
    from jaxviz.errors import ModelError

    net = models.resnet18()
    params = weights.random(net, seed=0)
    with pytest.raises(ModelError, match="full_grad needs the output of every convolution with a bias as a tap; "
                                         "'layer1_0/conv1' of"):
        A.full_grad(net, params, jnp.zeros((1, 32, 32, 3)), 0)


def test_score_cam_runs_dead_channels_once_and_still_equals_pytorch_grad_cam(setup):
    """Channels constant over the map (here killed by a large negative bias) share one forward pass of the zero
    image; the map stays pytorch-grad-cam's, for any batch size (the last chunk overlapping the previous)."""
    net, ref, params, x, xt = setup
    import copy

    dead = copy.deepcopy(ref)
    with torch.no_grad():
        dead.features[5].bias[:5] = -1e3  # conv2_1: relu2_1 channels 0-4 are all zero
    p2 = weights.from_torchvision(dead.state_dict(), net)
    a = np.asarray(jax.jit(lambda p, v: net.apply(p, v, taps=LAYER))(p2, x)[LAYER])
    assert (a[..., :5] == 0).all() and (a.max((1, 2)) > a.min((1, 2))).sum() == 2 * (a.shape[-1] - 5)
    want = peer("score_cam", dead, [INDEX], xt, [ClassifierOutputTarget(t) for t in TARGET])
    for b in (3, 5, 64):
        got = A.cam_map("score_cam", net, p2, x, TARGET, layer=LAYER, normalize=True, upsample=True, batch_size=b)
        assert rel_err(got, want) < 1e-4, (b, rel_err(got, want))
