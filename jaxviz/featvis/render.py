"""Activation maximisation: synthesise the image a unit of the network wants to see.

Three composable parts, each a small value you can build, combine and pass
around (all hashable or pytrees, so a second call with the same parts reuses
the compiled program):

* **objectives** (:class:`Objective`): ``channel``, ``neuron``,
  ``class_logit``, ``direction``, ``diversity`` (across a batch), plus the
  image penalties ``total_variation`` and ``l2``. They combine with ``+``,
  ``-`` and scaling by numbers; ``sum()`` works. An objective maps the
  dict of activations (and ``"input"``, the image the network saw) to a
  scalar to *maximise*.
* **parameterisations** (:func:`pixel`, :func:`fourier`): how the optimised
  variables become an image. ``fourier`` optimises a 1/f-scaled spectrum
  (Olah et al.'s preconditioning); ``decorrelate=True`` optimises colours in
  a decorrelated basis (ImageNet's colour-covariance square root); a sigmoid
  keeps pixels in [0, 1].
* **transforms** (:func:`standard_transforms`, :class:`Pad`,
  :class:`Jitter`, :class:`RandomScale`, :class:`RandomRotate`,
  :class:`Compose`): random, differentiable transformations applied before
  every step, each drawing from its own explicit PRNG key (transformation
  robustness).

The optimiser is any optax transformation (Adam, learning rate 0.05, by
default). The steps run in one ``lax.scan`` (on the CPU as a host loop over
one compiled step, which XLA:CPU runs 3-4x faster; see :func:`host_loop`);
:func:`render_each` and
:func:`render_channels` ``vmap`` the whole optimisation over a batch of
objectives (e.g. channel indices), so one compiled call renders them all.

Example:
    >>> import jax
    >>> from jaxviz import models, weights, image, viz
    >>> from jaxviz.featvis import render as R
    >>> net, params = models.vgg19(), weights.load("vgg19")
    >>> obj = R.channel("relu4_1", 12) - 0.05 * R.total_variation()
    >>> img = R.render(net, params, obj, key=jax.random.key(0), size=128, steps=256)
    >>> grid = R.render_channels(net, params, "relu4_1", range(16), key=jax.random.key(1))
    >>> image.save(viz.grid(grid), "relu4_1.png")

References: C. Olah, A. Mordvintsev, L. Schubert, "Feature Visualization",
Distill 2017; the lucid library (github.com/tensorflow/lucid); D. Erhan et
al., "Visualizing Higher-Layer Features of a Deep Network", 2009.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from tqdm.auto import tqdm

from .. import _checks
from ..errors import InputError
from ..models import protocol
from ..models.vgg import reverse_mode
from ..models.relus import redirected_relu

__all__ = [
    "Objective",
    "channel",
    "neuron",
    "class_logit",
    "direction",
    "diversity",
    "total_variation",
    "l2",
    "ImageParam",
    "pixel",
    "fourier",
    "Pad",
    "Jitter",
    "RandomScale",
    "RandomRotate",
    "Compose",
    "standard_transforms",
    "redirected_relu",
    "host_loop",
    "RenderState",
    "render_init",
    "render_update",
    "render",
    "render_each",
    "render_channels",
]


# =========================================================================== objectives


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


# =========================================================================== parameterisations

# ImageNet's colour-covariance square root (lucid), columns normalised by the largest norm.
_COLOR_CORRELATION_SVD_SQRT = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32
)
_COLOR_MATRIX = _COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(_COLOR_CORRELATION_SVD_SQRT, axis=0))


def _rfft2d_freqs(h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


@dataclasses.dataclass(frozen=True)
class ImageParam:
    """How optimised variables become an image (hashable, so it is a static jit argument).

    Use the factories :func:`pixel` and :func:`fourier`.
    """

    kind: str = "fourier"
    sd: float = 0.01
    decay_power: float = 1.0
    decorrelate: bool = True

    def shape(self, batch: int, hw: tuple[int, int]) -> tuple[int, ...]:
        """Shape of the variables for ``batch`` images of size ``hw``."""
        h, w = hw
        return (batch, h, w, 3) if self.kind == "pixel" else (batch, 3, h, w // 2 + 1, 2)

    def init(self, key: jax.Array, batch: int, hw: tuple[int, int]) -> jax.Array:
        """Initial variables: N(0, sd²) for ``batch`` images of size ``hw``, a function of ``key``.

        The normal draws come from NumPy's PCG64 seeded with the key's data (on
        the host, so no random-number program has to be compiled), which makes
        them a deterministic function of the key. A traced key (inside
        ``jit``/``vmap``) gets the same numbers through ``jax.pure_callback``.
        """
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        shape = self.shape(batch, hw)

        def draw(d):
            rng = np.random.default_rng(np.asarray(d, np.uint32).ravel())
            return (np.float32(self.sd) * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

        if isinstance(data, jax.core.Tracer):
            return jax.pure_callback(draw, jax.ShapeDtypeStruct(shape, jnp.float32), data, vmap_method="sequential")
        return jnp.asarray(draw(data))

    def image(self, p: jax.Array, hw: tuple[int, int]) -> jax.Array:
        """Variables -> (batch, h, w, 3) RGB in (0, 1)."""
        h, w = hw
        if self.kind == "pixel":
            t = p
        else:
            freqs = _rfft2d_freqs(h, w)
            scale = (1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** self.decay_power) * np.sqrt(h * w)
            spectrum = lax.complex(p[..., 0], p[..., 1]) * jnp.asarray(scale, jnp.float32)
            t = jnp.fft.irfft2(spectrum, s=(h, w)).transpose(0, 2, 3, 1) / 4.0
        if self.decorrelate:
            t = t @ jnp.asarray(_COLOR_MATRIX.T)
        return jax.nn.sigmoid(t)


def pixel(*, sd: float = 0.01, decorrelate: bool = True) -> ImageParam:
    """Optimise pixels directly (through a sigmoid; optionally in decorrelated colour).

    Args:
      sd: standard deviation of the random initial values.
      decorrelate: optimise in ImageNet's decorrelated colour space (lucid's
        ``color_correlation_svd_sqrt``) rather than plain RGB.

    Returns:
      An :class:`ImageParam` for :func:`render`'s ``param``.
    """
    return ImageParam("pixel", float(sd), 1.0, bool(decorrelate))


def fourier(*, sd: float = 0.01, decay_power: float = 1.0, decorrelate: bool = True) -> ImageParam:
    """Optimise a Fourier spectrum scaled by 1/frequency^decay_power (lucid's ``fft_image``).

    Args:
      sd: standard deviation of the random initial spectrum.
      decay_power: how fast the scale falls with frequency (1: natural images'
        1/f amplitude; higher gives smoother pictures).
      decorrelate: as for :func:`pixel`.

    Returns:
      An :class:`ImageParam` for :func:`render`'s ``param``.
    """
    return ImageParam("fourier", float(sd), float(decay_power), bool(decorrelate))


# =========================================================================== transforms


class _Transform:
    """Base of the random transforms: ``t(key, x)`` draws two uniforms from ``key`` and calls ``t.apply(u, x)``."""

    def __call__(self, key, x):
        return self.apply(jax.random.uniform(key, (2,)), x)

    def apply(self, u, x):  # pragma: no cover - overridden
        raise NotImplementedError


def _number_tuple(values, name: str, positive: bool = False) -> tuple[float, ...]:
    """A non-empty tuple of finite numbers (a single number is one choice)."""
    if isinstance(values, (int, float, np.number)) and not isinstance(values, bool):
        values = (values,)
    try:
        out = tuple(float(v) for v in values if not isinstance(v, bool))
        ok = len(out) == len(tuple(values)) > 0 and all(np.isfinite(out)) and (not positive or min(out) > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{name}: expected a non-empty sequence of {'positive ' if positive else ''}numbers, "
                         f"got {values!r}")
    return out


def _pick(values, u):
    """values[floor(u * len)]: a uniform choice from a static tuple given u in [0, 1)."""
    table = jnp.asarray(values, jnp.float32)
    return table[jnp.clip(jnp.floor(u * len(values)).astype(jnp.int32), 0, len(values) - 1)]


@dataclasses.dataclass(frozen=True)
class Pad(_Transform):
    """Pads ``width`` pixels of constant ``value`` on every side (deterministic)."""

    width: int
    value: float = 0.5

    def __post_init__(self):
        _checks.non_negative_pixels(self.width, "Pad: width")

    def apply(self, u, x):
        w = self.width
        return jnp.pad(x, ((0, 0), (w, w), (w, w), (0, 0)), constant_values=self.value)


@dataclasses.dataclass(frozen=True)
class Jitter(_Transform):
    """Random crop losing ``d`` pixels in height and width (a random shift of 0..d pixels per axis)."""

    d: int

    def __post_init__(self):
        _checks.non_negative_pixels(self.d, "Jitter: d")

    def apply(self, u, x):
        if self.d == 0:
            return x
        n, h, w, c = x.shape
        off = jnp.clip(jnp.floor(u * (self.d + 1)).astype(jnp.int32), 0, self.d)
        return lax.dynamic_slice(x, (0, off[0], off[1], 0), (n, h - self.d, w - self.d, c))


def _affine(x, scale, angle):
    """Zoom by ``scale`` and rotate by ``angle`` (radians) about the centre; same size, bilinear,
    edge pixels repeated outside the image."""
    n, h, w, c = x.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy = jnp.arange(h, dtype=jnp.float32)[:, None] - cy
    xx = jnp.arange(w, dtype=jnp.float32)[None, :] - cx
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    sy = jnp.clip((cos * yy - sin * xx) / scale + cy, 0.0, h - 1.0)
    sx = jnp.clip((sin * yy + cos * xx) / scale + cx, 0.0, w - 1.0)
    y0, x0 = jnp.floor(sy), jnp.floor(sx)
    wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    flat = x.reshape(n, h * w, c)
    at = lambda yi, xi: jnp.take(flat, (yi * w + xi).reshape(-1), axis=1, mode="clip").reshape(
        n, h, w, c
    )
    top = (1 - wx) * at(y0, x0) + wx * at(y0, x1)
    bottom = (1 - wx) * at(y1, x0) + wx * at(y1, x1)
    return (1 - wy) * top + wy * bottom


@dataclasses.dataclass(frozen=True)
class RandomScale(_Transform):
    """Zooms about the centre by a factor chosen uniformly from ``scales`` (same output size)."""

    scales: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "scales", _number_tuple(self.scales, "RandomScale: scales", positive=True))

    def sample(self, u) -> tuple[jax.Array, jax.Array]:
        """(scale, angle in radians) for uniforms ``u``."""
        return _pick(self.scales, u[0]), jnp.float32(0.0)

    def apply(self, u, x):
        return _affine(x, *self.sample(u))


@dataclasses.dataclass(frozen=True)
class RandomRotate(_Transform):
    """Rotates about the centre by an angle (degrees) chosen uniformly from ``angles``."""

    angles: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "angles", _number_tuple(self.angles, "RandomRotate: angles"))

    def sample(self, u) -> tuple[jax.Array, jax.Array]:
        """(scale, angle in radians) for uniforms ``u``."""
        return jnp.float32(1.0), _pick(self.angles, u[0]) * (math.pi / 180.0)

    def apply(self, u, x):
        return _affine(x, *self.sample(u))


@dataclasses.dataclass(frozen=True)
class Compose(_Transform):
    """Applies transforms in order, all randomness drawn from one key.

    ``Compose(ts)(key, x)`` draws a (len(ts), 2) block of uniforms from
    ``key`` in one go; transform ``i`` gets row ``i``. Consecutive
    :class:`RandomScale` / :class:`RandomRotate` steps (zooms and rotations
    about the same centre commute and compose into one similarity transform)
    are resampled once, with their scales multiplied and angles added: one
    bilinear interpolation instead of several, and a smaller program to
    compile.
    """

    transforms: tuple = ()

    def __post_init__(self):
        flat = []
        for t in self.transforms:
            flat.extend(t.transforms if isinstance(t, Compose) else (t,))
        for t in flat:
            if not callable(t):
                raise InputError(f"transforms: expected callables t(key, x), got {t!r}")
        object.__setattr__(self, "transforms", tuple(flat))

    def __call__(self, key, x):
        if not self.transforms:
            return x
        return self._run(jax.random.uniform(key, (len(self.transforms), 2)), key, x)

    def apply(self, u, x):
        return self._run(jnp.reshape(u, (len(self.transforms), 2)), None, x)

    def _run(self, u, key, x):
        pending = None  # (scale, angle) of consecutive affine steps not yet applied
        for i, t in enumerate(self.transforms):
            if isinstance(t, (RandomScale, RandomRotate)):
                s, a = t.sample(u[i])
                pending = (s, a) if pending is None else (pending[0] * s, pending[1] + a)
                continue
            if pending is not None:
                x, pending = _affine(x, *pending), None
            if isinstance(t, _Transform):
                x = t.apply(u[i], x)
            elif key is None:
                raise InputError(f"transforms: {t!r} is not a jaxviz transform and needs a key")
            else:
                x = t(jax.random.fold_in(key, i), x)  # a user's transform t(key, x)
        return x if pending is None else _affine(x, *pending)


def standard_transforms(scale: float = 1.0) -> Compose:
    """lucid's standard transforms: pad 12, jitter 8, scale 0.9..1.1, rotate -10..10 degrees, jitter 4.

    Args:
      scale: multiplies the pixel amounts (pad and jitter), for images much
        smaller or larger than lucid's 128 px.
    """
    px = lambda v: max(0, int(round(v * scale)))
    return Compose(
        (
            Pad(px(12)),
            Jitter(px(8)),
            RandomScale(tuple(1 + (i - 5) / 50.0 for i in range(11))),
            RandomRotate(tuple(float(a) for a in list(range(-10, 11)) + 5 * [0])),
            Jitter(px(4)),
        )
    )


# =========================================================================== optimisation


class RenderState(NamedTuple):
    """Explicit state of an activation-maximisation run."""

    variables: Any  # the parameterisation's variables
    opt_state: Any
    step: jax.Array  # int32, number of steps taken


@functools.lru_cache(maxsize=None)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


def _optimizer(optimizer, learning_rate):
    if optimizer is None:
        _checks.positive_number(learning_rate, "learning_rate")
        return _adam(float(learning_rate))
    if not isinstance(optimizer, optax.GradientTransformation):
        raise InputError(f"optimizer: expected an optax.GradientTransformation, got {type(optimizer).__name__}")
    return optimizer


def _hw(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = size
        h, w = _checks.positive_int(h, "size"), _checks.positive_int(w, "size")
    except (TypeError, ValueError):
        raise InputError(f"size: expected an int or (height, width), got {size!r}") from None
    return h, w


def _check_param(param):
    if param is None:
        return fourier()
    if not isinstance(param, ImageParam):
        raise InputError(f"param: expected pixel(...) or fourier(...), got {param!r}")
    return param


def _check_transforms(transforms):
    if transforms is None:
        return Compose(())
    if isinstance(transforms, (list, tuple)):
        return Compose(tuple(transforms))
    if not callable(transforms):
        raise InputError(f"transforms: expected a transform, a sequence of transforms or None, got {transforms!r}")
    return transforms


def _check_objective(objective):
    if not isinstance(objective, Objective):
        raise InputError(f"objective: expected an Objective (e.g. channel('relu4_1', 0)), got {objective!r}")
    return objective




def _loss(variables, key, net, params, objective, param, transforms, hw, relu):
    img = param.image(variables, hw)
    x = transforms(key, img)
    taps = objective.taps
    acts = dict(protocol.taps(reverse_mode(net), params, x, taps, relu=relu)) if taps else {}  # reverse mode only
    acts["input"] = x
    return -objective(acts)


@functools.partial(jax.jit, static_argnames=("optimizer",))
def _opt_init(variables, *, optimizer):
    return optimizer.init(variables)


@functools.partial(jax.jit, static_argnames=("optimizer",))
def _opt_init_each(variables, *, optimizer):
    return jax.vmap(optimizer.init)(variables)


def _init_state(key, *, param, optimizer, batch, hw) -> RenderState:
    variables = param.init(jax.random.split(key)[0], batch, hw)
    return RenderState(variables, _opt_init(variables, optimizer=optimizer), jnp.int32(0))


def _init_states(keys, *, param, optimizer, batch, hw) -> RenderState:
    firsts = [jax.random.split(k)[0] for k in keys]
    variables = jnp.stack([param.init(k, batch, hw) for k in firsts])
    return RenderState(variables, _opt_init_each(variables, optimizer=optimizer), jnp.zeros((len(firsts),), jnp.int32))


def _loop(body, carry, steps: int, unroll: bool):
    """``lax.scan(body, carry, None, length=steps)``, or the same steps traced one after another.

    The unrolled form is not ``lax.scan(..., unroll=True)``: that still wraps
    the body in a call that XLA:CPU compiles like a loop body (see
    :func:`host_loop`).
    """
    if not unroll:
        return lax.scan(body, carry, None, length=steps)
    outs = []
    for _ in range(steps):
        carry, out = body(carry, None)
        outs.append(out)
    return carry, jnp.stack(outs)


def _update_impl(net, params, objective, state, key, *, param, transforms, optimizer, hw, steps, redirect,
                 unroll=False):
    loop_key = jax.random.split(key)[1]
    relu = redirected_relu if redirect else None

    def body(st, _):
        k = jax.random.fold_in(loop_key, st.step)
        loss, g = jax.value_and_grad(_loss)(st.variables, k, net, params, objective, param, transforms, hw, relu)
        updates, opt_state = optimizer.update(g, st.opt_state, st.variables)
        return RenderState(optax.apply_updates(st.variables, updates), opt_state, st.step + 1), -loss

    return _loop(body, state, steps, unroll)


def _run_impl(net, params, objective, state, key, *, param, transforms, optimizer, hw, steps, redirect, batch,
              unroll=False):
    """``steps`` steps from ``state`` -> (state, history, images)."""
    state, history = _update_impl(net, params, objective, state, key, param=param, transforms=transforms,
                                  optimizer=optimizer, hw=hw, steps=steps, redirect=redirect, unroll=unroll)
    return state, history, param.image(state.variables, hw)


_STATIC = ("net", "param", "transforms", "optimizer", "hw", "steps", "redirect")
_update = jax.jit(_update_impl, static_argnames=_STATIC + ("unroll",))
_run = jax.jit(_run_impl, static_argnames=_STATIC + ("batch", "unroll"))


@functools.partial(jax.jit, static_argnames=_STATIC + ("batch", "maker", "unroll"))
def _run_each(net, params, values, states, keys, *, maker, param, transforms, optimizer, hw, steps, redirect, batch,
              unroll=False):
    """K independent runs stacked into one: one network pass over K * batch images per step.

    Equivalent to ``vmap(_run_impl)`` over (values, states, keys) but the
    network, the most expensive part to compile and run, sees one plain
    batch; only the cheap parts (parameterisation, transforms, objective,
    optimiser update) are vmapped over the K instances.
    """
    k = keys.shape[0]
    loop_keys = jax.vmap(lambda key: jax.random.split(key)[1])(keys)
    relu = redirected_relu if redirect else None
    probe = maker(jax.tree_util.tree_map(lambda v: v[0], values))
    taps = probe.taps

    def loss(variables, step):
        imgs = jax.vmap(lambda v: param.image(v, hw))(variables)  # (K, B, h, w, 3)
        step_keys = jax.vmap(lambda key: jax.random.fold_in(key, step))(loop_keys)
        x = jax.vmap(transforms)(step_keys, imgs)
        acts = {}
        if taps:
            flat = protocol.taps(reverse_mode(net), params, x.reshape((k * batch,) + x.shape[2:]), taps, relu=relu)
            acts = {name: a.reshape((k, batch) + a.shape[1:]) for name, a in flat.items()}
        acts["input"] = x
        per = jax.vmap(lambda v, a: maker(v)(a))(values, acts)  # (K,)
        return -jnp.sum(per), per

    def body(st, _):
        (_, per), g = jax.value_and_grad(loss, has_aux=True)(st.variables, st.step[0])
        updates, opt_state = jax.vmap(optimizer.update)(g, st.opt_state, st.variables)
        return RenderState(optax.apply_updates(st.variables, updates), opt_state, st.step + 1), per

    states, history = _loop(body, states, steps, unroll)
    return states, history.T, jax.vmap(lambda v: param.image(v, hw))(states.variables)


def render_init(key: jax.Array, *, size=128, batch: int = 1, param: ImageParam | None = None,
                optimizer: optax.GradientTransformation | None = None, learning_rate: float = 0.05) -> RenderState:
    """Initial state: random variables from ``split(key)[0]`` and the optimiser's state.

    Arguments as in :func:`render`.
    """
    param, opt = _check_param(param), _optimizer(optimizer, learning_rate)
    return _init_state(_checks.prng_key(key), param=param, optimizer=opt, batch=_checks.positive_int(batch, "batch"), hw=_hw(size))


def render_update(net: Any, params, objective: Objective, state: RenderState, key: jax.Array, *, steps: int,
                  size=128, param: ImageParam | None = None, transforms=None,
                  optimizer: optax.GradientTransformation | None = None,
                  learning_rate: float = 0.05, redirect_relu: bool = True,
                  loop: str = "auto") -> tuple[RenderState, jax.Array]:
    """Runs ``steps`` optimisation steps from ``state``.

    Step ``i`` (counted from the run's start, ``state.step``) draws its
    transforms from ``fold_in(split(key)[1], i)``, so splitting a run into
    several calls gives the same result as one call. ``loop`` as in
    :func:`render`.

    Returns:
      (new state, the objective before each step, shape (steps,)).
    """
    kw = dict(param=_check_param(param), transforms=_check_transforms(transforms),
              optimizer=_optimizer(optimizer, learning_rate), hw=_hw(size), redirect=bool(redirect_relu))
    objective = _check_objective(objective)
    net = protocol.as_model(net)
    _check_indices(net, params, objective)
    steps = _checks.positive_int(steps, "steps")
    key = _checks.prng_key(key)
    if not _host_loop(loop, key, params, state):
        return _update(net, params, objective, state, key, steps=steps, **kw)
    history = []
    for _ in range(steps):
        state, h = _update(net, params, objective, state, key, steps=1, unroll=True, **kw)
        history.append(h)
    return state, jnp.concatenate(history)


def host_loop(loop: str = "auto") -> bool:
    """Whether optimisation steps run as a host loop over one compiled step (else one ``lax.scan``).

    ``"auto"`` picks the host loop on the CPU: XLA:CPU compiles the backward
    convolutions of a loop body (``lax.scan`` / ``fori_loop``) without the
    YNNPACK fusion it uses outside loops, which makes each VGG step 3-4x
    slower (measured: 0.34 s per step host-driven vs 1.3 s in a scan, VGG19
    relu4_1 at 128 px); a host loop costs ~0.1 ms of dispatch per step.
    Elsewhere (GPU, TPU), and when ``render`` is itself traced (called
    inside ``jax.jit``), the steps run in one ``lax.scan``. Both give the same
    numbers: step ``i`` is the same function of the same key.
    """
    _checks.one_of(loop, "loop", ("auto", "scan", "host"))
    return loop == "host" or (loop == "auto" and jax.default_backend() == "cpu")


def _host_loop(loop: str, *trees) -> bool:
    """:func:`host_loop`, except that ``"auto"`` under a trace (``render`` inside ``jit``) picks the scan.

    Traced, a host loop would be unrolled into one program of ``steps`` steps.
    """
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(trees))
    return host_loop(loop) and not (loop == "auto" and traced)


def _schedule(steps: int, progress: bool, host: bool) -> list[int]:
    """Steps per compiled call: one each on a host loop; else everything (or ~10 chunks with a progress bar)."""
    if host:
        return [1] * steps
    if not progress or steps < 20:
        return [steps]
    target = steps / 10
    d = min((d for d in range(1, steps + 1) if steps % d == 0), key=lambda d: (abs(d - target), -d))
    return [d] * (steps // d)


def render(
    net: Any,
    params,
    objective: Objective,
    *,
    key: jax.Array,
    size=128,
    batch: int = 1,
    steps: int = 512,
    param: ImageParam | None = None,
    transforms="standard",
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 0.05,
    redirect_relu: bool = True,
    loop: str = "auto",
    progress: bool = False,
    return_history: bool = False,
):
    """Synthesises images that maximise ``objective``.

    Args:
      net: a model behind the model contract (a jaxviz model runs only up to the deepest tap the
        objective reads).
      params: its parameters.
      objective: what to maximise, e.g. ``channel("relu4_1", 7)``.
      key: PRNG key or int seed (variables from ``split(key)[0]``, transforms from
        ``split(key)[1]``).
      size: image size, an int or (height, width).
      batch: number of images optimised together (use with :func:`diversity`
        or objectives with ``batch=``).
      steps: optimisation steps.
      param: :func:`fourier` (default, decorrelated colour) or :func:`pixel`.
      transforms: ``"standard"`` (:func:`standard_transforms`), None, a
        transform, or a sequence of transforms.
      optimizer: an optax transformation (default Adam at ``learning_rate``).
        Pass the same object again to reuse the compiled program.
      learning_rate: Adam's learning rate when ``optimizer`` is None.
      redirect_relu: back-propagate through the network's ReLUs with
        :func:`redirected_relu` (lucid's default), so units that are silent
        on the initial image still get a gradient. The forward pass is
        unchanged.
      loop: ``"auto"``, ``"scan"`` or ``"host"``: how the steps are driven
        (see :func:`host_loop`; the result is the same).
      progress: show a tqdm bar (a scan is then run in chunks; the result
        is the same).
      return_history: also return the objective at every step.

    Returns:
      images (batch, h, w, 3) RGB in [0, 1]; with ``return_history`` a pair
      (images, history (steps,)).

    Raises:
      InputError: bad arguments, or an objective layer the network lacks.

    Example:
      >>> img = render(net, params, channel("relu3_1", 5), key=jax.random.key(0), size=96)  # doctest: +SKIP
    """
    _check_objective(objective)
    net = protocol.as_model(net)
    for name in objective.taps:
        net.resolve(name, "objective")
    _check_indices(net, params, objective)
    key = _checks.prng_key(key)
    transforms = standard_transforms() if isinstance(transforms, str) and transforms == "standard" else transforms
    param, opt, hw = _check_param(param), _optimizer(optimizer, learning_rate), _hw(size)
    transforms = _check_transforms(transforms)
    steps = _checks.positive_int(steps, "steps")
    batch = _checks.positive_int(batch, "batch")
    state, history = _init_state(key, param=param, optimizer=opt, batch=batch, hw=hw), []
    with tqdm(total=steps, desc="render", unit="step", disable=not progress, leave=False) as bar:
        host = _host_loop(loop, key, params)
        for n in _schedule(steps, progress, host):
            state, h, images = _run(net, params, objective, state, key, param=param, transforms=transforms,
                                    optimizer=opt, hw=hw, steps=n, redirect=bool(redirect_relu), batch=batch,
                                    unroll=host)
            history.append(h)
            bar.update(n)
    return (images, jnp.concatenate(history)) if return_history else images


def render_each(
    net: Any,
    params,
    make_objective: Callable[[Any], Objective],
    values,
    *,
    key: jax.Array,
    size=128,
    batch: int = 1,
    steps: int = 512,
    param: ImageParam | None = None,
    transforms="standard",
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 0.05,
    redirect_relu: bool = True,
    loop: str = "auto",
    progress: bool = False,
    return_history: bool = False,
):
    """Renders one objective per value, all in one compiled, ``vmap``-ed optimisation.

    Instance ``i`` optimises ``make_objective(values[i])`` and equals
    ``render(..., make_objective(values[i]), key=jax.random.split(key, K)[i])``.

    Args:
      make_objective: value -> :class:`Objective`; it is a static argument,
        so pass the same function object to reuse the compiled program.
      values: (K, ...) array, a list of K scalars, or a pytree of arrays
        with leading axis K.
      Others: as in :func:`render`.

    Returns:
      (K, batch, h, w, 3) images; with ``return_history`` also (K, steps).
    """
    if isinstance(values, (list, tuple)) and values and all(np.ndim(v) == 0 for v in values):
        values = np.asarray(values)  # [3, 5]: K scalars, as the array np.array([3, 5])
    leaves = jax.tree_util.tree_leaves(values)
    if not leaves:
        raise InputError("values: expected at least one value, got none")
    values = jax.tree_util.tree_map(jnp.asarray, values)
    k = leaves[0].shape[0] if np.ndim(leaves[0]) else None
    if k is None or k == 0 or any(np.shape(leaf)[:1] != (k,) for leaf in leaves):
        raise InputError(f"values: expected arrays with the same leading axis K >= 1, got {[np.shape(x) for x in leaves]}")
    key = _checks.prng_key(key)
    probe = make_objective(jax.tree_util.tree_map(lambda x: x[0], values))
    _check_objective(probe)
    net = protocol.as_model(net)
    for name in probe.taps:
        net.resolve(name, "objective")
    _check_indices(net, params, *(make_objective(jax.tree_util.tree_map(lambda x, i=i: x[i], values))
                                  for i in range(k)))
    transforms = standard_transforms() if isinstance(transforms, str) and transforms == "standard" else transforms
    param, opt, hw = _check_param(param), _optimizer(optimizer, learning_rate), _hw(size)
    transforms = _check_transforms(transforms)
    steps = _checks.positive_int(steps, "steps")
    keys = jax.random.split(key, k)
    batch = _checks.positive_int(batch, "batch")
    states, history = _init_states(keys, param=param, optimizer=opt, batch=batch, hw=hw), []
    with tqdm(total=steps, desc=f"render x{k}", unit="step", disable=not progress, leave=False) as bar:
        host = _host_loop(loop, key, params, values)
        for n in _schedule(steps, progress, host):
            states, h, images = _run_each(net, params, values, states, keys, maker=make_objective, param=param,
                                          transforms=transforms, optimizer=opt, hw=hw, steps=n,
                                          redirect=bool(redirect_relu), batch=batch, unroll=host)
            history.append(h)
            bar.update(n)
    return (images, jnp.concatenate(history, axis=1)) if return_history else images


@functools.lru_cache(maxsize=None)
def _channel_maker(layer: str, kind: str) -> Callable[[Any], Objective]:
    if kind == "neuron":
        return lambda c: neuron(layer, c)
    return lambda c: channel(layer, c)


def render_channels(net: Any, params, layer: str, channels: Sequence[int], *, key: jax.Array,
                    neurons: bool = False, **kwargs):
    """Renders one image per channel of ``layer`` in one compiled call (see :func:`render_each`).

    Args:
      layer: tap name.
      channels: channel indices.
      neurons: maximise the centre neuron instead of the channel mean.
      key, **kwargs: as in :func:`render_each` (``batch`` is 1).

    Returns:
      (len(channels), h, w, 3) images (with ``return_history``, also (K, steps)).
    """
    net = protocol.as_model(net)
    name = net.resolve(layer, "layer")
    idx = np.asarray(list(channels) if not isinstance(channels, (np.ndarray, jax.Array)) else channels)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise InputError(f"channels: expected a non-empty sequence of channel indices, got {channels!r}")
    shape = jax.eval_shape(
        lambda p: protocol.taps(net, p, jnp.zeros((1, max(64, protocol.min_size(net)), max(64, protocol.min_size(net)),
                                                  3)), name)[name],
        params,
    ).shape
    width = shape[-1]
    bad = [int(c) for c in idx if not 0 <= c < width]
    if bad:
        raise InputError(f"channels: {name} has {width} channels (0-{width - 1}), got {_checks.index_ranges(bad)}")
    if kwargs.get("batch", 1) != 1:
        raise InputError(f"batch: render_channels renders one image per channel, got batch={kwargs['batch']}")
    kwargs.pop("batch", None)
    out = render_each(net, params, _channel_maker(name, "neuron" if neurons else "channel"),
                      jnp.asarray(idx, jnp.int32), key=key, batch=1, **kwargs)
    if isinstance(out, tuple):
        return out[0][:, 0], out[1]
    return out[:, 0]
