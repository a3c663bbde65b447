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

__all__ = ["gradient_shap", "shap_draws"]


def shap_draws(key: jax.Array, items: jax.Array, shape: tuple[int, ...], samples: int, baselines: int):
    """The draws of items ``i * samples + s``: (baseline index (m,), alpha (m,), standard noise (m,) + shape)."""

    def one(k):
        k0, k1, k2 = jax.random.split(_common.item_key(key, k, samples), 3)
        size = int(np.prod(shape))
        return (jax.random.randint(k0, (), 0, baselines), jax.random.uniform(k1, ()),
                jax.random.normal(k2, (size,), jnp.float32).reshape(shape))

    return jax.vmap(one)(items)


def _items(net, params, images, baselines, stdev, key, target_idx, k, target_fn, samples):
    i = k // samples
    which, alpha, eps = shap_draws(key, k, images.shape[1:], samples, baselines.shape[0])
    x = images[i] + stdev * eps
    b = baselines[which]
    point = b + alpha[:, None, None, None] * (x - b)
    g = gradients(net, params, point, target_fn, None if target_idx is None else target_idx[i])
    return g * (x - b)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "samples"))
def _chunk(net, params, images, baselines, stdev, key, target_idx, k, *, target_fn, samples):
    _common.count_trace("gradient_shap")
    a = _items(net, params, images, baselines, stdev, key, target_idx, k, target_fn, samples)
    return jax.ops.segment_sum(a, k // samples, images.shape[0])


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "samples", "batch_size"))
def _traced(net, params, images, baselines, stdev, key, target_idx, *, target_fn, samples, batch_size):
    _common.count_trace("gradient_shap")
    n = images.shape[0]
    img_of = jnp.arange(n * samples, dtype=jnp.int32) // samples
    return execution.chunked_sum(
        lambda k: _items(net, params, images, baselines, stdev, key, target_idx, k, target_fn, samples),
        n * samples, batch_size, img_of, n)


def gradient_shap(net: Any, params: Any, images: jax.Array, target: Any, *, baselines: Any = 0.0,
                  samples: int = 5, stdev: float = 0.0, key: Any = None, batch_size: int = 16) -> jax.Array:
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

    Returns:
      (N, H, W, 3) attributions (signed).

    Example::

        blurred = jnp.stack([image.gaussian_blur(x, s) for s in (4, 8, 16)])
        attribution.gradient_shap(net, params, images, 207, baselines=blurred, samples=32, key=0)
    """
    _common.check_net(net, "gradient_shap")
    images = _common.check_images(images, net)
    n = images.shape[0]
    if isinstance(baselines, (int, float, np.integer, np.floating)) and not isinstance(baselines, bool):
        base = jnp.full((1,) + images.shape[1:], float(baselines), images.dtype)
    else:
        base = jnp.asarray(baselines, images.dtype) if hasattr(baselines, "shape") else None
        if base is not None and base.shape == images.shape[1:]:
            base = base[None]
        if base is None or base.ndim != 4 or base.shape[1:] != images.shape[1:] or base.shape[0] < 1:
            raise InputError(f"baselines: expected a number, an image {tuple(images.shape[1:])} or images "
                             f"(B, {', '.join(map(str, images.shape[1:]))}), got "
                             f"{getattr(baselines, 'shape', type(baselines).__name__)}")
    samples = _checks.positive_int(samples, "samples")
    if isinstance(stdev, bool) or not isinstance(stdev, (int, float, np.number)) or stdev < 0:
        raise InputError(f"stdev: expected a non-negative number, got {stdev!r}")
    batch_size = _common.check_batch_size(batch_size)
    key = _checks.prng_keys(key, n)
    fn, idx = _common.prepare_target(target, n, net, params, images)
    sd = jnp.float32(stdev)
    if execution.is_traced(params, images, base, key, idx):
        total = _traced(net, params, images, base, sd, key, idx, target_fn=fn, samples=samples,
                        batch_size=batch_size)
    else:  # eager: one compiled chunk function looped over on the host (see execution.host_sum)
        total = execution.host_sum(
            lambda k: _chunk(net, params, images, base, sd, key, idx, k, target_fn=fn, samples=samples),
            n * samples, batch_size)
    return total / samples
