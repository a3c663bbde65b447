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
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..models import protocol
from ..viz.features import feature_map_grid, filter_grid  # noqa: F401  (drawn in jaxviz.viz; re-exported here)

__all__ = ["feature_maps", "feature_map_grid", "convolutions", "find_convolution", "filters", "filter_grid"]


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


def convolutions(params) -> tuple[str, ...]:
    """The paths of every 2-D convolution kernel in a params tree, in the tree's order (the order the model's
    modules were made, input first): ``"conv1_1"`` on a VGG, ``"conv1"``, ``"layer1_0/conv1"`` on a ResNet,
    ``"Conv_0"`` on a user's linen CNN. Found by shape: a ``kernel`` leaf of rank 4 (kh, kw, C_in, C_out)."""
    inner = params.get("params", params) if isinstance(params, Mapping) else None
    if not isinstance(inner, Mapping):
        raise InputError(f"params: expected a params pytree (a dict), got {type(params).__name__}")
    found = []

    def walk(tree, path):
        for k, v in tree.items():
            if isinstance(v, Mapping):
                walk(v, path + (str(k),))
            elif k == "kernel" and np.ndim(v) == 4:
                found.append("/".join(path))

    walk(inner, ())
    return tuple(found)


def find_convolution(params, layer: str | None = None) -> str:
    """The path in ``params`` of the convolution ``layer`` names (see :func:`filters`), or of the first one.

    Raises:
      InputError: ``layer`` is not a convolution of ``params`` (the message lists them).
    """
    convs = convolutions(params)
    if not convs:
        raise InputError("params: expected at least one convolution kernel (kh, kw, C_in, C_out), found none")
    if layer is None:  # the one that sees the image: the kernel taking 3 channels (tree order is no guide: an
        # NNX state's keys come sorted)
        rgb = [c for c in convs if _kernel(params, c).shape[2] == 3]
        name = rgb[0] if len(rgb) == 1 else convs[0]
    else:
        name = str(layer).replace(".", "/")
        if name not in convs:  # torchvision's spelling of a nested path: "layer1.0.conv1" for "layer1_0/conv1"
            same = [c for c in convs if re.sub(r"[./_]", "/", c) == re.sub(r"[./_]", "/", name)]
            name = same[0] if len(same) == 1 else name
        if name not in convs:
            shown = ", ".join(convs[:12]) + (f", ... ({len(convs)} in all)" if len(convs) > 12 else "")
            raise InputError(f"layer: expected a convolution in params ({shown}), got {layer!r}")
    return name


def filters(params, layer: str | None = None) -> np.ndarray:
    """A convolution's kernels, one per output channel.

    Args:
      params: a params pytree (jaxviz's, or any flax model's).
      layer: the convolution's path in ``params`` (see :func:`convolutions`;
        ``/`` or ``.`` between levels; torchvision's ``layer1.0.conv1`` finds
        ``layer1_0/conv1``). Default: the convolution that sees the image
        (the one kernel with 3 input channels; else the first in the tree).

    Returns:
      (C_out, kh, kw, C_in) float32 NumPy array.

    Raises:
      InputError: ``layer`` is not a convolution of ``params`` (the message lists them).
    """
    k = np.asarray(_kernel(params, find_convolution(params, layer)), np.float32)  # (kh, kw, cin, cout)
    return np.transpose(k, (3, 0, 1, 2))


def _kernel(params, path: str):
    node = params.get("params", params)
    for part in path.split("/"):
        node = node[part] if part in node else node[int(part)]  # an NNX state keys list items by int
    return node["kernel"]
