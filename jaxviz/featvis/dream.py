"""DeepDream: amplify what a layer already sees in an image.

The seed's loop (Mordvintsev et al.): pick a layer, take the gradient of
``½‖a‖²`` with respect to the image (at the layer that gradient is the
activation itself) and climb it. Made good:

* **octaves**: the image is processed from a small scale up to full size
  (``octaves`` levels, each ``octave_scale`` times larger); the *detail* the
  dream adds at one scale (dreamed minus base) is upsampled and carried into
  the next, so large structures form at coarse scales and fine ones on top.
* **roll jitter**: before every step the image is rolled by a random
  ``(dy, dx)`` drawn from an explicit PRNG key, and the gradient is rolled
  back by exactly the same amount (an integer roll is a permutation, so the
  undo is exact), which hides the grid artefacts of strided layers.
* **gradient normalisation**: each step moves every image by
  ``step_size`` times its gradient divided by the gradient's mean absolute
  value, so ``step_size`` is in pixel units whatever the layer.
* **tiles**: ``tile_size`` splits the gradient computation into tiles, each
  cropped with a margin of the layers' receptive field and aligned to their
  stride, and each contributing only its own core positions to the
  objective. The tiled gradient therefore *equals* the whole-image gradient
  (up to float round-off), while memory holds one tile at a time, so images
  far larger than the whole-image pass fits can be dreamed.
* **several layers with weights** (``layers={"relu4_2": 1.0, "relu3_1": 0.3}``)
  and **guided dreaming**: with ``guide=`` the objective at each position is
  ``max_j <a_i, g_j>``, the best match among the guide image's features, so
  the dream draws in the guide's patterns (gradient = the matched guide
  feature, Mordvintsev's "objective_guide").

Per-layer objectives are means over positions (``w * ½ mean_i ‖a_i‖²``, or
``w * mean_i max_j <a_i, g_j>`` when guided), so weights compare layers of
different sizes fairly.

Example::

    import jax
    from jaxviz import models, weights, image, dream
    net, params = models.vgg19(), weights.load("vgg19", classifier=False)
    x = image.load("mountain.jpg", 512)
    out = dream.dream(net, params, x, layers={"relu4_2": 1.0, "relu3_3": 0.5},
                      key=jax.random.key(0), octaves=4, steps=10)
    image.save(out[0], "dream.png")

Reference: A. Mordvintsev, C. Olah, M. Tyka, "Inceptionism: Going Deeper into
Neural Networks", Google Research blog, 2015; the deepdream notebook
(github.com/google/deepdream).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm.auto import tqdm

from .. import _checks, _io
from ..errors import CheckpointError, InputError
from .patches import receptive_field
from ..execution import host_loop, reverse_mode
from ..models import protocol

__all__ = [
    "dream",
    "dream_step",
    "objective",
    "gradient",
    "guide_features",
    "roll",
    "unroll",
    "octave_shapes",
    "laplacian_normalize",
    "SMOOTHINGS",
]

Layers = str | Sequence[str] | Mapping[str, float]
UNROLL_TILES = 16  # up to this many gradient tiles are traced one after another instead of in a lax.scan


# --------------------------------------------------------------------------- arguments


def _layer_spec(net: Any, layers: Layers, params: Any) -> tuple[tuple[str, float], ...]:
    """(canonical name, weight) pairs, validated; hashable so it can be a static jit argument. None: the tap the
    model suggests for DeepDream (:func:`jaxviz.models.protocol.suggested_layer`; ``relu4_2`` on a VGG)."""
    if layers is None:
        side = max(224, protocol.min_size(net))
        layers = protocol.suggested_layer(net, params, (1, side, side, 3), "dream")
    if isinstance(layers, str):
        items = [(layers, 1.0)]
    elif isinstance(layers, Mapping):
        items = list(layers.items())
    else:
        try:
            items = [(name, 1.0) for name in layers]
        except TypeError:
            raise InputError(
                f"layers: expected a layer name, a sequence of names or a mapping name -> weight, got {layers!r}"
            ) from None
    if not items:
        raise InputError("layers: expected at least one layer, got none")
    spec = {}
    for name, w in items:
        canonical = net.resolve(name, "layers")
        try:
            receptive_field(net, canonical, params)
        except InputError:
            raise InputError(
                f"layers: expected convolutional (spatial) taps, got {name!r}"
            ) from None
        if isinstance(w, bool) or not isinstance(w, (int, float, np.floating, np.integer)) or not math.isfinite(w):
            raise InputError(f"layers: expected a finite weight for {name!r}, got {w!r}")
        spec[canonical] = spec.get(canonical, 0.0) + float(w)
    return tuple(sorted(spec.items(), key=lambda kv: net.layers.index(kv[0])))


def _fingerprint(net, params, images, key, guide, settings) -> str:
    """sha256 of everything a dream's result depends on (the network, its params, the inputs, the settings)."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    guides = jax.tree.leaves(guide) if guide is not None else []
    return _io.fingerprint((_io.model_key(net), settings), [images, data, *guides, *jax.tree.leaves(params)])


def _check_images(images, name="images", net: Any = None):
    _checks.images(images, name, min_size=protocol.min_size(net) if net is not None else 1,
                   unit_range=net is not None and protocol.unit_range(net))
    return jnp.asarray(images, jnp.float32)


# --------------------------------------------------------------------------- tiles


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static description of how one image size is split into gradient tiles."""

    crop: tuple[int, int]
    tiles: tuple[tuple[int, int, int, int, int, int], ...]  # (crop_y, crop_x, core_y0, core_y1, core_x0, core_x1)
    strides: tuple[int, ...]
    layer_hw: tuple[tuple[int, int], ...]

    @property
    def tiled(self) -> bool:
        return len(self.tiles) > 1


def _axis_tiles(size: int, tile: int | None, unit: int, top: int, bottom: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Crop length and (crop_start, core_start, core_end) along one axis.

    Cores are multiples of ``unit`` (the deepest layer's stride); each crop
    extends ``top`` pixels before and ``bottom`` after its core (both
    multiples of ``unit``) and has the same length ``crop`` for every tile,
    ``crop = size (mod unit)``, so crops that are clamped to the far image
    edge end exactly there and every crop start is a multiple of ``unit``.
    """
    if tile is None:
        return size, [(0, 0, size)]
    core = max(unit, -(-tile // unit) * unit)
    crop = core + top + bottom + size % unit
    if crop >= size:
        return size, [(0, 0, size)]
    out = []
    for a in range(0, size, core):
        b = min(a + core, size)
        start = min(max(a - top, 0), size - crop)
        out.append((start, a, b))
    return crop, out


def _plan(net: Any, params: Any, spec, height: int, width: int, tile_size: int | None) -> _Plan:
    names = [n for n, _ in spec]
    fields = [receptive_field(net, n, params) for n in names]
    shapes = protocol.tap_shapes(net, params, (1, height, width, 3))
    layer_hw = [tuple(shapes[n][1:3]) for n in names]
    unit = max(f.stride for f in fields)
    # every core position p (stride s) needs input rows s*p + offset .. s*p + offset + size - 1
    top = max(-f.offset for f in fields)
    bottom = max(f.offset + f.size - f.stride for f in fields)
    top = -(-top // unit) * unit
    bottom = -(-max(bottom, 0) // unit) * unit
    crop_h, ys = _axis_tiles(height, tile_size, unit, top, bottom)
    crop_w, xs = _axis_tiles(width, tile_size, unit, top, bottom)
    tiles = tuple((sy, sx, ay, by, ax, bx) for sy, ay, by in ys for sx, ax, bx in xs)
    return _Plan((crop_h, crop_w), tiles, tuple(f.stride for f in fields), tuple(layer_hw))


# --------------------------------------------------------------------------- objective


def _position_terms(act: jax.Array, guide: jax.Array | None) -> jax.Array:
    """(N, h, w, C) -> (N, h, w): ½‖a‖² per position, or max_j <a, g_j> when guided."""
    act = act.astype(jnp.float32)
    if guide is None:
        return 0.5 * jnp.sum(act * act, axis=-1)
    return jnp.max(jnp.einsum("nhwc,mc->nhwm", act, guide), axis=-1)


def _masked_objective(net, params, x, guides, origin, core, *, spec, plan: _Plan, batch: int):
    """Objective of the positions whose pixel coordinate lies in ``core``, computed on crop ``x`` at ``origin``."""
    names = tuple(n for n, _ in spec)
    acts = protocol.taps(reverse_mode(net), params, x, names)  # differentiated in reverse mode only
    oy, ox = origin
    y0, y1, x0, x1 = core
    total = jnp.float32(0.0)
    for (name, w), stride, (fh, fw) in zip(spec, plan.strides, plan.layer_hw):
        t = _position_terms(acts[name], None if guides is None else guides[name])
        h, wd = t.shape[1], t.shape[2]
        py = oy + stride * jnp.arange(h)
        px = ox + stride * jnp.arange(wd)
        my = (py >= y0) & (py < y1)
        mx = (px >= x0) & (px < x1)
        mask = (my[:, None] & mx[None, :]).astype(t.dtype)
        total = total + w * jnp.sum(t * mask) / (batch * fh * fw)
    return total


def _value_and_grad_impl(net, params, x, guides, *, spec, plan: _Plan):
    n, height, width, _ = x.shape
    f = functools.partial(_masked_objective, net, params, spec=spec, plan=plan, batch=n)
    if not plan.tiled:
        zero = jnp.int32(0)
        return jax.value_and_grad(lambda z: f(z, guides, (zero, zero), (zero, height, zero, width)))(x)
    ch, cw = plan.crop
    tiles = jnp.asarray(np.array(plan.tiles, np.int32))

    def body(carry, tile):
        grad, value = carry
        sy, sx, y0, y1, x0, x1 = (tile[i] for i in range(6))
        crop = lax.dynamic_slice(x, (0, sy, sx, 0), (n, ch, cw, 3))
        v, g = jax.value_and_grad(lambda z: f(z, guides, (sy, sx), (y0, y1, x0, x1)))(crop)
        old = lax.dynamic_slice(grad, (0, sy, sx, 0), (n, ch, cw, 3))
        grad = lax.dynamic_update_slice(grad, old + g, (0, sy, sx, 0))
        return (grad, value + v), None

    carry = (jnp.zeros_like(x), jnp.float32(0.0))
    if len(plan.tiles) <= UNROLL_TILES:
        # a few tiles are traced one after another: XLA:CPU compiles the backward convolutions of a loop
        # body slower (see jaxviz.execution)
        for tile in plan.tiles:
            carry, _ = body(carry, jnp.asarray(tile, jnp.int32))
        grad, value = carry
    else:
        (grad, value), _ = lax.scan(body, carry, tiles)
    return value, grad


_value_and_grad = jax.jit(_value_and_grad_impl, static_argnames=("net", "spec", "plan"))


def guide_features(net: Any, params, guide, *, layers: Layers) -> dict[str, jax.Array]:
    """A guide image's features per layer, flattened to (positions, channels).

    Args:
      net, params: the model.
      guide: (1, H, W, 3) or (N, H, W, 3) RGB in [0, 1]; all positions of all
        images are pooled.
      layers: as in :func:`dream`.

    Returns:
      dict layer -> (M, C) float32.
    """
    g = _check_images(guide, "guide", net)
    net = protocol.as_model(net, guide)
    spec = _layer_spec(net, layers, params)
    acts = protocol.taps(net, params, g, tuple(n for n, _ in spec))
    return {n: acts[n].reshape(-1, acts[n].shape[-1]).astype(jnp.float32) for n, _ in spec}


def objective(net: Any, params, images, *, layers: Layers | None = None, guide=None) -> jax.Array:
    """The DeepDream objective of images (what :func:`dream` climbs).

    ``sum_l w_l * mean over positions of ½‖a_l‖²``, or with a guide
    ``sum_l w_l * mean over positions of max_j <a_l, g_j>``. Means run over
    the batch and the positions; channels are summed.

    Args:
      net, params: a model (any behind the model contract) and its parameters.
      images: (N, H, W, 3) RGB in [0, 1].
      layers: a tap name, a sequence of names (weight 1 each) or a mapping
        name -> weight. Convolutional taps only. Default: the tap the model
        suggests for DeepDream (``relu4_2`` on a VGG; measured on other
        models, :func:`jaxviz.models.protocol.suggested_layer`).
      guide: optional guide image (1, Hg, Wg, 3), or precomputed
        :func:`guide_features`.

    Returns:
      scalar float32.
    """
    x = _check_images(images, "images", net)
    net = protocol.as_model(net, images)
    spec = _layer_spec(net, layers, params)
    plan = _plan(net, params, spec, x.shape[1], x.shape[2], None)
    return _value(net, params, x, _guides(net, params, spec, guide), spec=spec, plan=plan)


def _guides(net, params, spec, guide):
    if guide is None:
        return None
    if isinstance(guide, Mapping):
        missing = [n for n, _ in spec if n not in guide]
        if missing:
            raise InputError(f"guide: expected features for layers {missing}, got {sorted(guide)}")
        return {n: jnp.asarray(guide[n], jnp.float32) for n, _ in spec}
    return guide_features(net, params, guide, layers=dict(spec))


def gradient(
    net: Any, params, images, *, layers: Layers | None = None, guide=None, tile_size: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """Value and gradient of the DeepDream :func:`objective`, optionally in tiles.

    With ``tile_size`` the image is split into cores of about ``tile_size``
    pixels (rounded up to the deepest layer's stride); each core is
    processed on a crop extended by the layers' receptive field, so the
    result equals the whole-image gradient up to float round-off.

    Args:
      net, params, images, layers, guide: as in :func:`objective`.
      tile_size: core size in pixels, or None for one pass over the whole image.

    Returns:
      (value, gradient): a scalar and an array of the images' shape.
    """
    x = _check_images(images, "images", net)
    net = protocol.as_model(net, images)
    spec = _layer_spec(net, layers, params)
    if tile_size is not None:
        tile_size = _checks.positive_int(tile_size, "tile_size")
    plan = _plan(net, params, spec, x.shape[1], x.shape[2], tile_size)
    return _value_and_grad(net, params, x, _guides(net, params, spec, guide), spec=spec, plan=plan)


# --------------------------------------------------------------------------- jitter


def roll(images: jax.Array, key: jax.Array, max_shift: int) -> tuple[jax.Array, jax.Array]:
    """Rolls images by a random (dy, dx) in [-max_shift, max_shift]; returns (rolled, shift)."""
    u = jax.random.uniform(key, (2,))  # cheaper to compile than randint
    shift = jnp.clip(jnp.floor(u * (2 * max_shift + 1)).astype(jnp.int32), 0, 2 * max_shift) - max_shift
    return jnp.roll(images, (shift[0], shift[1]), axis=(1, 2)), shift


def unroll(images: jax.Array, shift: jax.Array) -> jax.Array:
    """Undoes :func:`roll` exactly (an integer roll is a permutation of pixels)."""
    return jnp.roll(images, (-shift[0], -shift[1]), axis=(1, 2))


_BINOMIAL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256.0


def _blur_down(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> about half the size: the 5x5 binomial blur with stride 2 (a Gaussian pyramid's step)."""
    c = x.shape[-1]
    k = jnp.asarray(np.tile(_BINOMIAL[:, :, None, None], (1, 1, 1, c)))
    return lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=c, precision=lax.Precision.HIGHEST)


def _up(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    return jax.image.resize(x, (x.shape[0], hw[0], hw[1], x.shape[3]), "linear")


def laplacian_normalize(g: jax.Array, levels: int = 4) -> jax.Array:
    """The gradient with each band of its Laplacian pyramid scaled to unit standard deviation, then merged (the
    TensorFlow DeepDream tutorial's ``lap_normalize``): the coarse bands, whose gradients are small, get as much
    weight as the pixel-scale band, which alone would paint grainy speckle into flat regions.

    Args:
      g: (N, H, W, C) gradients; each image is normalised on its own.
      levels: pyramid levels (1: one band, the whole gradient over its std).

    Returns:
      An array of ``g``'s shape.
    """
    bands, cur = [], g
    for _ in range(levels - 1):
        h, w = cur.shape[1:3]
        if min(h, w) < 4:
            break
        lo = _blur_down(cur)
        bands.append(cur - _up(lo, (h, w)))
        cur = lo
    bands.append(cur)
    bands = [b / (jnp.std(b, axis=(1, 2, 3), keepdims=True) + 1e-10) for b in bands]
    out = bands[-1]
    for b in reversed(bands[:-1]):
        out = _up(out, b.shape[1:3]) + b
    return out


#: ``dream(smoothing=...)`` values
SMOOTHINGS = ("laplacian", "none")


def _step(grad_fn, x, key, step_size, jitter: int, smoothing: str = "none"):
    """One normalised, jittered gradient-ascent step; ``grad_fn(x) -> gradient``."""
    rolled, shift = roll(x, key, jitter)
    g = unroll(grad_fn(rolled), shift)
    if smoothing == "laplacian":
        g = laplacian_normalize(g)
    g = g / (jnp.mean(jnp.abs(g), axis=(1, 2, 3), keepdims=True) + 1e-8)
    return jnp.clip(x + step_size * g, 0.0, 1.0)


def _value_impl(net, params, x, guides, *, spec, plan: _Plan):
    """The objective alone (forward passes only), tiled like the gradient."""
    n, height, width, _ = x.shape
    f = functools.partial(_masked_objective, net, params, spec=spec, plan=plan, batch=n)
    if not plan.tiled:
        zero = jnp.int32(0)
        return f(x, guides, (zero, zero), (zero, height, zero, width))
    ch, cw = plan.crop

    def body(value, tile):
        sy, sx, y0, y1, x0, x1 = (tile[i] for i in range(6))
        crop = lax.dynamic_slice(x, (0, sy, sx, 0), (n, ch, cw, 3))
        return value + f(crop, guides, (sy, sx), (y0, y1, x0, x1)), None

    return lax.scan(body, jnp.float32(0.0), jnp.asarray(np.array(plan.tiles, np.int32)))[0]


_value = jax.jit(_value_impl, static_argnames=("net", "spec", "plan"))


@functools.partial(jax.jit, static_argnames=("net", "spec", "plan", "steps", "jitter", "values", "unroll",
                                             "smoothing"))
def _run_octave(net, params, x, key, guides, step_size, start, *, spec, plan, steps, jitter, values=False,
                unroll=False, smoothing="none"):
    """Steps ``start .. start + steps - 1`` of an octave (step ``i`` rolls with ``fold_in(key, i)``)."""
    grad_fn = lambda z: _value_and_grad_impl(net, params, z, guides, spec=spec, plan=plan)[1]

    def body(z, i):
        return _step(grad_fn, z, jax.random.fold_in(key, i), step_size, jitter, smoothing), None

    if unroll:
        out = x
        for i in range(steps):
            out, _ = body(out, start + i)
    else:
        out, _ = lax.scan(body, x, start + jnp.arange(steps))
    if not values:
        return out
    value = lambda z: _value_impl(net, params, z, guides, spec=spec, plan=plan)
    return out, value(x), value(out)


def dream_step(
    net: Any,
    params,
    images,
    key: jax.Array,
    *,
    layers: Layers | None = None,
    step_size: float = 0.01,
    jitter: int = 32,
    tile_size: int | None = None,
    guide=None,
    smoothing: str = "laplacian",
) -> jax.Array:
    """One DeepDream step: roll, (tiled) gradient, unroll, normalise, ascend, clip to [0, 1].

    Args:
      net, params, images, layers, guide, tile_size: as in :func:`gradient`.
      key: PRNG key for the roll.
      step_size: mean absolute pixel change of the step.
      jitter: largest roll in pixels (0 for none).
      smoothing: as in :func:`dream`.

    Returns:
      the updated images, same shape.
    """
    x = _check_images(images, "images", net)
    net = protocol.as_model(net, images)
    spec = _layer_spec(net, layers, params)
    jitter = _check_jitter(jitter)
    smoothing = _check_smoothing(smoothing)
    plan = _plan(net, params, spec, x.shape[1], x.shape[2], tile_size)
    return _run_octave(
        net, params, x, key, _guides(net, params, spec, guide), jnp.float32(step_size), jnp.int32(0),
        spec=spec, plan=plan, steps=1, jitter=jitter, unroll=True, smoothing=smoothing,
    )


def _check_smoothing(smoothing) -> str:
    if smoothing not in SMOOTHINGS:
        raise InputError(f"smoothing: expected one of {', '.join(map(repr, SMOOTHINGS))}, got {smoothing!r}")
    return smoothing


def _check_jitter(jitter) -> int:
    if isinstance(jitter, bool) or not isinstance(jitter, (int, np.integer)) or jitter < 0:
        raise InputError(f"jitter: expected a non-negative int (pixels), got {jitter!r}")
    return int(jitter)


def octave_shapes(height: int, width: int, *, octaves: int, octave_scale: float) -> list[tuple[int, int]]:
    """Image sizes of the octaves, smallest first (the last is (height, width))."""
    return [
        (max(1, round(height / octave_scale**i)), max(1, round(width / octave_scale**i)))
        for i in reversed(range(octaves))
    ]


def _resize(x, hw):
    if x.shape[1:3] == tuple(hw):
        return x
    return jax.image.resize(x, (x.shape[0], hw[0], hw[1], x.shape[3]), "linear", antialias=True)


def dream(
    net: Any,
    params,
    images,
    *,
    key: jax.Array,
    layers: Layers | None = None,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 10,
    step_size: float = 0.01,
    jitter: int = 32,
    tile_size: int | None = None,
    guide=None,
    loop: str = "auto",
    progress: bool = False,
    return_objectives: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    smoothing: str = "laplacian",
):
    """DeepDream with octaves, carried detail, roll jitter, normalised steps and tiles.

    Args:
      net: a model behind the model contract (a jaxviz model stops after the deepest tap, so a
        classifier is never run).
      params: its parameters (``weights.load(..., classifier=False)`` is enough).
      images: (N, H, W, 3) RGB in [0, 1]; every image is dreamed on its own
        (steps are normalised per image).
      key: PRNG key (or an int seed); the rolls of octave ``o``, step ``s`` use
        ``fold_in(fold_in(key, o), s)``.
      layers: a tap name, a sequence of names or a mapping name -> weight;
        default the tap the model suggests (``relu4_2`` on a VGG).
      octaves: number of scales (1 for a single scale).
      octave_scale: size ratio between consecutive octaves (> 1).
      steps: gradient steps per octave.
      step_size: mean absolute pixel change per step (images live in [0, 1]).
      jitter: largest random roll in pixels per step (0 for none).
      tile_size: compute gradients in tiles of about this many pixels (see
        :func:`gradient`); None for whole images.
      guide: a guide image (1, Hg, Wg, 3) to dream towards, or its
        :func:`guide_features`.
      smoothing: ``"laplacian"`` (default): each step's gradient goes through
        :func:`laplacian_normalize` (4 pyramid levels, each scaled to unit
        std) before the step, as the TensorFlow DeepDream tutorial does; on
        trained VGG16 features it halves the grainy speckle a raw gradient
        leaves in flat regions (``tests/test_real_weights.py`` measures it).
        ``"none"``: the raw gradient (only scaled to ``step_size``).
      loop: ``"auto"``, ``"scan"`` or ``"host"``: run the steps of an octave
        in one ``lax.scan`` or as a host loop over one compiled step
        (``"auto"``: host loop on the CPU, where XLA compiles convolutions in
        loop bodies slower; see :mod:`jaxviz.execution`).
        Same result either way.
      progress: show a tqdm bar.
      return_objectives: also return the objective before and after each
        octave.
      checkpoint: an ``.npz`` file written (atomically) after every octave;
        with ``resume``, a call with the same inputs and settings continues
        after the octaves it holds, with the same result as an uninterrupted
        call. It is left in place at the end (a rerun then returns at once).
      resume: continue from a matching ``checkpoint``; False starts afresh.

    Returns:
      the dreamed images (N, H, W, 3) in [0, 1]; with ``return_objectives``
      a pair (images, objectives) where objectives is an (octaves, 2) NumPy
      array of [before, after] values per octave (at that octave's size).

    Raises:
      InputError: bad images, layers or hyper-parameters, a smallest
        octave below the network's minimum size, or (with ``resume``) a
        checkpoint written by a call with other inputs or settings.

    Example::

        out = dream(net, params, x, key=jax.random.key(0), layers="relu4_2")
    """
    x = _check_images(images, "images", net)
    net = protocol.as_model(net, images)
    spec = _layer_spec(net, layers, params)
    key = _checks.prng_key(key)
    octaves = _checks.positive_int(octaves, "octaves")
    steps = _checks.positive_int(steps, "steps")
    jitter = _check_jitter(jitter)
    smoothing = _check_smoothing(smoothing)
    if not isinstance(octave_scale, numbers.Real) or isinstance(octave_scale, bool) or not octave_scale > 1.0:
        raise InputError(f"octave_scale: expected a number > 1, got {octave_scale!r}")
    octave_scale = float(octave_scale)
    _checks.positive_number(step_size, "step_size")
    step_size = float(step_size)
    if tile_size is not None:
        tile_size = _checks.positive_int(tile_size, "tile_size")
    shapes = octave_shapes(x.shape[1], x.shape[2], octaves=octaves, octave_scale=octave_scale)
    if min(shapes[0]) < protocol.min_size(net):
        raise InputError(
            f"octaves: the smallest of {octaves} octaves (scale {octave_scale}) would be "
            f"{shapes[0][0]}x{shapes[0][1]} px, below the network's minimum {protocol.min_size(net)}; "
            "use fewer octaves, a smaller octave_scale or a larger image"
        )
    guides = _guides(net, params, spec, guide)
    host = host_loop(loop)
    detail = None
    record = []
    done = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None:
        fingerprint = _fingerprint(net, params, x, key, guide, (spec, octaves, octave_scale, steps, step_size, jitter,
                                                                 tile_size, bool(return_objectives), smoothing))
        if resume and path.exists():
            saved = _io.read_checkpoint(path, "dream")
            if str(saved.get("fingerprint")) != fingerprint:
                raise CheckpointError(f"checkpoint: {path} was written by a dream of other inputs or settings; "
                                      "delete it or pass resume=False", "mismatch")
            done = int(saved["octaves_done"])
            detail, z = jnp.asarray(saved["detail"]), jnp.asarray(saved["images"])
            record = [tuple(r) for r in saved["objectives"]]
    bar = tqdm(total=octaves * steps, initial=done * steps, desc="dream", unit="step", disable=not progress,
               leave=False)
    try:
        for o, hw in enumerate(shapes):
            if o < done:
                continue
            base = _resize(x, hw)
            detail = jnp.zeros_like(base) if detail is None else _resize(detail, hw)
            z = jnp.clip(base + detail, 0.0, 1.0)
            plan = _plan(net, params, spec, hw[0], hw[1], tile_size)
            okey = jax.random.fold_in(key, o)
            if host:
                start = z
                for i in range(steps):
                    z = _run_octave(net, params, z, okey, guides, jnp.float32(step_size), jnp.int32(i),
                                    spec=spec, plan=plan, steps=1, jitter=jitter, unroll=True, smoothing=smoothing)
                    bar.update(1)
                if return_objectives:
                    record.append((float(_value(net, params, start, guides, spec=spec, plan=plan)),
                                   float(_value(net, params, z, guides, spec=spec, plan=plan))))
            else:
                res = _run_octave(net, params, z, okey, guides, jnp.float32(step_size), jnp.int32(0),
                                  spec=spec, plan=plan, steps=steps, jitter=jitter, values=return_objectives,
                                  smoothing=smoothing)
                if return_objectives:
                    z, before, after = res
                    record.append((float(before), float(after)))
                else:
                    z = res
                bar.update(steps)
            detail = z - base
            if path is not None:
                _io.write_npz(path, fingerprint=np.array(fingerprint), octaves_done=np.array(o + 1),
                              detail=np.asarray(detail), images=np.asarray(z),
                              objectives=np.array(record, np.float32).reshape(-1, 2))
    finally:
        bar.close()
    return (z, np.array(record, np.float32)) if return_objectives else z
