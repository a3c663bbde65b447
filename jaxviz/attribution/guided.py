"""Guided backpropagation and deconvnet through the model contract's ReLU seam.

Both are the gradient of the target score with every ReLU's backward pass
replaced (the forward pass is unchanged) by a ``jax.custom_vjp`` ReLU
(:mod:`jaxviz.models.relus`): jaxviz's models take it through their ``relu=``
argument; any other model or function has its ReLUs found and swapped in its
traced program, and one without ReLUs is refused:

* guided backprop: ``g_in = g_out * (x > 0) * (g_out > 0)``
* deconvnet:       ``g_in = relu(g_out)`` (the forward mask is ignored)

These are exactly Captum's ``GuidedBackprop`` and ``Deconvolution`` hooks.

References: J. T. Springenberg et al., "Striving for Simplicity: The All
Convolutional Net", ICLR workshop 2015; M. D. Zeiler, R. Fergus, "Visualizing
and Understanding Convolutional Networks", ECCV 2014.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax

from . import _common
from .saliency import gradients
from ..errors import ModelError
from ..models import protocol, relus
from ..models.relus import deconv_relu, guided_relu

__all__ = ["guided_backprop", "deconvnet", "guided_relu", "deconv_relu"]


_RELUS = {"guided_backprop": guided_relu, "deconvnet": deconv_relu}


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "kind"))
def _core(net, params, images, target_idx, *, target_fn, kind):
    _common.count_trace(kind)
    return gradients(net, params, images, target_fn, target_idx, relu=_RELUS[kind])


def _run(kind, net, params, images, target):
    _common.check_net(net, kind)
    if _common.is_model(net) or isinstance(net, nn.Module):
        net = _common.model(net, images)
    images = _common.check_images(images, net)
    if relus.count(net, params, images) == 0:  # never plain gradients under another name
        raise ModelError(f"net: found no ReLU to swap in {protocol.name_of(net)} (looked for jax.nn.relu, flax's "
                         f"relu and jnp.maximum(x, 0), inside jit, scan, cond and remat too); {kind} needs ReLUs")
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    return _core(net, params, images, idx, target_fn=fn, kind=kind)


def guided_backprop(net: Any, params: Any, images: jax.Array, target: Any) -> jax.Array:
    """Guided backpropagation (Springenberg et al. 2015).

    Args:
      net: a jaxviz model, flax module, adapted model or ``f(params, images)`` with ReLUs.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).

    Returns:
      (N, H, W, 3) signed attributions; equal to Captum's ``GuidedBackprop``.

    Raises:
      ModelError: ``net`` has no ReLU.
      InputError: bad ``net``, ``images`` or ``target``.

    Example::

        attr = guided_backprop(net, params, images, target=207)
    """
    return _run("guided_backprop", net, params, images, target)


def deconvnet(net: Any, params: Any, images: jax.Array, target: Any) -> jax.Array:
    """Deconvnet attributions (Zeiler & Fergus 2014): backward ReLUs rectify the gradient.

    Args:
      net: a jaxviz model, flax module, adapted model or ``f(params, images)`` with ReLUs.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).

    Returns:
      (N, H, W, 3) signed attributions; equal to Captum's ``Deconvolution``.

    Example::

        attr = deconvnet(net, params, images, target=207)
    """
    return _run("deconvnet", net, params, images, target)
