"""Gradient saliency maps and input x gradient.

Reference: K. Simonyan, A. Vedaldi, A. Zisserman, "Deep Inside Convolutional
Networks: Visualising Image Classification Models and Saliency Maps",
ICLR workshop 2014; A. Shrikumar et al., "Not Just a Black Box", 2016
(gradient x input).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from . import _common

__all__ = ["saliency", "input_x_gradient", "gradients"]


def _grad_fn(net: Any, relu: Callable | None, target_fn: Callable | None):
    f = _common.forward(net, relu)

    def total(x, params, idx):
        return jnp.sum(_common.scores(f(params, x), target_fn, idx))

    return jax.grad(total)


def gradients(net: Any, params: Any, images: jax.Array, target_fn: Callable | None, target_idx: jax.Array | None,
              relu: Callable | None = None) -> jax.Array:
    """d score_i / d images_i for every image (traceable helper; no validation)."""
    return _grad_fn(net, relu, target_fn)(images, params, target_idx)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "mode"))
def _core(net, params, images, target_idx, *, target_fn, mode):
    _common.count_trace("saliency" if mode != "input_x_gradient" else "input_x_gradient")
    g = gradients(net, params, images, target_fn, target_idx)
    if mode == "abs":
        return jnp.abs(g)
    if mode == "input_x_gradient":
        return images * g
    return g


def saliency(net: Any, params: Any, images: jax.Array, target: Any, *, abs: bool = True) -> jax.Array:  # noqa: A002
    """Gradient of the target score with respect to the pixels (Simonyan et al. 2014).

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index (int), one index per image (N,), or a callable
        mapping logits (N, K) to scores (N,).
      abs: return ``|gradient|`` (Captum's ``Saliency`` default); False keeps the sign.

    Returns:
      (N, H, W, 3) float32 attributions.

    Raises:
      InputError: bad ``images``, ``target`` or ``abs``.

    Example::

        attr = saliency(net, params, images, target=207)
        heat = viz.reduce_channels(attr, "max_abs")  # (N, H, W) for display
    """
    _common.check_net(net, "saliency")
    images = _common.check_images(images, net)
    if not isinstance(abs, (bool, np.bool_)):  # abs="no" would read as True
        raise InputError(f"abs: expected True or False, got {abs!r}")
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    return _core(net, params, images, idx, target_fn=fn, mode="abs" if abs else "raw")


def input_x_gradient(net: Any, params: Any, images: jax.Array, target: Any) -> jax.Array:
    """Input times gradient: ``images * d score / d images`` (Shrikumar et al. 2016).

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image, or a callable logits -> scores.

    Returns:
      (N, H, W, 3) float32 attributions (signed); equals Captum's ``InputXGradient``.

    Example::

        attr = input_x_gradient(net, params, images, target=207)
    """
    _common.check_net(net, "input_x_gradient")
    images = _common.check_images(images, net)
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    return _core(net, params, images, idx, target_fn=fn, mode="input_x_gradient")
