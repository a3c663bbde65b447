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
    "projections",
    "PROJECTIONS",
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
    #: (C, k, P, P, 3) with ``projection="deconvnet"``: each unit's deconvnet projection, cropped like its patch
    projections: np.ndarray | None = None


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


#: ``top_patches(projection=...)`` values
PROJECTIONS = (None, "deconvnet")


@functools.partial(jax.jit, static_argnames=("net", "layer", "rf", "batch_size"))
def _project(net, params, images, chans, pos, *, layer: str, rf: ReceptiveField, batch_size: int):
    """Deconvnet projections of single units: for each u, the gradient of ``tap[u, y_u, x_u, c_u]`` with respect
    to ``images[u]`` with every ReLU's backward pass rectifying (Zeiler & Fergus; Captum's
    ``NeuronDeconvolution``), cropped to the unit's receptive-field box (zero outside the image). ``lax.map``
    runs ``batch_size`` units at a time, vmapped."""
    from ..models.relus import deconv_relu

    p, s, off = rf.size, rf.stride, rf.offset

    def one(args):
        img, c, yx = args

        def unit(x):
            a = protocol.taps(net, params, x[None], layer, relu=deconv_relu)[layer][0]
            return a[yx[0], yx[1], c].astype(jnp.float32)

        g = jax.grad(unit)(img)
        padded = jnp.pad(g.astype(jnp.float32), ((p, p), (p, p), (0, 0)))
        return lax.dynamic_slice(padded, (s * yx[0] + off + p, s * yx[1] + off + p, 0), (p, p, 3))

    return lax.map(one, (images, chans, pos), batch_size=batch_size)


def projections(net: Any, params, images, layer: str, channels, positions, *, batch_size: int = 8) -> np.ndarray:
    """Deconvnet projections of units back to pixels (Zeiler & Fergus' grey pictures), cropped to each unit's
    receptive field.

    Args:
      net, params: the model (its ReLUs take the deconvnet rule through the model contract's ReLU seam).
      images: (U, H, W, 3), one image per unit.
      layer: a spatial tap.
      channels: (U,) the units' channels.
      positions: (U, 2) the units' (y, x) in the tap's grid.
      batch_size: units computed together (vmapped); memory grows with it.

    Returns:
      (U, P, P, 3) float32, P the receptive-field size: the projection inside the unit's box (zero outside
      the image).
    """
    model = protocol.as_model(net, images)
    name = model.resolve(layer, "layer")
    rf = receptive_field(model, name, params)
    x = jnp.asarray(_checks.images(images, "images", min_size=protocol.min_size(model),
                                   unit_range=protocol.unit_range(model)), jnp.float32)
    ch = np.asarray(channels, np.int32).reshape(-1)
    pos = np.asarray(positions, np.int32).reshape(-1, 2)
    if not (x.shape[0] == ch.shape[0] == pos.shape[0]):
        raise InputError(f"channels, positions: expected one per image ({x.shape[0]}), got {ch.shape[0]} and "
                         f"{pos.shape[0]}")
    u = x.shape[0]
    if u == 0:
        return np.zeros((0, rf.size, rf.size, 3), np.float32)
    bs = _checks.positive_int(batch_size, "batch_size")
    size = 1 << max(0, (u - 1).bit_length())  # padded to a power of two: few shapes, few compilations
    pad = size - u
    if pad:
        x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, 0)])
        ch, pos = np.concatenate([ch, np.repeat(ch[-1:], pad)]), np.concatenate([pos, np.repeat(pos[-1:], pad, 0)])
    out = _project(model, params, x, jnp.asarray(ch), jnp.asarray(pos), layer=name, rf=rf, batch_size=min(bs, size))
    return np.asarray(out)[:u]


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
    projection: str | None = None,
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
      projection: ``"deconvnet"`` also fills ``TopPatches.projections``: for
        each (channel, rank), the deconvnet projection of that one activation
        back to pixels, cropped to the patch's box (:func:`projections`;
        Zeiler & Fergus' grey pictures). Computed as entries enter the
        running top-k, while their image is at hand: about ``C * k * log(N / k)``
        single-unit backward passes for N images, vmapped ``batch_size`` at a time.

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
    if projection not in PROJECTIONS:
        raise InputError(f"projection: expected None or 'deconvnet', got {projection!r}")
    from .. import image

    stream, total = image._batch_source(batches, size, batch_size)
    projected: dict[tuple[int, int], np.ndarray] = {}  # (channel slot, stream index) -> projection
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
            index = np.asarray(state.index)
            keep = set(index.ravel().tolist())
            names = {i: nm for i, nm in names.items() if i in keep}
            if projection is not None:  # the entries this batch brought in, while their images are here
                slot, rank = np.nonzero(index >= start)
                if slot.size:
                    new = projections(net, params, np.asarray(x)[index[slot, rank] - start], name, chans[slot],
                                      np.asarray(state.position)[slot, rank], batch_size=batch_size)
                    projected.update({(int(c), int(i)): v for c, i, v in zip(slot, index[slot, rank], new)})
                projected = {key: v for key, v in projected.items() if index[key[0]].tolist().count(key[1])}
            bar.update(n)
    finally:
        bar.close()
    if state is None:
        raise InputError("batches: expected at least one image, got none")
    index = np.asarray(state.index)
    pos = np.asarray(state.position)
    top = rf.stride * pos + rf.offset
    boxes = np.concatenate([top, top + rf.size], axis=-1)
    proj = None
    if projection is not None:
        proj = np.zeros(np.asarray(state.patches).shape, np.float32)
        for (c, i), v in projected.items():
            proj[c, int(np.nonzero(index[c] == i)[0][0])] = v
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
        projections=proj,
    )

