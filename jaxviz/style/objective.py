"""Style transfer's objective, optax-style ``init``/``update``/``evaluate``, and the targets.

Part of :mod:`jaxviz.style`; import from there.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from .. import _checks, execution
from ..errors import InputError
from ..execution import reverse_mode
from ..models import protocol
from ..models.vgg import IMAGENET_MEAN
from . import losses
from .presets import Config, _for_model, _optimizer, config

class Losses(NamedTuple):
    """Per-image losses, each of shape (N,). The weighted parts add up to ``total``.

    ``content``, ``style`` and ``tv`` are the *weighted* terms; they are None
    in what :func:`update` returns for L-BFGS (it reuses the line search's
    value and does not recompute the parts; :func:`evaluate` gives them).
    """

    total: jax.Array
    content: jax.Array | None
    style: jax.Array | None
    tv: jax.Array | None


@struct.dataclass
class State:
    """Everything :func:`update` needs; a pytree (``config`` is static).

    Attributes:
      image: (N, H, W, 3) the images being optimised, in [0, pixel_scale].
      opt_state: the Optax state, one per image (leading axis N).
      step: number of steps taken (int32 scalar).
      content_targets: tap -> (N, h, w, c) activations of the content images.
      style_targets: tap -> (c, c) blended Gram targets (see
        :func:`jaxviz.losses.gram_target`).
      config: the :class:`Config`.
    """

    image: jax.Array
    opt_state: Any
    step: jax.Array
    content_targets: dict
    style_targets: dict
    config: Config = struct.field(pytree_node=False)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _taps(net: Any, params: Any, x: jax.Array, names: tuple[str, ...]) -> dict:
    return protocol.taps(net, params, x, names)


def _blocks(net: Any, params: Any, cfg: Config, image_shape: tuple) -> list[tuple[str | None, tuple[str, ...], str | None]]:
    """Segments of the network up to the deepest tap used: (start, taps inside, the downsampling tap ending it).

    A model that can be entered after a tap (``start=``, VGG) is cut after every tap that shrinks the map
    (measured: VGG's pools), so a segment's input is small and ``remat`` keeps only that; any other model is
    one segment."""
    order = net.layers
    wanted = {net.resolve(n) for n, _ in cfg.content_layers + cfg.style_layers}
    deepest = max(order.index(n) for n in wanted)
    if not protocol.supports_start(net):
        return [(None, tuple(n for n in order[: deepest + 1] if n in wanted), None)]
    shapes = protocol.tap_shapes(net, params, image_shape)
    blocks, start, names = [], None, []
    for i, n in enumerate(order[: deepest + 1]):
        names.append(n)
        prev = shapes.get(order[i - 1]) if i else None
        shrinks = (len(shapes[n]) == 4 and prev is not None and len(prev) == 4
                   and shapes[n][1] * shapes[n][2] < prev[1] * prev[2])
        if shrinks:
            blocks.append((start, tuple(m for m in names if m in wanted), n))
            start, names = n, []
    if names:
        blocks.append((start, tuple(m for m in names if m in wanted), None))
    return blocks


def _feature_losses(net: Any, cfg: Config, params: Any, img: jax.Array, ctargets: dict, stargets: dict):
    """Weighted content and style costs of one image (1, H, W, 3) in [0, 1], block by block."""
    cw = {net.resolve(n): w for n, w in cfg.content_layers}
    sw = {net.resolve(n): w for n, w in cfg.style_layers}

    def cost(name, a, ct, st):
        a = a.astype(jnp.float32)
        if cfg.feature_scale != 1.0:
            a = a * cfg.feature_scale
        c = s = jnp.zeros((), jnp.float32)
        if name in cw:
            c = cw[name] * losses.content_cost(ct[name][None], a, normalization=cfg.content_normalization)
        if name in sw:
            s = sw[name] * losses.gram_cost(st[name], a, normalization=cfg.style_normalization)
        return c, s

    def block(start, taps, pool, params, h, ct, st):
        names = taps + ((pool,) if pool and pool not in taps else ())
        out = net.apply(params, h, start=start, taps=names) if start is not None else protocol.taps(net, params, h,
                                                                                                   names)
        c = s = jnp.zeros((), jnp.float32)
        for name in taps:
            dc, ds = cost(name, out[name], ct, st)
            c, s = c + dc, s + ds
        if pool is None:
            return c, s, None
        h = out[pool]
        if cfg.remat:  # the next block waits for this one's losses, so its taps can die early
            h = h + (0.0 * (c + s)).astype(h.dtype)
        return c, s, h

    c_total = s_total = jnp.zeros((), jnp.float32)
    h = img
    for start, taps, pool in _blocks(net, params, cfg, tuple(img.shape)):
        fn = functools.partial(block, start, taps, pool)
        if cfg.remat:
            fn = _recompute_in_backward(fn)
        ct = {k: ctargets[k] for k in taps if k in cw}
        st = {k: stargets[k] for k in taps if k in sw}
        c, s, h = fn(params, h, ct, st)
        c_total, s_total = c_total + c, s_total + s
    return c_total, s_total


def _recompute_in_backward(fn: Callable) -> Callable:
    """``fn(params, h, ...)`` that keeps only its inputs for the backward pass and recomputes there.

    What ``jax.checkpoint`` does, made to work on XLA:CPU: there the
    optimisation barriers that keep a recomputation apart from the original
    forward pass are expanded early and the two are merged again (common
    subexpression elimination), so ``jax.checkpoint`` saved no memory at
    all. Here the recomputation's input ``h`` is tied to the incoming
    cotangent (``h + 0 * g[0]``, not foldable for floats), which both keeps it
    distinct and makes it wait for the backward pass to reach this segment.
    The last leaf of the cotangent must be the one that arrives from the
    next segment (the boundary activation's).
    """

    @jax.custom_vjp
    def f(*args):
        return fn(*args)

    def f_fwd(*args):
        return fn(*args), args

    def f_bwd(args, g):
        tie = 0.0 * jnp.ravel(jax.tree.leaves(g)[-1])[0]
        args = (args[0], args[1] + tie.astype(args[1].dtype), *args[2:])
        _, vjp = jax.vjp(fn, *args)
        return vjp(g)

    f.defvjp(f_fwd, f_bwd)
    return f


def _objective(net: Any, cfg: Config, params: Any, ctargets: dict, stargets: dict, x: jax.Array):
    """Total loss of one image x (H, W, 3) in pixel units, and its weighted parts."""
    img = jnp.clip(x / cfg.pixel_scale, 0.0, 1.0)[None]
    c, s = _feature_losses(net, cfg, params, img, ctargets, stargets)
    parts = (cfg.content_weight * c, cfg.style_weight * s)
    tv = cfg.tv_weight * losses.total_variation(img, kind=cfg.tv_kind) if cfg.tv_weight else jnp.zeros((), jnp.float32)
    total = losses.total_cost(c, s, cfg.content_weight, cfg.style_weight) + tv
    return total, (*parts, tv)


def _default_batch_size(cfg: Config) -> int | None:
    if cfg.batch_size is not None:
        return cfg.batch_size
    return None if cfg.optimizer == "adam" else 1


_TRACES = {"update": 0}


def _update_impl(net: Any, params: Any, state: State) -> tuple[State, Losses]:
    """One optimisation step of every image in ``state`` (vectorised over the batch)."""
    _TRACES["update"] += 1
    cfg = state.config
    # only reverse mode is needed here: the flipped-kernel input gradient keeps XLA:CPU's fast convolution inside
    # loop bodies (the L-BFGS line search is a while loop; several steps run in a scan off the CPU), and "auto"
    # takes small maps' input gradients as one matrix product on the CPU (models.layers.conv_auto_grad)
    net = reverse_mode(net)
    opt = _optimizer(cfg)
    st = state.style_targets

    def one(x, opt_state, ct):
        f = functools.partial(_objective, net, cfg, params, ct, st)
        if cfg.optimizer == "adam":
            (value, parts), g = jax.value_and_grad(f, has_aux=True)(x)
            updates, opt_state = opt.update(g, opt_state, x)
        else:
            value_fn = lambda v: f(v)[0]
            value, g = optax.value_and_grad_from_state(value_fn)(x, state=opt_state)
            updates, opt_state = opt.update(g, opt_state, x, value=value, grad=g, value_fn=value_fn)
            parts = (None, None, None)
        x = jnp.clip(optax.apply_updates(x, updates), 0.0, cfg.pixel_scale)
        return x, opt_state, Losses(value, *parts)

    x, opt_state, losses_ = execution.vmap_or_call(one, state.image.shape[0])(state.image, state.opt_state, state.content_targets)
    return state.replace(image=x, opt_state=opt_state, step=state.step + 1), losses_


_update_jit = jax.jit(_update_impl, static_argnums=0)


def _step_key(cfg: Config) -> Config:
    """The config with the fields a step does not read reset, so they don't cause recompiles."""
    return cfg.replace(steps=0, init="content", noise_ratio=0.0, noise_range=0.0)


def _take(state: State, lo: int, hi: int) -> State:
    cut = lambda v: v[lo:hi]
    return state.replace(
        image=state.image[lo:hi],
        opt_state=jax.tree.map(cut, state.opt_state),
        content_targets=jax.tree.map(cut, state.content_targets),
    )


def _join(parts: list, state: State):
    cat = lambda *v: jnp.concatenate(v)
    states = [p[0] for p in parts]
    joined = state.replace(
        image=cat(*(s.image for s in states)),
        opt_state=jax.tree.map(cat, *(s.opt_state for s in states)),
        step=states[0].step,
    )
    return joined, jax.tree.map(cat, *(p[1] for p in parts))


def update(net: Any, params: Any, state: State, *, steps: int = 1) -> tuple[State, Losses]:
    """Takes ``steps`` optimisation steps.

    Each step is one call of a function compiled once (per shapes and
    config) that updates every image of the batch: ``vmap`` over the images,
    or, for L-BFGS by default (``batch_size=1``), one image per call, since
    under ``vmap`` both branches of the line search's ``lax.cond`` would run
    (about 3 evaluations per step instead of 1). Steps are *not* fused into a
    ``lax.fori_loop``: XLA:CPU runs convolutions inside a while loop's body
    slower than at the top level (see :mod:`jaxviz.execution`;
    ``python benchmarks/style_transfer.py``), and a step is long enough that
    the Python call costs nothing.

    Args:
      net: the network ``state`` was made for.
      params: its parameters.
      state: from :func:`init` or a previous :func:`update`.
      steps: how many steps to take.

    Returns:
      ``(new_state, losses)``: losses of the last step, evaluated before it
      (for L-BFGS only ``total``); zeros for ``steps=0``.

    Example::

        state, l = update(net, params, state, steps=10)
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise InputError(f"steps: expected a non-negative int, got {steps!r}")
    net = protocol.as_model(net)
    cfg = state.config
    keyed = state.replace(config=_step_key(cfg))
    n = keyed.image.shape[0]
    bs = _default_batch_size(cfg)
    z = jnp.zeros((n,), jnp.float32)
    last = Losses(z, *((z, z, z) if cfg.optimizer == "adam" else (None, None, None)))
    if bs is None or bs >= n:
        for _ in range(steps):
            keyed, last = _update_jit(net, params, keyed)
        return keyed.replace(config=cfg), last
    parts = []
    for lo in range(0, n, bs):  # each chunk runs all its steps; images are independent problems
        part, part_last = _take(keyed, lo, min(lo + bs, n)), None
        for _ in range(steps):
            part, part_last = _update_jit(net, params, part)
        parts.append((part, part_last))
    if steps == 0:
        return state, last
    joined, last = _join(parts, keyed)
    return joined.replace(config=cfg), last


@functools.partial(jax.jit, static_argnums=0)
def _evaluate_impl(net: Any, params: Any, state: State) -> Losses:
    cfg = state.config

    def one(x, ct):
        total, parts = _objective(net, cfg, params, ct, state.style_targets, x)
        return Losses(total, *parts)

    return execution.vmap_or_call(one, state.image.shape[0])(state.image, state.content_targets)


def evaluate(net: Any, params: Any, state: State) -> Losses:
    """All losses (total and weighted parts, each (N,)) at the current images; forward pass only."""
    return _evaluate_impl(protocol.as_model(net), params, state.replace(config=_step_key(state.config)))


def result(state: State) -> jax.Array:
    """The current images, (N, H, W, 3) float32 in [0, 1]."""
    return jnp.clip(state.image / state.config.pixel_scale, 0.0, 1.0)


def _as_styles(styles: Any) -> list[jax.Array]:
    if isinstance(styles, (list, tuple)):
        items = list(styles)
    else:
        items = [styles]
    if not items:
        raise InputError("styles: expected at least one style image, got none")
    out = []
    for i, s in enumerate(items):
        name = "styles" if len(items) == 1 else f"styles[{i}]"
        shape = getattr(s, "shape", None)
        if shape is not None and len(shape) == 3:
            s = s[None]
        _checks.images(s, name)
        s = jnp.asarray(s, jnp.float32)
        out.extend(s[j : j + 1] for j in range(s.shape[0]))
    return out


def _blend_weights(style_weights: Any, n: int) -> np.ndarray:
    if style_weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(style_weights, np.float64).reshape(-1)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise InputError(
            f"style_weights: expected {n} non-negative weights with a positive sum (one per style image), "
            f"got {style_weights!r}"
        )
    return w / w.sum()


def style_targets(
    net: Any,
    params: Any,
    styles: Any,
    *,
    style_weights: Sequence[float] | None = None,
    preset: str | Config = "gatys",
    **overrides: Any,
) -> dict[str, jax.Array]:
    """Blended Gram targets of one or several style images.

    Args:
      net, params: the network.
      styles: an (S, H, W, 3) array, or a list of (1, H, W, 3) / (H, W, 3)
        arrays of any sizes, in [0, 1].
      style_weights: blend weights, one per style image (normalised to sum
        to 1); equal by default.
      preset, **overrides: as for :func:`config` (layers and normalisation).

    Returns:
      tap -> (C, C) ``sum_k w_k * gram_target(style_k)``.
    """
    net, cfg = _for_model(net, params, config(preset, **overrides))
    imgs = _as_styles(styles)
    w = _blend_weights(style_weights, len(imgs))
    names = tuple(dict.fromkeys(net.resolve(n) for n, _ in cfg.style_layers))
    out: dict[str, jax.Array] = {}
    for wk, img in zip(w, imgs):
        _checks.images(img, "styles", min_size=protocol.min_size(net), unit_range=protocol.unit_range(net))
        taps = _taps(net, params, img, names)
        for name in names:
            a = taps[name][0].astype(jnp.float32) * cfg.feature_scale
            g = losses.gram_target(a, normalization=cfg.style_normalization)
            out[name] = out.get(name, 0.0) + float(wk) * g
    return out


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed: expected an int, got {seed!r}")
    return int(seed)


def _initial_images(cfg: Config, content: jax.Array, seed: int) -> jax.Array:
    """(N, H, W, 3) in [0, 1]; the noise is the same for every image (a batch equals one-by-one)."""
    if cfg.init == "content":
        return content
    key = jax.random.key(seed)
    shape = content.shape[1:]
    if cfg.init == "random":
        return jnp.broadcast_to(jax.random.uniform(key, shape), content.shape)
    r = cfg.noise_range / cfg.pixel_scale
    noise = jax.random.uniform(key, shape, minval=-r, maxval=r)
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    mixed = mean + cfg.noise_ratio * noise + (1.0 - cfg.noise_ratio) * (content - mean)
    return jnp.clip(mixed, 0.0, 1.0)


def init(
    net: Any,
    params: Any,
    content: Any,
    styles: Any,
    *,
    preset: str | Config = "gatys",
    style_weights: Sequence[float] | None = None,
    seed: int = 0,
    init_image: Any = None,
    **overrides: Any,
) -> State:
    """Starts a style transfer: targets, initial images, optimiser state.

    Args:
      net: a model behind the model contract, usually a VGG
        (``models.vgg19(classifier=False)``: only the layers up to the deepest
        tap used are ever run); another model names its own taps in
        ``content_layers`` and ``style_layers``.
      params: its parameters.
      content: (N, H, W, 3) content images in [0, 1] (one image: N = 1).
      styles: style image(s), see :func:`style_targets`.
      preset: a name in :data:`PRESETS` or a :class:`Config`.
      style_weights: blend weights for several style images.
      seed: PRNG seed of the ``"noise"``/``"random"`` initialisations.
      init_image: (N, H, W, 3) or (1, H, W, 3) start images in [0, 1]
        (overrides ``init``; :func:`run` passes the previous scale's result).
      **overrides: :class:`Config` fields.

    Returns:
      A :class:`State`.

    Raises:
      InputError: bad images, layers, or options.

    Example::

        from jaxviz import image, models, style, weights
        net = models.vgg19(classifier=False)
        params = weights.load("vgg19", classifier=False)
        content, painting = image.load("photo.jpg", 512), image.load("painting.jpg", 512)
        state = style.init(net, params, content, painting, preset="course")
    """
    net, cfg = _for_model(net, params, config(preset, **overrides))
    _checks.images(content, "content", min_size=protocol.min_size(net), unit_range=protocol.unit_range(net))
    content = jnp.asarray(content, jnp.float32)
    stargets = style_targets(net, params, styles, style_weights=style_weights, preset=cfg)
    cnames = tuple(dict.fromkeys(net.resolve(n) for n, _ in cfg.content_layers))
    ctargets = {k: v.astype(jnp.float32) * cfg.feature_scale for k, v in _taps(net, params, content, cnames).items()}
    if init_image is not None:
        _checks.images(init_image, "init_image", unit_range=protocol.unit_range(net))
        x0 = jnp.asarray(init_image, jnp.float32)
        if x0.shape[1:] != content.shape[1:] or x0.shape[0] not in (1, content.shape[0]):
            raise InputError(f"init_image: expected shape {tuple(content.shape)} like content, got {tuple(x0.shape)}")
        x0 = jnp.broadcast_to(jnp.clip(x0, 0.0, 1.0), content.shape)
    else:
        x0 = _initial_images(cfg, content, _seed(seed))
    x0 = x0 * cfg.pixel_scale
    opt = _optimizer(cfg)
    opt_state = execution.vmap_or_call(opt.init, x0.shape[0])(x0)
    # strong types (optax's line-search state starts weak-typed), or the second update recompiles
    opt_state = jax.tree.map(lambda a: jnp.array(a, dtype=a.dtype), opt_state)
    return State(x0, opt_state, jnp.zeros((), jnp.int32), ctargets, stargets, cfg)
