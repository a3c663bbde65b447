"""LIME over segments (Ribeiro et al., KDD 2016), as Captum's ``Lime`` computes it by default.

Per image, ``samples`` random coalitions (each segment present with probability 1/2; absent segments set to
the baseline) are scored; each is weighted by an exponential kernel of its cosine distance to the image,
``exp(-d^2 / (2 width^2))``, ``d = 1 - cos(x, x_perturbed)`` over all values; a weighted Lasso with an
intercept (scikit-learn's objective: ``1/(2n) sum w' (y - b - z.c)^2 + alpha |c|_1``, the weights ``w'``
rescaled to sum to n) fitted on the coalitions gives each segment its coefficient, which every pixel of the
segment gets.

The forward passes run on device in one jitted program, ``batch_size`` at a time; the small Lasso runs in
float64 on the host by cyclic coordinate descent (``jax.pure_callback``, so under ``jit`` and ``vmap`` too).
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
from .shap import coalition_images, fit_per_image

__all__ = ["lime", "lime_samples", "lasso"]


def lime_samples(key: jax.Array, features: jax.Array, samples: int, width: int) -> jax.Array:
    """The coalitions (samples, width) of one image with ``features`` segments: each present with probability
    1/2 (Captum's default sampler); sample j from ``fold_in(key, j)``; columns past ``features`` stay 0."""
    cols = jnp.arange(width)
    return jax.vmap(lambda j: (jax.random.bernoulli(jax.random.fold_in(key, j), 0.5, (width,)) & (cols < features))
                    .astype(jnp.float32))(jnp.arange(samples))


def lasso(z: Any, y: Any, w: Any, alpha: float, *, tol: float = 1e-10, max_iter: int = 100_000) -> np.ndarray:
    """Weighted Lasso with an intercept (scikit-learn's ``Lasso(alpha).fit(z, y, sample_weight=w)`` objective)
    by cyclic coordinate descent in float64: (S, M), (S,), (S,) -> (M,) coefficients."""
    z, y, w = np.asarray(z, np.float64), np.asarray(y, np.float64), np.asarray(w, np.float64)
    n, m = z.shape
    sw = w * (n / w.sum())
    zm, ym = np.average(z, axis=0, weights=sw), np.average(y, weights=sw)
    root = np.sqrt(sw)[:, None]
    x = (z - zm) * root
    r = (y - ym) * root[:, 0]
    norms = (x * x).sum(0) / n
    coef = np.zeros(m)
    for _ in range(max_iter):
        biggest = 0.0
        for j in range(m):
            if norms[j] == 0:
                continue
            old = coef[j]
            rho = x[:, j] @ r / n + norms[j] * old
            new = np.sign(rho) * max(abs(rho) - alpha, 0.0) / norms[j]
            if new != old:
                r -= x[:, j] * (new - old)
                coef[j] = new
                biggest = max(biggest, abs(new - old))
        if biggest <= tol * max(1.0, np.abs(coef).max()):
            break
    return coef


def _fit(z, y, w, alpha):
    return fit_per_image(lambda zi, yi, wi: lasso(zi, yi, wi, float(alpha)), z, y, w)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "samples", "width", "batch_size"))
def _lime_core(net, params, images, labels, counts, baseline, key, alpha, kernel_width, target_idx, *, target_fn,
               samples, width, batch_size):
    _common.count_trace("lime")
    n = images.shape[0]
    f = _common.forward(net)
    keys = key if key.ndim == 1 else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    z = jax.vmap(lambda k, m: lime_samples(k, m, samples, width))(keys, counts)  # (N, S, width)

    def body(k):
        i, s = k // samples, k % samples
        x = coalition_images(z[i, s], labels[i], images[i], baseline[i])
        a, b = images[i].reshape(k.shape[0], -1), x.reshape(k.shape[0], -1)
        cos = jnp.sum(a * b, 1) / jnp.maximum(jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1), 1e-8)
        weight = jnp.exp(-((1.0 - cos) ** 2) / (2.0 * kernel_width**2))
        return _common.scores(f(params, x), target_fn, _common.gather_target(target_idx, i)), weight

    y, w = execution.chunked_map(body, n * samples, batch_size)
    coef = jax.pure_callback(_fit, jax.ShapeDtypeStruct((n, width), jnp.float32), z,
                             y.reshape(n, samples), w.reshape(n, samples), alpha, vmap_method="sequential")
    per_pixel = jnp.take_along_axis(coef, labels.reshape(n, -1), axis=1).reshape(labels.shape)
    return jnp.broadcast_to(per_pixel[..., None], images.shape)


def lime(net: Any, params: Any, images: jax.Array, target: Any, *, segments: Any = 16, samples: int = 200,
         alpha: float = 0.01, kernel_width: float = 1.0, baseline: Any = 0.0, key: Any = None,
         batch_size: int = 32) -> jax.Array:
    """LIME over segments with Captum's defaults (Lasso alpha 0.01, cosine exponential kernel of width 1).

    Equal to Captum's ``Lime(f).attribute(x, target=t, baselines=b, feature_mask=segments)`` given the same
    coalitions, up to scikit-learn's Lasso stopping rule (give it ``tol=1e-10`` to compare). Captum's default
    is 50 samples; jaxviz's is 200.

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).
      segments: a segment size in px, "slic", or integer labels (N, H, W) or (H, W).
      samples: coalitions per image.
      alpha: the Lasso's L1 weight (0: weighted least squares).
      kernel_width: the similarity kernel's width.
      baseline: what an absent segment becomes: a number or an image broadcastable to the input.
      key: PRNG key or int seed (None: ``jax.random.key(0)``): image i's coalition j from
        ``fold_in(fold_in(key, i), j)``, or ``fold_in(key[i], j)`` for one key per image (N,).
      batch_size: perturbed images per forward pass (results do not depend on it).

    Returns:
      (N, H, W, 3) attributions, a segment's coefficient on each of its pixels and channels.

    Example::

        attribution.lime(net, params, images, 207, segments="slic", samples=500, key=0)
    """
    from ._faithfulness import segment_labels

    _common.check_net(net, "lime")
    images = _common.check_images(images, net)
    n = images.shape[0]
    samples = _checks.positive_int(samples, "samples")
    if samples < 2:
        raise InputError(f"samples: expected at least 2, got {samples}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or alpha < 0:
        raise InputError(f"alpha: expected a non-negative number, got {alpha!r}")
    _checks.positive_number(kernel_width, "kernel_width")
    labels, counts = segment_labels(segments, images)
    base = _common.broadcast_baseline(baseline, images, "baseline")
    batch_size = _common.check_batch_size(batch_size)
    key = _checks.prng_keys(key, n)
    fn, idx = _common.prepare_target(target, n, net, params, images)
    width = int(counts.max()) if counts.size else 1
    return _lime_core(net, params, images, jnp.asarray(labels), jnp.asarray(counts), base, key, jnp.float32(alpha),
                      jnp.float32(kernel_width), idx, target_fn=fn, samples=samples, width=width,
                      batch_size=batch_size)
