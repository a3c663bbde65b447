"""Feature maps and first-layer filters as pictures.

* :func:`feature_maps`: the activations of any tap for a batch of images.
* :func:`feature_map_grid`: one image's activations at a tap as a grid of
  per-channel maps, each scaled to its own range, ordered by mean
  activation (strongest first) or as given.
* :func:`filters` / :func:`filter_grid`: a convolution's kernels; for
  ``conv1_1`` (three input channels) each kernel is an RGB tile, grey at
  zero, the kernels of a layer sharing one symmetric scale so their
  strengths compare.

Example::

    from jaxviz import models, weights, image
    from jaxviz.featvis import maps
    net, params = models.vgg19(), weights.load("vgg19")
    x = image.load("cat.jpg", 224)
    image.save(maps.feature_map_grid(maps.feature_maps(net, params, x, "relu2_1")[0]), "relu2_1.png")
    image.save(maps.filter_grid(params), "conv1_1_filters.png")

Reference: M. D. Zeiler, R. Fergus, "Visualizing and Understanding
Convolutional Networks", ECCV 2014 (first-layer filters, feature maps).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..models import protocol
from ..viz.features import feature_map_grid, filter_grid  # noqa: F401  (drawn in jaxviz.viz; re-exported here)

__all__ = ["feature_maps", "feature_map_grid", "filters", "filter_grid"]


@functools.partial(jax.jit, static_argnames=("net", "layer"))
def _apply(net, params, images, layer):
    return protocol.taps(net, params, images, layer)[layer]


def feature_maps(net: Any, params, images, layer: str) -> jax.Array:
    """The activations of one tap (a model that can stops there).

    Args:
      net: any model behind the model contract: a jaxviz model, a flax.linen
        module (taps by module path), ``models.from_nnx(...)`` or
        ``models.from_function(...)``.
      params: its parameters.
      images: (N, H, W, 3) RGB in [0, 1].
      layer: tap name (``"relu2_1"``, ``"pool3"``, ``"fc7"``, ``"logits"``,
        ``"layer4/1"``, ``"Conv_1"`` ...).

    Returns:
      (N, h, w, C) for convolutional taps, (N, C) for classifier taps.

    Raises:
      InputError: unknown layer or badly shaped images.
    """
    images = jnp.asarray(images) if not isinstance(images, jax.Array) else images
    net = protocol.as_model(net, images)
    name = net.resolve(layer, "layer")
    return _apply(net, params, images, name)


def filters(params, layer: str = "conv1_1") -> np.ndarray:
    """A convolution's kernels, one per output channel.

    Args:
      params: a jaxviz params pytree.
      layer: a convolution (``conv1_1`` ...); ``relu1_1`` is taken as ``conv1_1``.

    Returns:
      (C_out, kh, kw, C_in) float32 NumPy array.
    """
    name = layer.replace("relu", "conv", 1) if isinstance(layer, str) else layer
    inner = params.get("params", params) if isinstance(params, dict) else None
    if inner is None or name not in inner or "kernel" not in inner[name]:
        have = sorted(k for k in (inner or {}) if k.startswith("conv"))
        raise InputError(f"layer: expected a convolution in params ({', '.join(have)}), got {layer!r}")
    k = np.asarray(inner[name]["kernel"], np.float32)  # (kh, kw, cin, cout)
    return np.transpose(k, (3, 0, 1, 2))

