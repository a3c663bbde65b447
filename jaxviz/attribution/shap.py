"""GradientSHAP (Lundberg and Lee, NeurIPS 2017; Captum's ``GradientShap``): expected gradients over a
distribution of baselines.

For each of ``samples`` draws per image: a baseline ``b`` picked uniformly from the given ones, a point
``alpha ~ U(0, 1)`` on the straight path from ``b`` to the image, Gaussian noise of ``stdev`` added to the
image first; the sample's attribution is ``d score / dx`` at ``b + alpha (x + noise - b)`` times
``x + noise - b``; the map is the mean over the draws. With one zero baseline and many draws it tends to
integrated gradients from black.

Draws: sample s of image i uses ``k = fold_in(key, i * samples + s)`` (or ``fold_in(key[i], s)`` for one
key per image), split in three: the baseline index ``randint(k0, 0, B)``, ``alpha = uniform(k1)`` and the
noise ``normal(k2, image shape) * stdev``. All draws' gradients run in one jitted function, ``batch_size``
images per backward pass.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks, execution
from ..errors import InputError
from . import _common
from .saliency import gradients

__all__ = ["gradient_shap", "shap_draws", "kernel_shap", "kernel_shap_samples", "INF_WEIGHT"]


def shap_draws(key: jax.Array, items: jax.Array, shape: tuple[int, ...], samples: int, baselines: int):
    """The draws of items ``i * samples + s``: (baseline index (m,), alpha (m,), standard noise (m,) + shape)."""

    def one(k):
        k0, k1, k2 = jax.random.split(_common.item_key(key, k, samples), 3)
        size = int(np.prod(shape))
        return (jax.random.randint(k0, (), 0, baselines), jax.random.uniform(k1, ()),
                jax.random.normal(k2, (size,), jnp.float32).reshape(shape))

    return jax.vmap(one)(items)


def _items(net, params, images, baselines, stdev, key, target_idx, k, target_fn, samples, delta):
    """Draws ``k``: their attributions, and with ``delta`` each draw's convergence delta in its column
    ``k % samples`` of an (m, samples) array (summed per image by the callers)."""
    i = k // samples
    which, alpha, eps = shap_draws(key, k, images.shape[1:], samples, baselines.shape[0])
    x = images[i] + stdev * eps
    b = baselines[which]
    point = b + alpha[:, None, None, None] * (x - b)
    idx = None if target_idx is None else target_idx[i]
    a = gradients(net, params, point, target_fn, idx) * (x - b)
    if not delta:
        return a, None
    f = _common.forward(net)
    change = _common.scores(f(params, x), target_fn, idx) - _common.scores(f(params, b), target_fn, idx)
    d = jnp.sum(a, axis=tuple(range(1, a.ndim))) - change
    return a, _common.draw_columns(d, k, samples)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "samples", "delta"))
def _chunk(net, params, images, baselines, stdev, key, target_idx, k, *, target_fn, samples, delta):
    _common.count_trace("gradient_shap")
    out = _items(net, params, images, baselines, stdev, key, target_idx, k, target_fn, samples, delta)
    return jax.tree.map(lambda v: jax.ops.segment_sum(v, k // samples, images.shape[0]), out)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "samples", "batch_size", "delta"))
def _traced(net, params, images, baselines, stdev, key, target_idx, *, target_fn, samples, batch_size, delta):
    _common.count_trace("gradient_shap")
    n = images.shape[0]
    img_of = jnp.arange(n * samples, dtype=jnp.int32) // samples
    return execution.chunked_sum(
        lambda k: _items(net, params, images, baselines, stdev, key, target_idx, k, target_fn, samples, delta),
        n * samples, batch_size, img_of, n)


def gradient_shap(net: Any, params: Any, images: jax.Array, target: Any, *, baselines: Any = 0.0,
                  samples: int = 5, stdev: float = 0.0, key: Any = None, batch_size: int = 16,
                  return_delta: bool = False) -> Any:
    """GradientSHAP: the mean over random baselines and path points of gradient x (input - baseline).

    Equal to Captum's ``GradientShap(f).attribute(x, baselines, n_samples=samples, stdevs=stdev, target=t)``
    given the same draws (the tests hand Captum jaxviz's through the NumPy and torch calls it draws with).

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).
      baselines: the distribution of baselines: a number, one image (H, W, 3), or B images (B, H, W, 3)
        (e.g. a few blurred or random images; Captum's GradientShap wants several).
      samples: draws per image (Captum's ``n_samples``, default 5).
      stdev: standard deviation of the Gaussian noise added to the image (Captum's ``stdevs``, default 0).
      key: PRNG key or int seed (None: ``jax.random.key(0)``), or one key per image (N,); see the module.
      batch_size: draws per backward pass (results do not depend on it).
      return_delta: also return each draw's convergence delta, ``sum(attr_draw) - (f(x + noise) - f(baseline))``,
        as (N, samples) (Captum's ``return_convergence_delta``; its (N * samples,) are the same numbers, flat).

    Returns:
      (N, H, W, 3) attributions (signed), or ``(attributions, delta)``.

    Example::

        blurred = jnp.stack([image.gaussian_blur(x, s) for s in (4, 8, 16)])
        attribution.gradient_shap(net, params, images, 207, baselines=blurred, samples=32, key=0)
    """
    _common.check_net(net, "gradient_shap")
    images = _common.check_images(images, net)
    n = images.shape[0]
    base = _common.baseline_set(baselines, images)
    samples = _checks.positive_int(samples, "samples")
    if isinstance(stdev, bool) or not isinstance(stdev, (int, float, np.number)) or stdev < 0:
        raise InputError(f"stdev: expected a non-negative number, got {stdev!r}")
    batch_size = _common.check_batch_size(batch_size)
    key = _checks.prng_keys(key, n)
    fn, idx = _common.prepare_target(target, n, net, params, images)
    if not isinstance(return_delta, (bool, np.bool_)):
        raise InputError(f"return_delta: expected True or False, got {return_delta!r}")
    sd = jnp.float32(stdev)
    delta = bool(return_delta)
    if execution.is_traced(params, images, base, key, idx):
        total, deltas = _traced(net, params, images, base, sd, key, idx, target_fn=fn, samples=samples,
                                batch_size=batch_size, delta=delta)
    else:  # eager: one compiled chunk function looped over on the host (see execution.host_sum)
        total, deltas = execution.host_sum(
            lambda k: _chunk(net, params, images, base, sd, key, idx, k, target_fn=fn, samples=samples,
                             delta=delta),
            n * samples, batch_size)
    return (total / samples, deltas) if delta else total / samples


# --------------------------------------------------------------------------------------------
# KernelSHAP over segments

#: The weight KernelSHAP gives its all-present and all-absent samples (Captum's ``inf_weight``): the fitted
#: model then (almost) meets both end points, ``f(x)`` and ``f(baseline)``.
INF_WEIGHT = 1e6


def kernel_shap_samples(key: jax.Array, features: jax.Array, samples: int, width: int) -> jax.Array:
    """The coalitions (samples, width) of one image with ``features`` segments (<= width; the rest of the
    columns stay 0): all present, all absent, then per sample a size ``k`` in 1..M-1 drawn with
    ``p(k) ~ (M - 1) / (k (M - k))`` and ``k`` segments drawn uniformly (Captum's KernelShap sampler).
    Sample j >= 2 uses ``fold_in(key, j)``."""
    m = features
    ks = jnp.arange(width + 1, dtype=jnp.float32)
    ok = (ks >= 1) & (ks <= m - 1)
    logits = jnp.where(ok, jnp.log(jnp.maximum(m - 1, 1) / jnp.where(ok, ks * (m - ks), 1.0)), -jnp.inf)
    cols = jnp.arange(width)

    def one(j):
        k1, k2 = jax.random.split(jax.random.fold_in(key, j))
        k = jnp.where(m > 1, jax.random.categorical(k1, logits), 0)
        vals = jnp.where(cols < m, jax.random.normal(k2, (width,)), -jnp.inf)
        rank = jnp.argsort(jnp.argsort(-vals))
        return (rank < k).astype(jnp.float32)

    rest = jax.vmap(one)(jnp.arange(2, samples))
    ones = (cols < m).astype(jnp.float32)[None]
    return jnp.concatenate([ones, jnp.zeros_like(ones), rest])[:samples]


def coalition_images(z: jax.Array, labels: jax.Array, images: jax.Array, baseline: jax.Array) -> jax.Array:
    """Images with the segments absent from their coalition set to the baseline: z (m, M) coalitions, labels
    (m, H, W), images and baselines (m, H, W, C)."""
    present = jnp.take_along_axis(z, labels.reshape(labels.shape[0], -1), axis=1).reshape(labels.shape)
    return jnp.where(present[..., None] > 0, images, baseline)


def fit_per_image(solve: Any, z: Any, y: Any, w: Any) -> np.ndarray:
    """Host side of the surrogate fits (KernelSHAP, LIME): ``solve(z_i, y_i, w_i) -> (M,)`` in float64 for every
    image of (..., S, M) coalitions, (..., S) scores and weights; an image whose scores are not finite (a traced
    out-of-range target) gets a NaN map."""
    z, y, w = np.asarray(z, np.float64), np.asarray(y, np.float64), np.asarray(w, np.float64)
    out = np.zeros(z.shape[:-2] + z.shape[-1:], np.float32)
    for idx in np.ndindex(*z.shape[:-2]):
        out[idx] = solve(z[idx], y[idx], w[idx]) if np.isfinite(y[idx]).all() else np.nan
    return out


def _wls(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least squares with an intercept (as scikit-learn's LinearRegression, which Captum uses):
    (S, M), (S,), (S,) -> (M,) coefficients (min-norm: unused columns 0)."""
    sw = np.sqrt(w)
    zm, ym = np.average(z, axis=0, weights=w), np.average(y, weights=w)
    coef, *_ = np.linalg.lstsq((z - zm) * sw[:, None], (y - ym) * sw, rcond=None)
    return coef


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "samples", "width", "batch_size"))
def _kernel_shap_core(net, params, images, labels, counts, baseline, key, target_idx, *, target_fn, samples, width,
                      batch_size):
    _common.count_trace("kernel_shap")
    n = images.shape[0]
    f = _common.forward(net)
    keys = key if key.ndim == 1 else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    z = jax.vmap(lambda k, m: kernel_shap_samples(k, m, samples, width))(keys, counts)  # (N, S, width)

    def body(k):
        i, s = k // samples, k % samples
        x = coalition_images(z[i, s], labels[i], images[i], baseline[i])
        return _common.scores(f(params, x), target_fn, _common.gather_target(target_idx, i))

    y = execution.chunked_map(body, n * samples, batch_size).reshape(n, samples)
    w = jnp.ones((n, samples), jnp.float32).at[:, :2].set(INF_WEIGHT)
    coef = jax.pure_callback(functools.partial(fit_per_image, _wls), jax.ShapeDtypeStruct((n, width), jnp.float32),
                             z, y, w, vmap_method="sequential")
    per_pixel = jnp.take_along_axis(coef, labels.reshape(n, -1), axis=1).reshape(labels.shape)
    return jnp.broadcast_to(per_pixel[..., None], images.shape)


def kernel_shap(net: Any, params: Any, images: jax.Array, target: Any, *, segments: Any = 16, samples: int = 200,
                baseline: Any = 0.0, key: Any = None, batch_size: int = 32) -> jax.Array:
    """KernelSHAP over segments (Lundberg and Lee 2017), as Captum's ``KernelShap`` computes it.

    ``samples`` coalitions of segments (all present and all absent first, weighted 1e6; the rest drawn from
    the Shapley kernel's distribution, weighted 1) are scored with the absent segments set to the baseline;
    a weighted linear regression with an intercept of the scores on the coalitions gives each segment its
    Shapley value estimate, which every pixel of the segment gets. The forward passes run on device in one
    jitted program, ``batch_size`` at a time; the (samples x segments) regression runs in float64 on the
    host (``jax.pure_callback``; scikit-learn's ``LinearRegression`` does the same for Captum).

    Captum's default is 25 samples, few for an image's dozens of segments; jaxviz's is 200.

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).
      segments: a segment size in px, "slic", or integer labels (N, H, W) or (H, W), as for
        :func:`feature_ablation`.
      samples: coalitions per image (at least 3).
      baseline: what an absent segment becomes: a number or an image broadcastable to the input.
      key: PRNG key or int seed (None: ``jax.random.key(0)``): image i's coalition j uses
        ``fold_in(fold_in(key, i), j)``; or one key per image (N,): ``fold_in(key[i], j)``.
      batch_size: perturbed images per forward pass (results do not depend on it).

    Returns:
      (N, H, W, 3) attributions, a segment's value on each of its pixels and channels.

    Example::

        attribution.kernel_shap(net, params, images, 207, segments="slic", samples=500, key=0)
    """
    from ._faithfulness import segment_labels

    _common.check_net(net, "kernel_shap")
    images = _common.check_images(images, net)
    n = images.shape[0]
    samples = _checks.positive_int(samples, "samples")
    if samples < 3:
        raise InputError(f"samples: expected at least 3 (the two end points and one coalition), got {samples}")
    labels, counts = segment_labels(segments, images)
    base = _common.broadcast_baseline(baseline, images, "baseline")
    batch_size = _common.check_batch_size(batch_size)
    key = _checks.prng_keys(key, n)
    fn, idx = _common.prepare_target(target, n, net, params, images)
    width = int(counts.max()) if counts.size else 1
    return _kernel_shap_core(net, params, images, jnp.asarray(labels), jnp.asarray(counts), base, key, idx,
                             target_fn=fn, samples=samples, width=width, batch_size=batch_size)
