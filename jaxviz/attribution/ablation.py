"""Perturbation methods over segments and random masks: feature ablation and RISE.

* :func:`feature_ablation`: each segment of the image in turn is replaced by
  a baseline; every pixel of the segment gets the score drop (Captum's
  ``FeatureAblation`` with a ``feature_mask``).
* :func:`rise` (Petsiuk et al., BMVC 2018): the map is the average of random
  smooth masks weighted by the score of the image seen through each.

Both build and score their perturbed images inside one jitted function, in
chunks of ``batch_size`` images per forward pass.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from .. import _checks, execution
from ..errors import InputError
from . import _common
from ._faithfulness import segment_labels

__all__ = ["feature_ablation", "rise", "rise_masks"]


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "segments_max", "batch_size"))
def _ablation_core(net, params, images, labels, baseline, target_idx, *, target_fn, segments_max, batch_size):
    _common.count_trace("feature_ablation")
    n = images.shape[0]
    f = _common.forward(net)
    clean = _common.scores(f(params, images), target_fn, target_idx)

    def body(k):
        i, s = k // segments_max, k % segments_max
        gone = (labels[i] == s[:, None, None])[..., None]
        x = jnp.where(gone, baseline[i], images[i])
        return clean[i] - _common.scores(f(params, x), target_fn, _common.gather_target(target_idx, i))

    drops = execution.chunked_map(body, n * segments_max, batch_size).reshape(n, segments_max)
    per_pixel = jnp.take_along_axis(drops, labels.reshape(n, -1), axis=1).reshape(labels.shape)
    return jnp.broadcast_to(per_pixel[..., None], images.shape)


def feature_ablation(net: Any, params: Any, images: jax.Array, target: Any, *, segments: Any = 16,
                     baseline: Any = 0.0, batch_size: int = 32) -> jax.Array:
    """Feature ablation over segments: each pixel gets ``f(x) - f(x with its segment set to the baseline)``.

    Equal to Captum's ``FeatureAblation(f).attribute(x, target=t, baselines=b, feature_mask=m)`` with the
    segments as the mask, broadcast over the channels.

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).
      segments: a segment size in px (squares, ``metrics.grid_segments``), "slic" (scikit-image's SLIC), or
        integer labels (N, H, W) or (H, W).
      baseline: what a removed segment becomes: a number or an image broadcastable to the input.
      batch_size: perturbed images per forward pass (results do not depend on it).

    Returns:
      (N, H, W, 3), the same value in the three channels of a pixel.

    Example::

        attribution.feature_ablation(net, params, images, 207, segments=32)
    """
    _common.check_net(net, "feature_ablation")
    images = _common.check_images(images, net)
    labels, counts = segment_labels(segments, images)
    base = _common.broadcast_baseline(baseline, images, "baseline")
    batch_size = _common.check_batch_size(batch_size)
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    return _ablation_core(net, params, images, jnp.asarray(labels), base, idx, target_fn=fn,
                          segments_max=int(counts.max()) if counts.size else 1, batch_size=batch_size)


# --------------------------------------------------------------------------------------------
# RISE


def _mask(key: jax.Array, size: tuple[int, int], cells: int, p: float) -> jax.Array:
    """One RISE mask: a ``cells x cells`` grid of Bernoulli(p) cells, bilinearly upsampled to
    ``(cells + 1) * cell`` px (``cell = ceil(size / cells)``), cropped to ``size`` at a random shift in
    ``[0, cell)`` (Petsiuk et al.'s generator)."""
    h, w = size
    ch, cw = -(-h // cells), -(-w // cells)
    k_grid, k_y, k_x = jax.random.split(key, 3)
    grid = jax.random.bernoulli(k_grid, p, (cells, cells)).astype(jnp.float32)
    big = jax.image.resize(grid, ((cells + 1) * ch, (cells + 1) * cw), "linear")
    dy = jax.random.randint(k_y, (), 0, ch)
    dx = jax.random.randint(k_x, (), 0, cw)
    return jax.lax.dynamic_slice(big, (dy, dx), (h, w))


def rise_masks(key: Any, count: int, size: tuple[int, int], *, cells: int = 7, p: float = 0.5) -> jax.Array:
    """The masks :func:`rise` uses: mask m drawn from ``fold_in(key, m)``: (count, H, W) in [0, 1].

    Example::

        masks = attribution.rise_masks(0, 16, (224, 224))
    """
    count = _checks.positive_int(count, "masks")
    cells = _checks.positive_int(cells, "cells")
    key = _checks.prng_key(key)
    return jax.vmap(lambda m: _mask(jax.random.fold_in(key, m), tuple(size), cells, float(p)))(jnp.arange(count))


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "masks", "cells", "p", "batch_size",
                                             "probabilities"))
def _rise_core(net, params, images, key, target_idx, *, target_fn, masks, cells, p, batch_size, probabilities):
    _common.count_trace("rise")
    n, h, w, _ = images.shape
    f = _common.forward(net)
    chunk = max(1, batch_size // max(n, 1))  # masks per forward pass: every image through each
    steps = -(-masks // chunk)

    per_image = key.ndim == 1

    def step(acc, c):
        ms = jnp.arange(chunk) + c * chunk
        valid = (ms < masks).astype(jnp.float32)
        draw = jax.vmap(lambda k, j: _mask(jax.random.fold_in(k, j), (h, w), cells, p), in_axes=(None, 0))
        # one mask set for the batch (chunk, H, W), or one per image's own key (N, chunk, H, W)
        m = jax.vmap(draw, in_axes=(0, None))(key, ms) if per_image else draw(key, ms)[None]
        x = (images[:, None] * m[..., None]).reshape((n * chunk,) + images.shape[1:])
        s = _common.target_scores(f(params, x), target_fn, None if target_idx is None else jnp.repeat(target_idx, chunk),
                                  probabilities)
        s = s.reshape(n, chunk) * valid[None]
        return acc + jnp.einsum("nm,nmhw->nhw", s, jnp.broadcast_to(m, (n,) + m.shape[1:])), None

    total, _ = jax.lax.scan(step, jnp.zeros((n, h, w), jnp.float32), jnp.arange(steps))
    return total / (masks * p)


def rise(net: Any, params: Any, images: jax.Array, target: Any, *, masks: int = 4000, cells: int = 7,
         p: float = 0.5, key: Any = None, probabilities: bool = True, batch_size: int = 32) -> jax.Array:
    """RISE: Randomized Input Sampling for Explanation (Petsiuk et al., BMVC 2018).

    ``map = sum_m score(x * M_m) M_m / (masks * p)`` over random smooth masks :func:`rise_masks` (Petsiuk et
    al.'s generator and defaults: 7 x 7 cells kept with probability 0.5; they use 4000 masks for ResNet50
    and 8000 for VGG16). The same masks serve every image.

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable on the (softmaxed) outputs (N, K) -> (N,).
      masks: number of masks.
      cells: grid cells per side before upsampling.
      p: probability of keeping a cell.
      key: PRNG key or int seed (None: ``jax.random.key(0)``); mask m from ``fold_in(key, m)``, the same
        masks for every image. Or one key per image, shape (N,): image i's masks from ``fold_in(key[i], m)``,
        independent of its place in the batch (the form ``jaxviz attribute`` and ``parallel`` use).
      probabilities: weight the masks by the softmax probability (RISE) rather than the logit.
      batch_size: masked images per forward pass (``batch_size // N`` masks, each over every image; results
        do not depend on it).

    Returns:
      (N, H, W) maps.

    Example::

        attribution.rise(net, params, images, 207, masks=2000, key=0)
    """
    _common.check_net(net, "rise")
    images = _common.check_images(images, net)
    masks = _checks.positive_int(masks, "masks")
    cells = _checks.positive_int(cells, "cells")
    if not 0.0 < float(p) <= 1.0:
        raise InputError(f"p: expected a probability in (0, 1], got {p!r}")
    batch_size = _common.check_batch_size(batch_size)
    key = _checks.prng_keys(key, images.shape[0])
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    return _rise_core(net, params, images, key, idx, target_fn=fn, masks=masks, cells=cells, p=float(p),
                      batch_size=batch_size, probabilities=bool(probabilities))

