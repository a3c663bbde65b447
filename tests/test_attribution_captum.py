"""Parity with Captum on a small VGG-layout network with the same weights.

The reference is tests/torch_reference.py (torchvision's layout, non-inplace
nn.ReLU modules so Captum's hooks work); weights.from_torchvision gives the same
weights in jaxviz. Maps are compared by relative L2 error (float32 round-off
can flip an argmax in a max-pool), at matmul precision "highest".

SmoothGrad: Captum draws its noise with torch.normal inside
``NoiseTunnel._add_noise_to_input``; the test overrides exactly that method to
add jaxviz's documented noise (``_common.normal_noise``, item ``i * samples + s``,
the same repeat_interleave order), so both sides see identical noisy images
and the comparison checks the aggregation (mean, mean of squares, variance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

import torch_reference as tr  # noqa: E402

from jaxviz import attribution as A  # noqa: E402
from jaxviz import models, weights  # noqa: E402
from jaxviz.attribution import _common  # noqa: E402

STAGES = ((8, 8), (16,))
SIZE = 32
TARGET = [3, 7]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.fixture(scope="module")
def setup():
    net = models.VGG(stages=STAGES, fc_features=32, num_classes=10, pool_output=(2, 2))
    ref = tr.make(STAGES, seed=0, num_classes=10, fc_features=32, pool_output=(2, 2))
    params = weights.from_torchvision(ref.state_dict(), net)
    x = np.random.RandomState(0).rand(2, SIZE, SIZE, 3).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        yield net, ref, params, jnp.asarray(x), tr.to_nchw(x)


def nhwc(t):
    return tr.to_nhwc(t.detach())


def test_saliency_and_input_x_gradient(setup):
    net, ref, params, x, xt = setup
    cap = captum_attr.Saliency(ref).attribute(xt.clone().requires_grad_(), target=TARGET)
    assert rel_err(A.saliency(net, params, x, TARGET), nhwc(cap)) < 1e-4
    cap = captum_attr.Saliency(ref).attribute(xt.clone().requires_grad_(), target=TARGET, abs=False)
    assert rel_err(A.saliency(net, params, x, TARGET, abs=False), nhwc(cap)) < 1e-4
    cap = captum_attr.InputXGradient(ref).attribute(xt.clone().requires_grad_(), target=TARGET)
    assert rel_err(A.input_x_gradient(net, params, x, TARGET), nhwc(cap)) < 1e-4


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_trapezoid"])
def test_integrated_gradients(setup, method):
    net, ref, params, x, xt = setup
    base = np.full((1, SIZE, SIZE, 3), 0.25, np.float32)
    steps = 6
    cap, cap_delta = captum_attr.IntegratedGradients(ref).attribute(
        xt, baselines=tr.to_nchw(base), target=TARGET, n_steps=steps, method=method, internal_batch_size=5,
        return_convergence_delta=True)
    ours, delta = A.integrated_gradients(net, params, x, TARGET, baselines=base, steps=steps, method=method,
                                         batch_size=5, return_delta=True)
    # Captum's trapezoid weights sum to (n - 1) / n instead of 1 (see quadrature()); everything else is identical
    scale = (steps - 1) / steps if method == "riemann_trapezoid" else 1.0
    assert rel_err(ours * scale, nhwc(cap)) < 1e-4
    if method != "riemann_trapezoid":
        np.testing.assert_allclose(delta, cap_delta.numpy(), atol=1e-4 * float(np.abs(ours).sum(axis=(1, 2, 3)).max()))


class _InjectedNoiseTunnel(captum_attr.NoiseTunnel):
    """NoiseTunnel whose noise is jaxviz's, passed in explicitly (NCHW, image-major)."""

    def __init__(self, method, noise):
        super().__init__(method)
        self._noise = noise

    def _add_noise_to_input(self, input, stdev, nt_samples_partition):  # noqa: A002
        return input.repeat_interleave(nt_samples_partition, dim=0) + self._noise


@pytest.mark.parametrize("variant", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_saliency(setup, variant):
    net, ref, params, x, xt = setup
    samples, stdev, key = 4, 0.2, jax.random.key(5)
    noise = stdev * _common.normal_noise(key, jnp.arange(2 * samples), x.shape[1:], samples)
    nt = _InjectedNoiseTunnel(captum_attr.Saliency(ref), tr.to_nchw(noise))
    cap = nt.attribute(xt.clone().requires_grad_(), nt_type=variant, nt_samples=samples, stdevs=stdev, target=TARGET)
    ours = A.smoothgrad(net, params, x, TARGET, variant=variant, samples=samples, stdev=stdev, key=key, batch_size=3)
    assert rel_err(ours, nhwc(cap)) < 1e-4


def test_noise_tunnel_integrated_gradients(setup):
    net, ref, params, x, xt = setup
    samples, stdev, key = 3, 0.1, jax.random.key(6)
    noise = stdev * _common.normal_noise(key, jnp.arange(2 * samples), x.shape[1:], samples)
    nt = _InjectedNoiseTunnel(captum_attr.IntegratedGradients(ref), tr.to_nchw(noise))
    cap = nt.attribute(xt.clone().requires_grad_(), nt_type="smoothgrad", nt_samples=samples, stdevs=stdev,
                       target=TARGET, n_steps=4)
    ours = A.smoothgrad(net, params, x, TARGET, method="integrated_gradients", samples=samples, stdev=stdev, key=key,
                        options={"steps": 4}, batch_size=4)
    assert rel_err(ours, nhwc(cap)) < 1e-4


def test_guided_backprop_and_deconvolution(setup):
    net, ref, params, x, xt = setup
    cap = captum_attr.GuidedBackprop(ref).attribute(xt.clone().requires_grad_(), target=TARGET)
    assert rel_err(A.guided_backprop(net, params, x, TARGET), nhwc(cap)) < 1e-4
    cap = captum_attr.Deconvolution(ref).attribute(xt.clone().requires_grad_(), target=TARGET)
    assert rel_err(A.deconvnet(net, params, x, TARGET), nhwc(cap)) < 1e-4


def test_layer_grad_cam_and_guided_grad_cam(setup):
    net, ref, params, x, xt = setup
    layer_module = ref.features[6]  # relu2_1: conv1_1 relu1_1 conv1_2 relu1_2 pool1 conv2_1 relu2_1
    gc = captum_attr.LayerGradCam(ref, layer_module)
    cap = gc.attribute(xt.clone().requires_grad_(), target=TARGET)  # Captum's default: no ReLU
    ours = A.grad_cam(net, params, x, TARGET, layer="relu2_1", relu=False)
    assert ours.shape == (2, 16, 16)
    assert rel_err(ours, cap.detach().numpy()[:, 0]) < 1e-4
    cap = gc.attribute(xt.clone().requires_grad_(), target=TARGET, relu_attributions=True)
    assert rel_err(A.grad_cam(net, params, x, TARGET, layer="relu2_1"), cap.detach().numpy()[:, 0]) < 1e-4
    cap = captum_attr.GuidedGradCam(ref, layer_module).attribute(xt.clone().requires_grad_(), target=TARGET)
    ours = A.guided_grad_cam(net, params, x, TARGET, layer="relu2_1", interpolation="nearest")
    assert rel_err(ours, nhwc(cap)) < 1e-4


@pytest.mark.parametrize("window, stride, baseline, method",
                         [(6, 4, 0.5, "full"), (6, 4, 0.5, "incremental"), ((8, 5), (8, 3), "image", "auto")])
def test_occlusion(setup, window, stride, baseline, method):
    net, ref, params, x, xt = setup
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    if baseline == "image":
        baseline = np.random.RandomState(1).rand(1, SIZE, SIZE, 3).astype(np.float32)
        cap_base = tr.to_nchw(baseline)
    else:
        cap_base = baseline
    with torch.no_grad():
        cap = captum_attr.Occlusion(ref).attribute(xt, sliding_window_shapes=(3, wh, ww), strides=(3, sh, sw),
                                                   baselines=cap_base, target=TARGET, perturbations_per_eval=16)
    ours = A.occlusion(net, params, x, TARGET, window=window, stride=stride, baseline=baseline, batch_size=16,
                       method=method)
    # each value is a difference f(x) - f(x occluded) of two nearly equal logits: float32 round-off of the
    # logits (~1e-7 relative) is amplified by |logit| / |difference|, hence the looser bound
    assert rel_err(ours, nhwc(cap)) < 1e-3


@pytest.mark.parametrize("segments", [8, "labels", "slic"])
def test_feature_ablation(setup, segments):
    """Captum's FeatureAblation with the segments as its feature_mask (broadcast over channels)."""
    from jaxviz.attribution import metrics

    net, ref, params, x, xt = setup
    if segments == "labels":  # one label image per image, different counts
        rng = np.random.default_rng(1)
        segments = np.stack([rng.integers(0, 5, (SIZE, SIZE)), rng.integers(0, 9, (SIZE, SIZE))]).astype(np.int32)
        mask = segments
    elif segments == "slic":
        pytest.importorskip("skimage")
        mask = metrics.slic_segments(x)
    else:
        mask = np.broadcast_to(metrics.grid_segments(x.shape, segments), (2, SIZE, SIZE))
    ours = A.feature_ablation(net, params, x, TARGET, segments=segments, baseline=0.25, batch_size=7)
    cap = captum_attr.FeatureAblation(ref).attribute(xt, target=TARGET, baselines=0.25,
                                                     feature_mask=torch.from_numpy(np.asarray(mask))[:, None].long())
    assert rel_err(ours, nhwc(cap)) < 1e-3
    assert np.abs(np.asarray(ours)).max() > 0


@pytest.mark.parametrize("stdev", [0.0, 0.05])
def test_gradient_shap(setup, monkeypatch, stdev):
    """Captum draws the baselines with np.random.choice, the path points with np.random.uniform and the noise
    with torch.normal in NoiseTunnel._add_noise_to_input: each is handed jaxviz's documented draws."""
    from captum.attr._core.noise_tunnel import NoiseTunnel

    from jaxviz.attribution import shap

    net, ref, params, x, xt = setup
    n, samples = x.shape[0], 4
    baselines = np.random.RandomState(3).rand(3, SIZE, SIZE, 3).astype(np.float32) * 0.5
    key = jax.random.key(11)
    ours, delta = A.gradient_shap(net, params, x, TARGET, baselines=baselines, samples=samples, stdev=stdev,
                                  key=key, batch_size=3, return_delta=True)
    which, alpha, eps = (np.asarray(v) for v in shap.shap_draws(key, jnp.arange(n * samples), x.shape[1:], samples,
                                                                  len(baselines)))
    monkeypatch.setattr(np.random, "choice", lambda *a, **k: which)
    monkeypatch.setattr(np.random, "uniform", lambda *a, **k: alpha.astype(np.float64))
    noise = torch.from_numpy(eps.transpose(0, 3, 1, 2).copy())
    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input",
                        staticmethod(lambda inp, sd, part: inp.repeat_interleave(part, dim=0) + sd * noise))
    cap, cap_delta = captum_attr.GradientShap(ref).attribute(
        xt.clone().requires_grad_(), baselines=tr.to_nchw(baselines), n_samples=samples, stdevs=stdev, target=TARGET,
        return_convergence_delta=True)
    assert rel_err(ours, nhwc(cap)) < 1e-4, rel_err(ours, nhwc(cap))
    assert np.abs(np.asarray(ours)).max() > 0
    # each draw's convergence delta, image-major as Captum's (N * samples,)
    assert delta.shape == (n, samples)
    np.testing.assert_allclose(np.asarray(delta).reshape(-1), cap_delta.detach().numpy(), rtol=1e-3,
                               atol=1e-4 * np.abs(cap_delta.detach().numpy()).max())
    assert np.abs(cap_delta.detach().numpy()).max() > 0


def test_kernel_shap(setup, monkeypatch):
    """Captum's KernelShap draws its coalitions from kernel_shap_perturb_generator: it is handed jaxviz's
    (image i's from fold_in(key, i)); the weighted regressions (scikit-learn's for Captum) then agree."""
    from captum.attr._core.kernel_shap import KernelShap

    from jaxviz.attribution import metrics, shap

    net, ref, params, x, xt = setup
    samples, key = 40, jax.random.key(4)
    labels = metrics.grid_segments(x.shape, 8)  # 16 squares
    ours = A.kernel_shap(net, params, x, TARGET, segments=8, samples=samples, baseline=0.3, key=key, batch_size=9)
    draws = iter([np.asarray(shap.kernel_shap_samples(jax.random.fold_in(key, i), 16, samples, 16))
                  for i in range(len(TARGET))])

    def generator(self, original_inp, **kwargs):
        for row in next(draws):
            yield torch.from_numpy(row[None].astype(np.int64))

    monkeypatch.setattr(KernelShap, "kernel_shap_perturb_generator", generator)
    mask = torch.from_numpy(np.broadcast_to(labels, (2, SIZE, SIZE)).copy())[:, None].long()
    cap = KernelShap(ref).attribute(xt, target=TARGET, baselines=0.3, feature_mask=mask, n_samples=samples)
    assert rel_err(ours, nhwc(cap)) < 1e-4, rel_err(ours, nhwc(cap))
    assert np.abs(np.asarray(ours)).max() > 0


def test_kernel_shap_samples_follow_the_shapley_kernel():
    from jaxviz.attribution import shap

    z = np.asarray(shap.kernel_shap_samples(jax.random.key(0), 6, 4002, 9))
    assert (z[0, :6] == 1).all() and (z[1] == 0).all() and (z[:, 6:] == 0).all()
    sizes = z[2:].sum(1).astype(int)
    p = np.array([5 / (k * (6 - k)) for k in range(1, 6)])
    p /= p.sum()
    np.testing.assert_allclose(np.bincount(sizes, minlength=6)[1:] / len(sizes), p, atol=0.02)
    assert abs(z[2:, :6].mean(0) - z[2:, :6].mean()).max() < 0.03  # every segment equally likely


def test_lime(setup):
    """Captum's Lime with its defaults (exponential cosine kernel, Lasso alpha 0.01; tol 1e-10 so it converges
    like jaxviz's), handed jaxviz's coalitions (image i's from fold_in(key, i)) as its perturbation generator.
    The classifier is scaled up so that the logits move by more than the L1 term's threshold."""
    import copy

    from captum._utils.models.linear_model import SkLearnLasso

    from jaxviz.attribution import metrics
    from jaxviz.attribution.surrogate import lime_samples

    net, ref, _, x, xt = setup
    ref = copy.deepcopy(ref)
    with torch.no_grad():
        for name in ("classifier.0", "classifier.3", "classifier.6"):
            ref.get_submodule(name).weight.mul_(30.0)
    params = weights.from_torchvision(ref.state_dict(), net)
    samples, key = 60, jax.random.key(8)
    labels = metrics.grid_segments(x.shape, 8)
    ours = A.lime(net, params, x, TARGET, segments=8, samples=samples, baseline=0.3, key=key, batch_size=11)
    draws = iter([np.asarray(lime_samples(jax.random.fold_in(key, i), 16, samples, 16)) for i in range(len(TARGET))])

    def generator(original_inp, **kwargs):
        for row in next(draws):
            yield torch.from_numpy(row[None].astype(np.int64))

    lime = captum_attr.Lime(ref, interpretable_model=SkLearnLasso(alpha=0.01, tol=1e-10, max_iter=100_000),
                            perturb_func=generator)
    mask = torch.from_numpy(np.broadcast_to(labels, (2, SIZE, SIZE)).copy())[:, None].long()
    cap = lime.attribute(xt, target=TARGET, baselines=0.3, feature_mask=mask, n_samples=samples)
    assert rel_err(ours, nhwc(cap)) < 1e-3, rel_err(ours, nhwc(cap))
    nonzero = np.abs(np.asarray(ours)[:, ::8, ::8, 0]) > 0
    assert 4 <= nonzero.sum() < nonzero.size  # some segments kept, some zeroed by the L1 term
