"""Feature maps and first-layer filters as pictures.

* :func:`feature_maps`: the activations of any tap for a batch of images.
* :func:`feature_map_grid`: one image's activations at a tap as a grid of
  per-channel maps, each scaled to its own range, ordered by mean
  activation (strongest first) or as given.
* :func:`filters` / :func:`filter_grid`: a convolution's kernels; for
  ``conv1_1`` (three input channels) each kernel is an RGB tile, grey at
  zero, the kernels of a layer sharing one symmetric scale so their
  strengths compare.

Example:
    >>> from jaxviz import models, weights, image
    >>> from jaxviz.featvis import maps
    >>> net, params = models.vgg19(), weights.load("vgg19")
    >>> x = image.load("cat.jpg", 224)
    >>> image.save(maps.feature_map_grid(maps.feature_maps(net, params, x, "relu2_1")[0]), "relu2_1.png")
    >>> image.save(maps.filter_grid(params), "conv1_1_filters.png")

Reference: M. D. Zeiler, R. Fergus, "Visualizing and Understanding
Convolutional Networks", ECCV 2014 (first-layer filters, feature maps).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import viz
from ..errors import InputError
from ..models import protocol

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


def feature_map_grid(
    maps,
    *,
    order: str | list[int] = "mean",
    limit: int | None = 64,
    cmap: str = "viridis",
    ncols: int | None = None,
    min_tile: int = 48,
    pad: int = 2,
    image=None,
    labels: bool = False,
) -> np.ndarray:
    """One image's feature maps (h, w, C) as a grid picture of per-channel maps.

    Args:
      maps: (h, w, C), or (1, h, w, C).
      order: ``"mean"`` (strongest mean activation first), ``"index"`` (channel
        order), or an explicit list of channel indices.
      limit: show at most this many channels (None for all).
      cmap: Matplotlib colormap; each map is scaled to its own [min, max]
        (a constant map is drawn at the colormap's low end).
      ncols: grid columns (default about square).
      min_tile: small maps are enlarged (nearest neighbour, integer factor) to
        at least this many pixels so they are visible.
      pad: white gap between tiles in pixels.
      image: optionally the input image (H, W, 3) or (1, H, W, 3), shown
        as the first tile (resized to the tile size, framed in orange) so
        the maps can be read against it.
      labels: write each tile's channel index in its corner ("input" on the
        image's tile), so an ordering by mean still says which channel is which.

    Returns:
      (H, W, 3) float RGB in [0, 1].
    """
    m = np.asarray(maps, np.float32)
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 3:
        raise InputError(f"maps: expected shape (h, w, C) of a convolutional tap, got {m.shape}")
    if isinstance(order, str):
        if order not in ("mean", "index"):
            raise InputError(f"order: expected 'mean', 'index' or a list of channels, got {order!r}")
        picked, channels = m, np.arange(m.shape[-1])
    else:
        idx = [int(c) for c in order]
        bad = [c for c in idx if not 0 <= c < m.shape[-1]]
        if bad:
            raise InputError(f"order: channels must be in [0, {m.shape[-1]}), got {bad}")
        picked, order, channels = m[..., idx], "index", np.asarray(idx)
    factor = max(1, -(-min_tile // max(m.shape[0], m.shape[1])))
    if factor > 1:
        picked = np.repeat(np.repeat(picked, factor, 0), factor, 1)
    if order == "mean":  # channel_grid's order, applied here so that each tile's channel is known
        rank = np.argsort(-picked.mean((0, 1)), kind="stable")
        picked, order, channels = picked[..., rank], "index", channels[rank]
    if limit is not None:
        channels = channels[:limit]
    if image is None and not labels:
        return viz.channel_grid(picked, order=order, limit=limit, cmap=cmap, ncols=ncols, pad=pad)
    th, tw = picked.shape[:2]
    whole = viz.channel_grid(picked, order=order, limit=limit, cmap=cmap, ncols=1, pad=0)
    tiles = [whole[i * th:(i + 1) * th] for i in range(whole.shape[0] // th)]
    if labels:
        tiles = [viz.label(t, str(c)) for t, c in zip(tiles, channels)]
    if image is not None:
        img = np.asarray(image, np.float32)
        img = img[0] if img.ndim == 4 else img
        if img.ndim != 3 or img.shape[-1] != 3:
            raise InputError(f"image: expected shape (H, W, 3), got {img.shape}")
        small = np.array(jax.image.resize(jnp.asarray(img), (th, tw, 3), "linear", antialias=True))
        edge = max(1, min(th, tw) // 40)
        small[:edge], small[-edge:], small[:, :edge], small[:, -edge:] = (1.0, 0.55, 0.0), (1.0, 0.55, 0.0), (
            1.0, 0.55, 0.0), (1.0, 0.55, 0.0)
        small = np.clip(small, 0, 1)
        tiles = [viz.label(small, "input") if labels else small] + tiles
    return viz.grid(tiles, ncols=ncols, pad=pad)


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


def filter_grid(params, layer: str = "conv1_1", *, tile: int = 48, ncols: int | None = None,
                pad: int = 2) -> np.ndarray:
    """A layer's kernels as a grid of tiles.

    ``conv1_1``'s kernels (three input channels) are drawn in colour: RGB
    tile = 0.5 + 0.5 * kernel / max|all kernels|, so grey is zero and the
    strongest weight in the layer reaches black or white. Deeper layers have
    many input channels; each kernel is drawn as its input-channel mean
    through a diverging colormap on the same shared scale.

    Args:
      params: a jaxviz params pytree.
      layer: the convolution.
      tile: tile size in pixels (kernels are enlarged, nearest neighbour).
      ncols: grid columns (default 8 for 64 kernels, about square otherwise).
      pad: gap between tiles: white around RGB kernels (whose zero is grey),
        dark grey around the diverging-colour ones (whose zero is white, so
        a white gap would merge neighbouring tiles).

    Returns:
      (H, W, 3) float RGB in [0, 1].
    """
    k = filters(params, layer)
    scale = np.abs(k).max()
    scale = scale if scale > 0 else 1.0
    if k.shape[-1] == 3:
        tiles = 0.5 + 0.5 * k / scale
    else:
        tiles = viz.colormap(0.5 + 0.5 * k.mean(-1) / np.abs(k.mean(-1)).max(), "RdBu_r")
    factor = max(1, tile // max(k.shape[1], k.shape[2]))
    tiles = np.repeat(np.repeat(tiles, factor, 1), factor, 2)
    return viz.grid(list(tiles), ncols=ncols, pad=pad, pad_value=1.0 if k.shape[-1] == 3 else 0.25)
