"""SmoothGrad, SmoothGrad-squared and VarGrad over any attribution method.

For each image, ``samples`` noisy copies ``x + eps`` (eps ~ N(0, sigma^2)) go
through a base method; the maps are averaged (``smoothgrad``), their squares
averaged (``smoothgrad_sq``), or their variance taken (``vargrad``,
E[a^2] - E[a]^2, as Captum computes it).

Noise sample ``s`` of image ``i`` is drawn from ``jax.random.fold_in(key, i *
samples + s)``, so it depends only on the key and the position, never on
``batch_size``; the order (image-major) is Captum's ``repeat_interleave``
order. With one key per image (``key`` of shape (N,)) it is drawn from
``fold_in(key[i], s)`` instead: an image's map then depends on its own key
only, not on its position, so batches split any way, or sharded over devices
with ``parallel.data_parallel``, give the same maps.

References: D. Smilkov et al., "SmoothGrad: removing noise by adding noise",
2017; J. Adebayo et al., "Local Explanation Methods for Deep Neural Networks
Lack Sensitivity to Parameter Values", 2018 (VarGrad).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks, execution
from ..errors import InputError
from . import _common

__all__ = ["smoothgrad", "noise", "VARIANTS"]

VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def noise(key: jax.Array, items: jax.Array, shape: tuple[int, ...], samples: int) -> jax.Array:
    """Standard-normal noise for the given item numbers: (len(items),) + shape.

    Item ``i * samples + s`` is sample ``s`` of image ``i``; it is drawn from
    ``jax.random.fold_in(key, i * samples + s)``, or from ``fold_in(key[i], s)``
    for one key per image (see ``_common.item_key``).
    """
    return _common.normal_noise(key, items, shape, samples)


def _item_maps(net, params, images, sigma, key, target_idx, opts, k, target_fn, base, samples):
    """Base-method maps (a, a^2) of the noisy items k (item = image * samples + sample)."""
    i = k // samples
    x = images[i] + sigma[i][:, None, None, None] * noise(key, k, images.shape[1:], samples)
    t = target_fn if target_fn is not None else target_idx[i]
    a = base(net, params, x, t, **opts)
    return a, a * a


_STATIC = ("net", "target_fn", "base", "static_opts", "samples", "batch_size", "pass_batch")


def _options(static_opts, dyn_opts, pass_batch, batch_size):
    opts = dict(static_opts, **dyn_opts)
    if pass_batch:
        opts["batch_size"] = batch_size
    return opts


@functools.partial(jax.jit, static_argnames=_STATIC)
def _chunk(net, params, images, sigma, key, target_idx, dyn_opts, k, *, target_fn, base, static_opts, samples,
           batch_size, pass_batch):
    _common.count_trace("smoothgrad")
    opts = _options(static_opts, dyn_opts, pass_batch, batch_size)
    a, a2 = _item_maps(net, params, images, sigma, key, target_idx, opts, k, target_fn, base, samples)
    seg, n = k // samples, images.shape[0]
    return jax.ops.segment_sum(a, seg, n), jax.ops.segment_sum(a2, seg, n)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _traced(net, params, images, sigma, key, target_idx, dyn_opts, *, target_fn, base, static_opts, samples,
            batch_size, pass_batch):
    # under an outer transform: the chunks run inside this trace (see execution.chunked_sum)
    _common.count_trace("smoothgrad")
    n = images.shape[0]
    opts = _options(static_opts, dyn_opts, pass_batch, batch_size)
    img_of = jnp.arange(n * samples, dtype=jnp.int32) // samples

    def body(k):
        return _item_maps(net, params, images, sigma, key, target_idx, opts, k, target_fn, base, samples)

    return execution.chunked_sum(body, n * samples, batch_size, img_of, n)


def _combine(mean, mean_sq, variant):
    if variant == "smoothgrad":
        return mean
    if variant == "smoothgrad_sq":
        return mean_sq
    return mean_sq - mean * mean


def smoothgrad(
    net: Any,
    params: Any,
    images: jax.Array,
    target: Any,
    *,
    method: str | Callable = "saliency",
    variant: str = "smoothgrad",
    samples: int = 50,
    stdev: float | None = None,
    noise_level: float = 0.15,
    key: jax.Array | None = None,
    batch_size: int = 16,
    options: Mapping[str, Any] | None = None,
) -> jax.Array:
    """SmoothGrad / SmoothGrad-squared / VarGrad of any attribution method.

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits`` (when the
        base method accepts one).
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).
      method: the base method: a name from :data:`jaxviz.attribution.METHODS`
        (``"saliency"``, ``"input_x_gradient"``, ``"integrated_gradients"``,
        ``"guided_backprop"``, ...) or a callable with the same signature.
      variant: ``"smoothgrad"`` (mean), ``"smoothgrad_sq"`` (mean of squares) or
        ``"vargrad"`` (variance).
      samples: noisy copies per image.
      stdev: absolute standard deviation of the Gaussian noise (Captum's ``stdevs``).
      noise_level: used when ``stdev`` is None: sigma = noise_level * (max - min)
        of each image (Smilkov et al. suggest 0.1 - 0.2).
      key: a JAX PRNG key or an int seed; None means ``jax.random.key(0)``.
        Or one key per image, shape (N,) (e.g. ``jax.random.split(key, N)``):
        each image's noise then depends on its key alone, not on its place in
        the batch; use this form under ``parallel.data_parallel``.
      batch_size: noisy images per call of the base method (passed on to the
        base method's own ``batch_size`` when it has one); the result does not
        depend on it.
      options: keyword options for the base method, e.g. ``{"abs": False}`` or
        ``{"steps": 20}``.

    Returns:
      Attributions with the base method's output shape, (N, H, W, 3) for pixel methods.

    Raises:
      InputError: bad ``images``, ``target``, ``method``, ``variant``, ``samples``,
        ``stdev``/``noise_level`` or ``batch_size``.

    Example::

        attr = smoothgrad(net, params, images, 207, samples=32, noise_level=0.15,
                          key=jax.random.key(1), options={"abs": False})
    """
    images = _common.check_images(images, net)
    base = _common.resolve_method(method, exclude=("smoothgrad",))
    _checks.one_of(variant, "variant", VARIANTS)
    samples = _checks.positive_int(samples, "samples")
    batch_size = _common.check_batch_size(batch_size)
    options = _common.check_options(base, options)
    if "batch_size" in options:
        raise InputError("options: pass batch_size to smoothgrad itself (it is handed on to the base method)")
    n = images.shape[0]
    if stdev is not None:
        if isinstance(stdev, bool) or not isinstance(stdev, (int, float, np.number)) or stdev < 0:
            raise InputError(f"stdev: expected a non-negative number, got {stdev!r}")
        sigma = jnp.full((n,), float(stdev), jnp.float32)
    else:
        if isinstance(noise_level, bool) or not isinstance(noise_level, (int, float, np.number)) or noise_level < 0:
            raise InputError(f"noise_level: expected a non-negative number, got {noise_level!r}")
        flat = jnp.reshape(images, (n, math.prod(images.shape[1:])))  # (n, -1) fails for n = 0
        sigma = float(noise_level) * (jnp.max(flat, axis=1) - jnp.min(flat, axis=1))
    key = _checks.prng_keys(key, n)
    fn, idx = _common.prepare_target(target, n, net if _common.is_model(net) or callable(net) else None, params, images)
    static_opts, dyn_opts = _common.split_options(options)
    pass_batch = _common.accepts(base, "batch_size")
    kw = dict(target_fn=fn, base=base, static_opts=static_opts, samples=samples, batch_size=batch_size,
              pass_batch=pass_batch)
    if execution.is_traced(params, images, key, idx, dyn_opts):
        total, total_sq = _traced(net, params, images, sigma, key, idx, dyn_opts, **kw)
    else:  # eager: one compiled chunk function, looped over on the host (see execution.host_sum)
        total, total_sq = execution.host_sum(
            lambda k: _chunk(net, params, images, sigma, key, idx, dyn_opts, k, **kw), n * samples, batch_size)
    mean, mean_sq = total / samples, total_sq / samples
    return _combine(mean, mean_sq, variant)
