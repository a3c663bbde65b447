"""Activation-maximisation objectives: scalars to maximise, computed from a model's activations.

Part of :mod:`jaxviz.featvis.render`; import from there.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import InputError
from ...models import protocol

@jax.tree_util.register_pytree_node_class
class Objective:
    """A scalar to maximise, computed from activations.

    An objective is a pytree: its array-valued arguments (channel indices,
    direction vectors, sub-objectives) are leaves, so they may be traced
    (``vmap`` over channel indices), while its structure (function, layer
    names, weights) is static. Build objectives with the factory functions
    of this module and combine them with ``+``, ``-``, ``*`` and ``/`` by
    numbers.

    Attributes:
      fn: ``fn(acts, data, static) -> scalar``.
      data: tuple of leaves (arrays, ints, or other objectives).
      static: tuple of hashable settings.
      layers: the taps the objective reads (``"input"`` is the image the
        network saw, after transforms).
      name: a readable description.
    """

    def __init__(self, fn: Callable, data: tuple = (), static: tuple = (), layers: tuple = (), name: str = ""):
        self.fn = fn
        self.data = tuple(data)
        self.static = tuple(static)
        self.layers = tuple(dict.fromkeys(layers))
        self.name = name or getattr(fn, "__name__", "objective")

    def __call__(self, acts: dict[str, jax.Array]) -> jax.Array:
        return self.fn(acts, self.data, self.static)

    @property
    def taps(self) -> tuple[str, ...]:
        """The network taps to compute (``layers`` without ``"input"``)."""
        return tuple(n for n in self.layers if n != "input")

    def tree_flatten(self):
        # the name is cosmetic and stays out of the structure, so that
        # channel(l, 3) and channel(l, 4) share one compiled program
        return (self.data,), (self.fn, self.static, self.layers)

    @classmethod
    def tree_unflatten(cls, aux, children):
        fn, static, layers = aux
        obj = object.__new__(cls)
        obj.fn, obj.data, obj.static, obj.layers = fn, tuple(children[0]), static, layers
        obj.name = getattr(fn, "__name__", "objective").strip("_").removesuffix("_fn")
        return obj

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    # ----- algebra
    def __add__(self, other):
        if isinstance(other, numbers.Number) and other == 0:
            return self  # so that sum([...]) works
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(_sum_fn, (self, other), (), self.layers + other.layers, f"{self.name} + {other.name}")

    __radd__ = __add__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-other)

    def __mul__(self, w):
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            return NotImplemented
        return Objective(_scale_fn, (self,), (float(w),), self.layers, f"{float(w):g} * ({self.name})")

    __rmul__ = __mul__

    def __truediv__(self, w):
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or w == 0:
            return NotImplemented
        return self * (1.0 / float(w))


def _sum_fn(acts, data, static):
    a, b = data
    return a(acts) + b(acts)


def _scale_fn(acts, data, static):
    return static[0] * data[0](acts)


def _act(acts, layer):
    if layer not in acts:
        raise InputError(f"objective: layer {layer!r} was not computed; have {sorted(acts)}")
    return acts[layer].astype(jnp.float32)


def _per_image(values: jax.Array, batch: int | None) -> jax.Array:
    if batch is not None and batch >= values.shape[0]:  # shapes are static: checked while tracing
        raise InputError(f"batch: the objective scores image {batch} of the batch, but {values.shape[0]} "
                         f"image{'s are' if values.shape[0] > 1 else ' is'} rendered")
    return jnp.sum(values) if batch is None else values[batch]


def _channel_fn(acts, data, static):
    (c,), (layer, batch) = data, static
    a = jnp.take(_act(acts, layer), c, axis=-1)
    v = a.reshape(a.shape[0], -1).mean(axis=1)
    return _per_image(v, batch)


def _neuron_fn(acts, data, static):
    (c,), (layer, batch, y, x) = data, static
    a = _act(acts, layer)
    if a.ndim == 4:
        yy = a.shape[1] // 2 if y is None else y
        xx = a.shape[2] // 2 if x is None else x
        if yy >= a.shape[1] or xx >= a.shape[2]:
            raise InputError(f"y, x: {layer} is {a.shape[1]}x{a.shape[2]} for this image size, got ({yy}, {xx})")
        a = a[:, yy, xx, :]
    return _per_image(jnp.take(a, c, axis=-1), batch)


def _direction_fn(acts, data, static):
    (v,), (layer, batch) = data, static
    a = _act(acts, layer)
    v = jnp.asarray(v, jnp.float32)
    if v.shape != (a.shape[-1],):
        raise InputError(f"vector: expected shape ({a.shape[-1]},) for {layer}, got {tuple(v.shape)}")
    v = v / (jnp.linalg.norm(v) + 1e-12)
    d = a @ v
    return _per_image(d.reshape(d.shape[0], -1).mean(axis=1), batch)


def _diversity_fn(acts, data, static):
    (layer,) = static
    a = _act(acts, layer)
    n = a.shape[0]
    flat = a.reshape(n, -1, a.shape[-1])
    grams = jnp.einsum("npc,npd->ncd", flat, flat)
    grams = grams / (jnp.sqrt(jnp.sum(grams * grams, axis=(1, 2), keepdims=True)) + 1e-10)
    sim = jnp.einsum("icd,jcd->ij", grams, grams)
    return -(jnp.sum(sim) - jnp.trace(sim)) / n


def _tv_fn(acts, data, static):
    x = _act(acts, "input")
    return jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1])) + jnp.mean(jnp.abs(x[:, :, 1:] - x[:, :, :-1]))


def _l2_fn(acts, data, static):
    layer, constant = static
    a = _act(acts, layer)
    return jnp.mean((a - constant) ** 2)


def _check_layer(layer, arg="layer") -> str:
    if not isinstance(layer, str) or not layer:
        raise InputError(f"{arg}: expected a layer name (str), got {layer!r}")
    return layer


def _check_batch(batch):
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 0):
        raise InputError(f"batch: expected None or a non-negative int (an index into the batch), got {batch!r}")
    return None if batch is None else int(batch)


def _leaf_objectives(objective: "Objective"):
    for d in objective.data:
        if isinstance(d, Objective):
            yield from _leaf_objectives(d)
    yield objective


def _check_indices(net, params, *objectives: "Objective") -> None:
    """Channel indices known before tracing (ints, concrete arrays) must exist in their layer: past the end,
    ``take`` under ``jit`` reads NaN and the render would silently stay grey."""
    known = []
    for o in (leaf for objective in objectives for leaf in _leaf_objectives(objective)):
        if o.fn in (_channel_fn, _neuron_fn) and not isinstance(o.data[0], jax.core.Tracer):
            c = np.asarray(o.data[0])
            if c.ndim == 0:
                known.append((o, int(c)))
    if not known:
        return
    side = max(64, protocol.min_size(net))
    taps = tuple(dict.fromkeys(o.static[0] for o, _ in known))
    shapes = jax.eval_shape(lambda p: protocol.taps(net, p, jnp.zeros((1, side, side, 3)), taps), params)
    for o, c in known:
        width = shapes[o.static[0]].shape[-1]
        if not 0 <= c < width:
            raise InputError(f"objective: {o.name}: {o.static[0]} has {width} channels, got channel {c}")


def _index(c, arg="channel"):
    if isinstance(c, (bool, float)) or (hasattr(c, "dtype") and not jnp.issubdtype(c.dtype, jnp.integer)):
        raise InputError(f"{arg}: expected an integer index, got {c!r}")
    return c


def channel(layer: str, c, *, batch: int | None = None) -> Objective:
    """Mean activation of channel ``c`` over all positions of ``layer``.

    Args:
      layer: tap name (convolutional or classifier).
      c: channel index (an int or an integer array scalar; may be traced).
      batch: score only this image of the batch (None: sum over the batch).

    Returns:
      An :class:`Objective` (maximised by :func:`render`; combine with ``+``, ``-``, ``*``).
    """
    layer = _check_layer(layer)
    return Objective(_channel_fn, (_index(c),), (layer, _check_batch(batch)), (layer,), f"channel({layer}, {c})")


def neuron(layer: str, c, *, y: int | None = None, x: int | None = None, batch: int | None = None) -> Objective:
    """Activation of channel ``c`` at one position of ``layer`` (the centre by default).

    Args:
      layer: a convolutional tap.
      c: channel index (an int or an integer array scalar; may be traced).
      y, x: the position in the layer's map (None: the centre, ``H // 2`` / ``W // 2``).
      batch: score only this image of the batch (None: sum over the batch).

    Returns:
      An :class:`Objective`.

    Raises:
      InputError: a negative or non-integer ``y``/``x``.
    """
    layer = _check_layer(layer)
    for v, n in ((y, "y"), (x, "x")):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
            raise InputError(f"{n}: expected None or a non-negative int, got {v!r}")
    return Objective(
        _neuron_fn, (_index(c),), (layer, _check_batch(batch), y, x), (layer,), f"neuron({layer}, {c})"
    )


def class_logit(k, *, layer: str = "logits", batch: int | None = None) -> Objective:
    """The pre-softmax score of class ``k`` (``fc8``).

    Args:
      k: class index (an int or an integer array scalar).
      layer: the classifier tap (``logits``).
      batch: score only this image of the batch (None: sum over the batch).

    Returns:
      An :class:`Objective` (needs a network built with its classifier).
    """
    obj = channel(layer, _index(k, "k"), batch=batch)
    obj.name = f"class_logit({k})"
    return obj


def direction(layer: str, vector, *, batch: int | None = None) -> Objective:
    """Mean over positions of the activation's projection on ``vector`` (C,) (Olah et al.'s "direction").

    Args:
      layer: tap name.
      vector: (C,) direction in the layer's channel space (used as given; pass
        a unit vector for scores comparable across directions).
      batch: score only this image of the batch (None: sum over the batch).

    Returns:
      An :class:`Objective`.

    Raises:
      InputError: ``vector`` is not one-dimensional.
    """
    layer = _check_layer(layer)
    v = jnp.asarray(vector, jnp.float32)
    if v.ndim != 1:
        raise InputError(f"vector: expected shape (C,), got {tuple(v.shape)}")
    return Objective(_direction_fn, (v,), (layer, _check_batch(batch)), (layer,), f"direction({layer})")


def diversity(layer: str) -> Objective:
    """Rewards a batch whose images differ in style at ``layer``.

    Minus the mean (over images) of the summed cosine similarity between one
    image's Gram matrix and every other's (lucid's ``diversity``); 0 for a
    batch of one. Add it to an objective, e.g. ``channel(l, c) + 0.5 * diversity(l)``.

    Args:
      layer: the tap whose Gram matrices are compared.

    Returns:
      An :class:`Objective`.
    """
    layer = _check_layer(layer)
    return Objective(_diversity_fn, (), (layer,), (layer,), f"diversity({layer})")


def total_variation() -> Objective:
    """Total variation of the input image (mean |dy| + mean |dx|): a penalty, subtract it."""
    return Objective(_tv_fn, (), (), ("input",), "total_variation")


def l2(layer: str = "input", constant: float = 0.5) -> Objective:
    """Mean of (a - constant)² at ``layer`` (default the image): a penalty, subtract it.

    Args:
      layer: a tap, or ``"input"`` for the image in [0, 1].
      constant: the value it pulls towards (0.5: mid grey for the image).

    Returns:
      An :class:`Objective`.
    """
    return Objective(_l2_fn, (), (_check_layer(layer), float(constant)), (layer,), f"l2({layer})")
