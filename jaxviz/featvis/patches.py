"""Top-activating image patches (Zeiler & Fergus), streamed over a folder.

For every chosen channel of a convolutional tap, the ``k`` images of a
collection that drive the channel hardest, each shown as the patch of the
image that the strongest position sees: the tap's receptive field. The
collection is streamed in batches; the running state is a fixed-size top-k
per channel (values, image indices, positions and the patch pixels), so the
memory does not grow with the folder.

Example::

    from jaxviz import models, weights, image
    from jaxviz.featvis import patches
    net, params = models.vgg19(), weights.load("vgg19")
    top = patches.top_patches(net, params, image.load_folder("photos", size=224),
                              layer="relu3_1", channels=range(8), k=9)
    picture = patches.patch_grid(top)                   # rows: channels, columns: rank
    image.save(picture, "relu3_1_top.png")

Reference: M. D. Zeiler, R. Fergus, "Visualizing and Understanding
Convolutional Networks", ECCV 2014.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm.auto import tqdm

from .. import _checks
import flax.linen as nn

from ..errors import InputError, ModelError
from ..models import protocol
from ..viz.features import patch_grid  # noqa: F401  (drawn in jaxviz.viz; re-exported here)

__all__ = [
    "ReceptiveField",
    "receptive_field",
    "TopState",
    "TopPatches",
    "top_patches_init",
    "top_patches_update",
    "top_patches",
    "patch_grid",
]


class ReceptiveField(NamedTuple):
    """Where a tap's position sees the input (same for both axes).

    Position ``p`` of the tap (row or column) depends on input pixels
    ``stride * p + offset`` .. ``stride * p + offset + size - 1`` (clipped to
    the image; ``offset`` is negative because of the convolutions' zero
    padding).
    """

    size: int
    stride: int
    offset: int

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) input box, not clipped, of tap position (y, x); bottom/right exclusive."""
        top, left = self.stride * y + self.offset, self.stride * x + self.offset
        return top, left, top + self.size, left + self.size


def receptive_field(net: Any, layer: str, params: Any = None) -> ReceptiveField:
    """The receptive field of a spatial tap, measured from the model (:func:`jaxviz.models.geometry`).

    Args:
      net: any model behind the model contract.
      layer: a spatial tap (``conv*``, ``relu*``, ``pool*`` on VGG,
        ``layer3/1`` on a ResNet, a module path ...).
      params: the model's parameters (only their shapes matter); None for a
        flax module, whose parameter shapes are derived.

    Returns:
      :class:`ReceptiveField` (size, stride, offset) in input pixels. VGG19's
      ``relu1_1`` sees 3x3 pixels, ``pool1`` 6x6 at stride 2, ``relu4_2``
      84x84 at stride 8, ``pool5`` 268x268 at stride 32.

    Raises:
      InputError: unknown layer, a tap that sees the whole image (a classifier
        tap), or a field that is not square.
    """
    model = protocol.as_model(net)
    name = model.resolve(layer, "layer")
    if params is None:
        params = _abstract_params(net, model)
    shape = protocol.tap_shapes(model, params, (1, 224, 224, 3))[name]
    if len(shape) != 4:
        raise InputError(f"layer: expected a convolutional (spatial) tap; {name!r} sees the whole image")
    g = protocol.geometry(model, params, name)
    if len({g.size[0], g.size[1]}) != 1 or g.stride[0] != g.stride[1] or g.offset[0] != g.offset[1]:
        raise ModelError(f"layer: {name!r} has a receptive field of {g.size[0]}x{g.size[1]} px at stride {g.stride}; "
                         "top patches need a square one")
    return ReceptiveField(size=g.size[0], stride=g.stride[0], offset=g.offset[0])


def _abstract_params(net: Any, model: Any) -> Any:
    """Parameter shapes of a flax module (or of the module an adapter wraps), without computing anything."""
    module = net if isinstance(net, nn.Module) else getattr(model, "module", None)
    if not isinstance(module, nn.Module):
        raise InputError(f"params: pass the parameters of {type(net).__name__} (their shapes give its geometry)")
    side = max(64, protocol.min_size(model))
    return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, side, side, 3))))


class TopState(NamedTuple):
    """Running top-k of a streamed collection; its size is fixed by (channels, k, patch size).

    Attributes:
      values: (C, k) the k largest per-image maxima of each channel, descending
        (``-inf`` where fewer than k images were seen).
      index: (C, k) int32 position of the image in the stream (-1: empty).
      position: (C, k, 2) int32 (y, x) of the maximum in the tap's grid.
      patches: (C, k, P, P, 3) float32 the receptive-field patches (grey 0.5
        outside the image).
      count: int32 scalar, images seen so far.
    """

    values: jax.Array
    index: jax.Array
    position: jax.Array
    patches: jax.Array
    count: jax.Array


class TopPatches(NamedTuple):
    """The result of :func:`top_patches` (NumPy arrays)."""

    layer: str
    channels: np.ndarray  # (C,)
    values: np.ndarray  # (C, k)
    names: list  # C lists of k names (None where empty)
    index: np.ndarray  # (C, k) stream index, -1 where empty
    position: np.ndarray  # (C, k, 2) (y, x) of the maximum in the tap's grid
    boxes: np.ndarray  # (C, k, 4) (top, left, bottom, right) in image pixels, not clipped
    patches: np.ndarray  # (C, k, P, P, 3)
    field: ReceptiveField


def top_patches_init(net: Any, layer: str, num_channels: int, *, k: int = 9, params: Any = None) -> TopState:
    """An empty running state for ``num_channels`` channels of ``layer`` (``params``: as :func:`receptive_field`)."""
    rf = receptive_field(net, layer, params)
    c = _checks.positive_int(num_channels, "channels")
    k = _checks.positive_int(k, "k")
    p = rf.size
    return TopState(
        values=jnp.full((c, k), -jnp.inf, jnp.float32),
        index=jnp.full((c, k), -1, jnp.int32),
        position=jnp.zeros((c, k, 2), jnp.int32),
        patches=jnp.full((c, k, p, p, 3), 0.5, jnp.float32),
        count=jnp.int32(0),
    )


@functools.partial(jax.jit, static_argnames=("net", "layer", "rf"))
def _update(net, params, state: TopState, images, valid, channels, *, layer: str, rf: ReceptiveField):
    a = protocol.taps(net, params, images, layer)[layer].astype(jnp.float32)
    a = jnp.take(a, channels, axis=-1)  # (B, h, w, C)
    b, h, w, c = a.shape
    k = state.values.shape[1]
    flat = a.reshape(b, h * w, c)
    best = jnp.where(valid[:, None], flat.max(axis=1), -jnp.inf)  # (B, C)
    where = flat.argmax(axis=1)  # (B, C)
    cand = jnp.concatenate([state.values, best.T], axis=1)  # (C, k + B)
    values, pick = lax.top_k(cand, k)  # (C, k), ties keep the earlier entry
    new = pick >= k
    src = jnp.clip(pick - k, 0, b - 1)
    old = jnp.clip(pick, 0, k - 1)
    flat_pos = jnp.take_along_axis(where.T, src, axis=1)
    py, px = flat_pos // w, flat_pos % w
    p, s, off = rf.size, rf.stride, rf.offset
    padded = jnp.pad(images.astype(jnp.float32), ((0, 0), (p, p), (p, p), (0, 0)), constant_values=0.5)

    def crop(i, y, x):
        return lax.dynamic_slice(padded, (i, s * y + off + p, s * x + off + p, 0), (1, p, p, 3))[0]

    fresh = jax.vmap(jax.vmap(crop))(src, py, px)
    kept = jax.vmap(lambda pt, o: pt[o])(state.patches, old)
    kept_pos = jax.vmap(lambda ps, o: ps[o])(state.position, old)
    return TopState(
        values=values,
        index=jnp.where(new, state.count + src, jnp.take_along_axis(state.index, old, axis=1)),
        position=jnp.where(new[..., None], jnp.stack([py, px], -1), kept_pos),
        patches=jnp.where(new[..., None, None, None], fresh, kept),
        count=state.count + jnp.sum(valid.astype(jnp.int32)),
    )


def top_patches_update(net: Any, params, state: TopState, images, *, layer: str, channels,
                       valid=None) -> TopState:
    """Merges a batch into the running state (one jitted call; the state keeps its shape).

    Args:
      net, params: the model.
      state: from :func:`top_patches_init` or a previous update.
      images: (B, H, W, 3) RGB in [0, 1]; they get stream indices
        ``state.count .. state.count + valid.sum() - 1``.
      layer: the tap.
      channels: (C,) channel indices, as many as the state has.
      valid: (B,) bool, False for padding rows (default all True).

    Returns:
      the new state.
    """
    net = protocol.as_model(net, images)
    name = net.resolve(layer, "layer")
    rf = receptive_field(net, name, params)
    x = _checks.images(images, "images", min_size=protocol.min_size(net), unit_range=protocol.unit_range(net))
    ch = jnp.asarray(channels, jnp.int32)
    if ch.shape != (state.values.shape[0],):
        raise InputError(f"channels: expected {state.values.shape[0]} indices (as the state), got shape {ch.shape}")
    valid = jnp.ones((x.shape[0],), bool) if valid is None else jnp.asarray(valid, bool)
    return _update(net, params, state, jnp.asarray(x, jnp.float32), valid, ch, layer=name, rf=rf)


def top_patches(
    net: Any,
    params,
    batches: Iterable[tuple[Sequence[Any], Any]] | str,
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    k: int = 9,
    size: int = 224,
    batch_size: int = 16,
    progress: bool = False,
    max_bytes: int = 2**30,
) -> TopPatches:
    """For each channel, the k images of a collection that activate it most, as receptive-field patches.

    Each image contributes at most one patch per channel: the receptive
    field of the position where that channel peaks in it (Zeiler & Fergus).
    Batches are streamed; only a fixed-size running top-k is kept, so memory
    is ``C * k * P * P * 3 * 4`` bytes for the patches (P = receptive-field
    size) plus one batch, however large the folder. Batches smaller than
    the first (the last one) are padded, so the update compiles once.

    Args:
      net, params: the model.
      batches: an iterable of ``(names, images)`` with images (B, H, W, 3) in
        [0, 1] (e.g. :func:`jaxviz.image.load_folder`), an (N, H, W, 3)
        array (names are the indices), or a folder path
        (loaded with ``size`` and ``batch_size``).
      layer: a convolutional tap.
      channels: channel indices (default: all channels of the layer).
      k: patches per channel.
      size, batch_size: for a folder path: centre-crop size and batch size.
      progress: show a tqdm bar over batches.
      max_bytes: refuse to allocate a patch buffer larger than this.

    Returns:
      :class:`TopPatches`, channels in the order given, patches ranked by
      activation (ties: earlier image first).

    Raises:
      InputError: a non-convolutional layer, bad channels, or a patch buffer
        above ``max_bytes``.
    """
    net = protocol.as_model(net)
    name = net.resolve(layer, "layer")
    rf = receptive_field(net, name, params)
    k = _checks.positive_int(k, "k")
    from .. import image

    stream, total = image._batch_source(batches, size, batch_size)
    bar = tqdm(total=total, desc=f"top patches {name}", unit="img", disable=not progress, leave=False)
    state = chans = None
    names: dict[int, Any] = {}
    width = None
    try:
        for batch_names, imgs in stream:
            x = np.asarray(imgs, np.float32) if not isinstance(imgs, jax.Array) else imgs
            _checks.images(x, "images", min_size=protocol.min_size(net), unit_range=protocol.unit_range(net))
            batch_names = list(batch_names)
            if len(batch_names) != x.shape[0]:
                raise InputError(f"batches: got {len(batch_names)} names for {x.shape[0]} images")
            if state is None:
                width = x.shape[0]
                num = protocol.tap_shapes(net, params, (1,) + tuple(x.shape[1:]))[name][-1]
                chans = np.arange(num) if channels is None else np.asarray(list(channels), np.int64)
                if chans.ndim != 1 or chans.size == 0 or np.any((chans < 0) | (chans >= num)):
                    raise InputError(f"channels: expected indices in [0, {num}) for {name}, got {channels!r}")
                need = chans.size * k * rf.size * rf.size * 3 * 4
                if need > max_bytes:
                    raise InputError(
                        f"channels: {chans.size} channels x {k} patches of {rf.size}x{rf.size} px need "
                        f"{need / 2**20:.0f} MiB (max_bytes={max_bytes / 2**20:.0f} MiB); choose fewer channels"
                    )
                state = top_patches_init(net, name, chans.size, k=k, params=params)
            n = x.shape[0]
            valid = np.arange(max(width, n)) < n
            if n < width:
                x = np.concatenate([np.asarray(x), np.zeros((width - n,) + x.shape[1:], np.float32)])
            start = int(state.count)
            for i, nm in enumerate(batch_names):
                names[start + i] = nm
            state = top_patches_update(net, params, state, x, layer=name, channels=chans, valid=valid)
            keep = set(np.asarray(state.index).ravel().tolist())
            names = {i: nm for i, nm in names.items() if i in keep}
            bar.update(n)
    finally:
        bar.close()
    if state is None:
        raise InputError("batches: expected at least one image, got none")
    index = np.asarray(state.index)
    pos = np.asarray(state.position)
    top = rf.stride * pos + rf.offset
    boxes = np.concatenate([top, top + rf.size], axis=-1)
    return TopPatches(
        layer=name,
        channels=chans,
        values=np.asarray(state.values),
        names=[[names.get(int(i)) if i >= 0 else None for i in row] for row in index],
        index=index,
        position=pos,
        boxes=boxes,
        patches=np.asarray(state.patches),
        field=rf,
    )

