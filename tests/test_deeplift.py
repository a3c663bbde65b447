"""DeepLIFT (rescale) and DeepLIFT-SHAP: Captum parity on the same VGG weights, summation to f(x) - f(x0),
closed forms, functional ReLUs (which Captum cannot hook)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import attribution as A
from jaxviz import models, weights
from jaxviz.errors import InputError

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

import torch_reference as tr  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum warns that it sets hooks

STAGES = ((8, 8), (16,))
SIZE = 32
TARGET = [3, 7]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _setup(pooling):
    net = models.VGG(stages=STAGES, fc_features=32, num_classes=10, pool_output=(2, 2), pooling=pooling)
    ref = tr.make(STAGES, seed=0, num_classes=10, fc_features=32, pool_output=(2, 2), pooling=pooling)
    params = weights.from_torchvision(ref.state_dict(), net)
    x = np.random.RandomState(0).rand(2, SIZE, SIZE, 3).astype(np.float32)
    return net, ref, params, x


@pytest.fixture(scope="module")
def vgg():
    return _setup("max")


BASES = {"zero": 0.0, "per_image": np.random.RandomState(1).rand(2, SIZE, SIZE, 3).astype(np.float32) * 0.5}


@pytest.mark.parametrize("base", sorted(BASES))
def test_equals_captums_deeplift(vgg, base):
    """max_pool="gradient" is what Captum computes on VGG (its ReLU hook captures the pool's plain gradient,
    see attribution.rescale); attributions and convergence deltas agree."""
    net, ref, params, x = vgg
    b = BASES[base]
    bt = torch.zeros(2, 3, SIZE, SIZE) if np.isscalar(b) else tr.to_nchw(b)
    cap, cap_delta = captum_attr.DeepLift(ref).attribute(tr.to_nchw(x).requires_grad_(), baselines=bt, target=TARGET,
                                                         return_convergence_delta=True)
    with jax.default_matmul_precision("highest"):
        ours, delta = A.deeplift(net, params, jnp.asarray(x), TARGET, baselines=b, return_delta=True,
                                 max_pool="gradient", batch_size=1)
    assert rel_err(ours, tr.to_nhwc(cap.detach())) < 1e-5
    np.testing.assert_allclose(delta, cap_delta.detach().numpy(), rtol=1e-3, atol=1e-8)


def test_equals_captums_deeplift_shap(vgg):
    net, ref, params, x = vgg
    bs = np.random.RandomState(2).rand(3, SIZE, SIZE, 3).astype(np.float32)
    cap, cap_delta = captum_attr.DeepLiftShap(ref).attribute(tr.to_nchw(x).requires_grad_(), baselines=tr.to_nchw(bs),
                                                             target=TARGET, return_convergence_delta=True)
    with jax.default_matmul_precision("highest"):
        ours, delta = A.deeplift_shap(net, params, jnp.asarray(x), TARGET, baselines=bs, return_delta=True,
                                      max_pool="gradient", batch_size=4)
    assert rel_err(ours, tr.to_nhwc(cap.detach())) < 1e-5
    assert delta.shape == (2, 3)
    np.testing.assert_allclose(delta.reshape(-1), cap_delta.detach().numpy(), rtol=1e-3, atol=1e-8)


def test_default_max_pool_rule_sums_to_the_output_difference(vgg):
    """The documented max-pool rule (the default) makes the attributions sum to f(x) - f(x0); Captum's
    numbers (max_pool="gradient") miss by their convergence delta."""
    net, ref, params, x = vgg
    with jax.default_matmul_precision("highest"):
        ours, delta = A.deeplift(net, params, jnp.asarray(x), TARGET, baselines=0.0, return_delta=True)
        _, cap_like = A.deeplift(net, params, jnp.asarray(x), TARGET, baselines=0.0, return_delta=True,
                                 max_pool="gradient")
        logits = net.apply(params, jnp.asarray(x))
        base = net.apply(params, jnp.zeros_like(x))
    diff = np.asarray(logits - base)[[0, 1], TARGET]
    scale = float(np.abs(np.asarray(logits)).max())  # float32 round-off of f(x) - f(x0) is relative to the logits
    np.testing.assert_allclose(np.asarray(ours).sum(axis=(1, 2, 3)), diff, rtol=0, atol=1e-6 * scale)
    assert np.all(np.abs(delta) < 1e-6 * scale)
    assert np.all(np.abs(cap_like) > 1e-2 * np.abs(diff))  # what the documented rule fixes (10% here)


def test_without_max_pools_equals_captum_by_default():
    net, ref, params, x = _setup("avg")
    cap = captum_attr.DeepLift(ref).attribute(tr.to_nchw(x).requires_grad_(), baselines=torch.zeros(2, 3, SIZE, SIZE),
                                              target=TARGET)
    with jax.default_matmul_precision("highest"):
        ours = A.deeplift(net, params, jnp.asarray(x), TARGET)
    assert rel_err(ours, tr.to_nhwc(cap.detach())) < 1e-5


def test_closed_forms_on_functional_models():
    """A linear function: (x - x0) * w exactly. A functional ReLU (jnp.maximum, which Captum cannot hook) on one
    unit: the rescale multiplier (relu(z) - relu(z0)) / (z - z0)."""
    w = jnp.asarray(np.random.RandomState(3).randn(4 * 4 * 3, 2), jnp.float32)
    lin = lambda p, x: x.reshape(x.shape[0], -1) @ p  # noqa: E731
    x = jnp.asarray(np.random.RandomState(4).rand(2, 4, 4, 3), jnp.float32)
    got = A.deeplift(lin, w, x, 1, baselines=0.25)
    np.testing.assert_allclose(got, (x - 0.25) * w[:, 1].reshape(4, 4, 3), rtol=1e-5, atol=1e-7)

    def unit(p, x):
        z = x.reshape(x.shape[0], -1) @ p
        return jnp.maximum(z, 0.0) * jnp.array([1.0, -2.0])

    z = np.asarray(x.reshape(2, -1) @ w)
    z0 = np.asarray(jnp.full((1, 48), 0.25) @ w)
    mult = (np.maximum(z, 0) - np.maximum(z0, 0)) / (z - z0)
    got = np.asarray(A.deeplift(unit, w, x, 1, baselines=0.25))
    want = (np.asarray(x) - 0.25) * (-2.0 * mult[:, 1])[:, None, None, None] * np.asarray(w[:, 1]).reshape(4, 4, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # DeepLIFT-SHAP over one baseline is DeepLIFT
    np.testing.assert_allclose(A.deeplift_shap(unit, w, x, 1, baselines=0.25), got, rtol=1e-6)


def test_errors(vgg):
    net, _, params, x = vgg
    xj = jnp.asarray(x)
    with pytest.raises(InputError, match="max_pool: expected one of 'rescale', 'gradient'"):
        A.deeplift(net, params, xj, 0, max_pool="winner")
    with pytest.raises(InputError, match="eps: expected a positive number"):
        A.deeplift(net, params, xj, 0, eps=0)
    with pytest.raises(InputError, match="baselines: expected"):
        A.deeplift_shap(net, params, xj, 0, baselines=np.zeros((2, 8, 8, 3)))
    with pytest.raises(InputError, match="return_delta"):
        A.deeplift(net, params, xj, 0, return_delta="yes")


def test_resnet_sums_to_the_output_difference():
    """jaxviz's ResNet-18 (residual adds keep their gradient, the 3x3/2 max pool gets the rule): the
    attributions sum to f(x) - f(x0). Captum cannot run DeepLift on torchvision's ResNet (each block reuses
    one ReLU module, which its hooks refuse)."""
    net = models.resnet18(num_classes=10)
    params = weights.random(net, seed=0)
    x = jnp.asarray(np.random.RandomState(5).rand(2, 32, 32, 3), jnp.float32)
    with jax.default_matmul_precision("highest"):
        attr, delta = A.deeplift(net, params, x, [1, 4], baselines=0.1, return_delta=True)
        logits = np.asarray(net.apply(params, x))
        base = np.asarray(net.apply(params, jnp.full_like(x, 0.1)))
    diff = (logits - base)[[0, 1], [1, 4]]
    scale = float(np.abs(logits).max())
    np.testing.assert_allclose(np.asarray(attr).sum(axis=(1, 2, 3)), diff, rtol=0, atol=1e-5 * scale)
    assert np.all(np.abs(delta) < 1e-5 * scale) and np.all(np.abs(diff) > 1e-3 * scale)
