"""Neural style transfer (Gatys et al.): optimise the pixels with Optax.

The image is the only thing that changes: its activations in a VGG network
are pulled towards the content image's (content loss) and its Gram matrices
towards the style images' (style loss), optionally with a total-variation
prior. Everything that varies per step is one jitted function of an explicit
state, optax style::

    state = style.init(net, params, content, style_image, preset="gatys")
    for _ in range(100):
        state, losses = style.update(net, params, state)
    out = style.result(state)                       # (N, H, W, 3) in [0, 1]

or all at once, with multi-scale, colour preservation, checkpoints, resume
and a progress bar::

    out = style.run(net, params, content, [style_a, style_b], style_weights=[0.7, 0.3],
                    preset="gatys", size=512, scales=2, checkpoint="out.ckpt.npz")

Presets (:data:`PRESETS`), every field overridable by keyword:

* ``"gatys"``: content ``relu4_2``, style ``relu1_1``..``relu5_1`` (weight 1/5
  each, as in the paper), L-BFGS with a zoom line search, content init,
  500 steps. The loss scaling is the one of neural-style and the PyTorch
  tutorial (Gram / (C H W), mean squared errors, content weight 1, style
  weight 5e6 x 1/5 = the tutorial's 1e6 per layer), which suits
  torchvision's VGG19 on [0, 1] images.
* ``"course"``: the deeplearning.ai course (seed 003): the course's costs
  (:mod:`jaxviz.losses` defaults), alpha 10, beta 40, style layers at 0.2
  each, Adam with learning rate 2.0 on 0-255 pixels, init 0.6 * uniform(-20,
  20) + 0.4 * content (mixed around the ImageNet mean colour, as the course
  mixes mean-subtracted images), 200 steps, ``feature_scale`` =
  :data:`CAFFE_SCALE`. The course's ``conv4_2`` and ``convK_1`` nodes are
  convolution *plus ReLU* (``_conv2d_relu`` in its ``nst_utils``), which
  jaxviz calls ``relu4_2`` and ``reluK_1``; its VGG19 average-pools
  (``models.vgg19(classifier=False, pooling="avg")``).
* ``"tf-tutorial"``: the tf.keras eager-execution tutorial (seed 004): content
  ``block5_conv2`` (= ``relu5_2``), style ``blockK_conv1`` (= ``reluK_1``) at
  1/5 each, Gram / (H W) with mean squared errors, content weight 1e3, style
  weight 1e-2, Adam(5.0, b1=0.99, eps=0.1) on 0-255 pixels, content init,
  1000 steps, ``feature_scale`` = :data:`CAFFE_SCALE`.

The two Adam presets were tuned on VGGs fed 0-255 mean-subtracted images,
whose activations are about 58x those of torchvision's VGG on [0, 1]
images: ``feature_scale`` multiplies activations by that factor before the
losses so their weights (and the TF tutorial's large Adam epsilon) mean what
they meant there. Pretrained weights differ anyway (MatConvNet/Keras vs
torchvision), so expect the same behaviour, not the same pictures.

``pixel_scale`` is the unit the optimiser sees: 255 lets the two Adam presets
keep their published learning rates and noise amplitudes; the network always
gets [0, 1] images. Pixels are kept in [0, ``pixel_scale``] by projection
after every step, and the objective is evaluated on the clipped image (so
L-BFGS's line search never leaves the valid range either).

The original papers use average pooling; jaxviz nets pool as they were built
(``models.vgg19(classifier=False, pooling="avg")`` for that).

Batches: ``content`` may hold N images, all stylised against the same style
targets in one compiled call per step (``vmap``). Images are independent
problems: the result for each equals the result of running it alone. For
L-BFGS the default is one image per call (``batch_size=1``), because under
``vmap`` both branches of its line search's ``lax.cond`` would run.
``batch_size`` picks how many images are vectorised together; results do
not depend on it.

References:
    L. A. Gatys, A. S. Ecker, M. Bethge, "A Neural Algorithm of Artistic
    Style", arXiv:1508.06576 (2015) and "Image Style Transfer Using
    Convolutional Neural Networks", CVPR 2016. L. A. Gatys et al.,
    "Preserving Color in Neural Artistic Style Transfer", arXiv:1606.05897
    (2016). J. Johnson, neural-style (2015).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from . import _checks, _io, losses
from .errors import CheckpointError, InputError
from .models import protocol
from .models.vgg import IMAGENET_MEAN, reverse_mode

__all__ = [
    "Config",
    "Losses",
    "CAFFE_SCALE",
    "PRESETS",
    "State",
    "config",
    "evaluate",
    "init",
    "luminance",
    "original_colors",
    "result",
    "run",
    "style_targets",
    "update",
]

#: 255 * mean ImageNet std: torchvision-VGG activations times this are about
#: the size of those of a VGG fed 0-255 mean-subtracted (caffe-style) images.
CAFFE_SCALE = 255.0 * float(np.mean((0.229, 0.224, 0.225)))
_STYLE5 = tuple((f"relu{b}_1", 0.2) for b in range(1, 6))
OPTIMIZERS = ("adam", "lbfgs")
INITS = ("content", "noise", "random")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of a style transfer (hashable: it is static under ``jit``).

    Attributes:
      content_layers: ``((tap, weight), ...)``.
      style_layers: ``((tap, weight), ...)``.
      content_weight: alpha, the content cost's weight.
      style_weight: beta, the style cost's weight.
      tv_weight: weight of the total-variation prior on the [0, 1] image.
      tv_kind: ``"l1"`` or ``"squared"`` (see :func:`jaxviz.losses.total_variation`).
      content_normalization: ``"course"``, ``"mse"`` or ``"half_sum"``.
      style_normalization: ``"course"``, ``"chw"`` or ``"hw"``.
      optimizer: ``"adam"`` or ``"lbfgs"``.
      learning_rate: Adam's step size in ``pixel_scale`` units; for L-BFGS
        None (the line search picks the step) or a fixed step.
      b1, b2, eps: Adam's moment decays and epsilon.
      lbfgs_memory: number of L-BFGS correction pairs.
      linesearch_steps: most zoom line-search iterations per L-BFGS step
        (the search starts from step 1 and grows a too-short step 8x at a
        time: optax's 2x needed 7 evaluations for the first step of a
        128x128 run, 8x needs 3).
      steps: optimisation steps (per scale in :func:`run`).
      init: ``"content"`` (a copy), ``"noise"`` (the course's noisy content) or
        ``"random"`` (uniform white noise in [0, 1]).
      noise_ratio: share of the noise in ``"noise"`` init.
      noise_range: the noise is uniform(-noise_range, noise_range), in
        ``pixel_scale`` units.
      pixel_scale: the optimiser works on ``pixel_scale * image``.
      feature_scale: activations are multiplied by this before the losses.
        :data:`CAFFE_SCALE` (255 * ImageNet std, about 57.6) gives roughly the
        magnitudes of a network fed 0-255 mean-subtracted images (Keras' and
        MatConvNet's VGG, which the TF tutorial and the course used), for
        which their weights and Adam's epsilon were chosen: content costs
        scale by its square, style costs by its fourth power.
      remat: rematerialise the network block by block in the backward pass
        (a ``jax.checkpoint`` that survives XLA:CPU's CSE): less memory for
        about one extra forward pass. VGG19, one 2048x2048 Adam step on the
        CPU: peak RSS 10.6 GiB without, 9.9 GiB with, 7.9 GiB with remat and
        ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false``
        (what ``jaxviz stylize --remat`` uses).
      batch_size: images vectorised together (``vmap``) in one call; None
        for all (default for Adam), 1 for one at a time (default for L-BFGS,
        whose line search would evaluate both branches of its ``lax.cond``
        under ``vmap``).
    """

    content_layers: tuple[tuple[str, float], ...] = (("relu4_2", 1.0),)
    style_layers: tuple[tuple[str, float], ...] = _STYLE5
    content_weight: float = 1.0
    style_weight: float = 5e6
    tv_weight: float = 0.0
    tv_kind: str = "squared"
    content_normalization: str = "mse"
    style_normalization: str = "chw"
    optimizer: str = "lbfgs"
    learning_rate: float | None = None
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    lbfgs_memory: int = 10
    linesearch_steps: int = 20
    steps: int = 500
    init: str = "content"
    noise_ratio: float = 0.6
    noise_range: float = 20.0
    pixel_scale: float = 1.0
    feature_scale: float = 1.0
    remat: bool = False
    batch_size: int | None = None

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, Config] = {
    "gatys": Config(),
    "course": Config(
        content_layers=(("relu4_2", 1.0),),
        style_layers=_STYLE5,
        content_weight=10.0,
        style_weight=40.0,
        content_normalization="course",
        style_normalization="course",
        optimizer="adam",
        learning_rate=2.0,
        steps=200,
        init="noise",
        noise_ratio=0.6,
        noise_range=20.0,
        pixel_scale=255.0,
        feature_scale=CAFFE_SCALE,
    ),
    "tf-tutorial": Config(
        content_layers=(("relu5_2", 1.0),),
        style_layers=_STYLE5,
        content_weight=1e3,
        style_weight=1e-2,
        content_normalization="mse",
        style_normalization="hw",
        optimizer="adam",
        learning_rate=5.0,
        b1=0.99,
        eps=0.1,
        steps=1000,
        init="content",
        pixel_scale=255.0,
        feature_scale=CAFFE_SCALE,
    ),
}

_FIELDS = tuple(f.name for f in dataclasses.fields(Config))


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


# --------------------------------------------------------------------------- configuration


def _float(value: Any, name: str, *, positive: bool = False, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
        raise InputError(f"{name}: expected a {'positive' if positive else 'non-negative'} finite number, got {value!r}")
    return value


def _layer_spec(value: Any, name: str, default_total: float) -> tuple[tuple[str, float], ...]:
    """``{tap: w}``, ``[(tap, w), ...]`` or ``[tap, ...]`` (the preset's total weight split equally)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        try:
            items = list(value)
        except TypeError:
            raise InputError(f"{name}: expected layer names or (layer, weight) pairs, got {value!r}") from None
        if items and all(isinstance(v, str) for v in items):
            items = [(v, default_total / len(items)) for v in items]
    if not items:
        raise InputError(f"{name}: expected at least one layer, got none")
    out = []
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise InputError(f"{name}: expected layer names or (layer, weight) pairs, got {item!r}")
        out.append((item[0], _float(item[1], f"{name}[{item[0]!r}]")))
    return tuple(out)


def config(preset: str | Config = "gatys", **overrides: Any) -> Config:
    """A validated :class:`Config`: a preset with any fields overridden.

    Args:
      preset: a name in :data:`PRESETS` or a :class:`Config`.
      **overrides: :class:`Config` fields. Layers may be given as
        ``{tap: weight}``, ``[(tap, weight), ...]``, or bare names (which
        share the preset's total layer weight equally, so the balance of
        content and style is kept).

    Returns:
      A :class:`Config`.

    Raises:
      InputError: unknown preset or field, or a bad value.

    Example:
      >>> cfg = config("course", steps=50, style_layers=["relu1_1", "relu2_1"])
      >>> cfg.style_layers
      (('relu1_1', 0.5), ('relu2_1', 0.5))
    """
    if isinstance(preset, Config):
        base = preset
    else:
        _checks.one_of(preset, "preset", PRESETS)
        base = PRESETS[preset]
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise InputError(f"{unknown[0]}: unknown option; expected one of {', '.join(_FIELDS)}")
    ov = dict(overrides)
    for key in ("content_layers", "style_layers"):
        if key in ov:
            total = sum(w for _, w in getattr(base, key))
            ov[key] = _layer_spec(ov[key], key, total)
    for key in ("content_weight", "style_weight", "tv_weight", "noise_range"):
        if key in ov:
            ov[key] = _float(ov[key], key)
    for key in ("pixel_scale", "eps", "feature_scale"):
        if key in ov:
            ov[key] = _float(ov[key], key, positive=True)
    if "learning_rate" in ov:
        ov["learning_rate"] = _float(ov["learning_rate"], "learning_rate", positive=True, allow_none=True)
    for key in ("b1", "b2", "noise_ratio"):
        if key in ov:
            v = _float(ov[key], key)
            if v > 1:
                raise InputError(f"{key}: expected a number in [0, 1], got {v!r}")
            ov[key] = v
    if "steps" in ov:
        v = ov["steps"]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise InputError(f"steps: expected a non-negative int, got {v!r}")
        ov["steps"] = int(v)
    for key in ("lbfgs_memory", "linesearch_steps"):
        if key in ov:
            ov[key] = _checks.positive_int(ov[key], key)
    if ov.get("batch_size") is not None:
        ov["batch_size"] = _checks.positive_int(ov["batch_size"], "batch_size")
    if "remat" in ov:
        ov["remat"] = bool(ov["remat"])
    cfg = base.replace(**ov)
    _checks.one_of(cfg.optimizer, "optimizer", OPTIMIZERS)
    _checks.one_of(cfg.init, "init", INITS)
    _checks.one_of(cfg.tv_kind, "tv_kind", losses.TV_KINDS)
    _checks.one_of(cfg.content_normalization, "content_normalization", losses.CONTENT_NORMALIZATIONS)
    _checks.one_of(cfg.style_normalization, "style_normalization", losses.STYLE_NORMALIZATIONS)
    if cfg.optimizer == "adam" and cfg.learning_rate is None:
        raise InputError("learning_rate: expected a positive number for optimizer='adam', got None")
    return cfg


def _optimizer(cfg: Config) -> optax.GradientTransformationExtraArgs:
    if cfg.optimizer == "adam":
        return optax.adam(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    return optax.lbfgs(
        learning_rate=cfg.learning_rate,
        memory_size=cfg.lbfgs_memory,
        linesearch=optax.scale_by_zoom_linesearch(
            max_linesearch_steps=cfg.linesearch_steps, initial_guess_strategy="one", increase_factor=8.0
        ),
    )


def _check_net(net: Any, cfg: Config) -> Any:
    """``net`` behind the model contract, with every content and style layer checked against its taps."""
    net = protocol.as_model(net)
    for key in ("content_layers", "style_layers"):
        for name, _ in getattr(cfg, key):
            net.resolve(name, key)
    return net


# --------------------------------------------------------------------------- the objective


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


def _batched(fn: Callable, n: int) -> Callable:
    """``fn`` (one image) over a leading axis of n images: vmap, or a plain call for n = 1."""
    if n == 1:
        return lambda *a: jax.tree.map(lambda v: v[None], fn(*jax.tree.map(lambda v: v[0], a)))
    return jax.vmap(fn)


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

    x, opt_state, losses_ = _batched(one, state.image.shape[0])(state.image, state.opt_state, state.content_targets)
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
    1.5x (forward) to 3.9x (backward) slower than at the top level
    (measured here; the whole step went from 0.46 s to 1.38 s at 128x128),
    and a step is long enough that the Python call costs nothing.

    Args:
      net: the network ``state`` was made for.
      params: its parameters.
      state: from :func:`init` or a previous :func:`update`.
      steps: how many steps to take.

    Returns:
      ``(new_state, losses)``: losses of the last step, evaluated before it
      (for L-BFGS only ``total``); zeros for ``steps=0``.

    Example:
      >>> state, l = update(net, params, state, steps=10)      # doctest: +SKIP
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

    return _batched(one, state.image.shape[0])(state.image, state.content_targets)


def evaluate(net: Any, params: Any, state: State) -> Losses:
    """All losses (total and weighted parts, each (N,)) at the current images; forward pass only."""
    return _evaluate_impl(protocol.as_model(net), params, state.replace(config=_step_key(state.config)))


def result(state: State) -> jax.Array:
    """The current images, (N, H, W, 3) float32 in [0, 1]."""
    return jnp.clip(state.image / state.config.pixel_scale, 0.0, 1.0)


# --------------------------------------------------------------------------- targets and init


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
    cfg = config(preset, **overrides)
    net = _check_net(net, cfg)
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

    Example:
      >>> from jaxviz import image, models, style, weights
      >>> net = models.vgg19(classifier=False)
      >>> params = weights.load("vgg19", classifier=False)      # doctest: +SKIP
      >>> content, painting = image.load("photo.jpg", 512), image.load("painting.jpg", 512)  # doctest: +SKIP
      >>> state = style.init(net, params, content, painting, preset="course")  # doctest: +SKIP
    """
    cfg = config(preset, **overrides)
    net = _check_net(net, cfg)
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
    opt_state = _batched(opt.init, x0.shape[0])(x0)
    # strong types (optax's line-search state starts weak-typed), or the second update recompiles
    opt_state = jax.tree.map(lambda a: jnp.array(a, dtype=a.dtype), opt_state)
    return State(x0, opt_state, jnp.zeros((), jnp.int32), ctargets, stargets, cfg)


# --------------------------------------------------------------------------- colour


_YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]], np.float32)


def luminance(x: Any) -> jax.Array:
    """Luma Y = 0.299 R + 0.587 G + 0.114 B of (..., 3) RGB, shape (..., 1)."""
    return jnp.asarray(x, jnp.float32) @ jnp.asarray(_YIQ[0])[:, None]


def original_colors(content: Any, stylized: Any) -> jax.Array:
    """The stylised images' luminance with the content images' colours (YIQ chroma).

    Args:
      content: (N, H, W, 3) in [0, 1] (resized to ``stylized``'s size if needed).
      stylized: (N, H, W, 3) in [0, 1].

    Returns:
      (N, H, W, 3) float32 in [0, 1].
    """
    stylized = jnp.asarray(stylized, jnp.float32)
    content = _resize(jnp.asarray(content, jnp.float32), stylized.shape[1:3])
    yiq = jnp.asarray(_YIQ)
    y = stylized @ yiq[0]
    iq = content @ yiq[1:].T
    out = jnp.concatenate([y[..., None], iq], axis=-1) @ jnp.linalg.inv(yiq).T
    return jnp.clip(out, 0.0, 1.0)


def _luminance_only(content: jax.Array, styles: list[jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
    """Grey content, and grey styles whose luminance mean/std match the content's (Gatys et al. 2016)."""
    yc = luminance(content)
    mu, sd = jnp.mean(yc), jnp.std(yc)
    grey = []
    for s in styles:
        ys = luminance(s)
        ys = (ys - jnp.mean(ys)) * (sd / jnp.maximum(jnp.std(ys), 1e-6)) + mu
        grey.append(jnp.repeat(jnp.clip(ys, 0.0, 1.0), 3, axis=-1))
    return jnp.repeat(yc, 3, axis=-1), grey


# --------------------------------------------------------------------------- run: scales, checkpoints, progress


def _resize(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    if tuple(x.shape[1:3]) == tuple(hw):
        return x
    return jnp.clip(jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), "linear", antialias=True), 0.0, 1.0)


def _fit(h: int, w: int, longest: int) -> tuple[int, int]:
    s = longest / max(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def _fingerprint(net, params, cfg, content, styles, extra) -> str:
    stable = cfg.replace(remat=False, batch_size=None, steps=0)
    return _io.fingerprint((_io.model_key(net), stable, extra), [content, *styles, *jax.tree.leaves(params)])


def _save_checkpoint(path: Path, state: State, scale: int, fingerprint: str) -> None:
    leaves = jax.tree.leaves((state.image, state.opt_state))
    arrays = {f"leaf_{i}": np.asarray(v) for i, v in enumerate(leaves)}
    arrays.update(step=np.asarray(state.step), scale=np.asarray(scale), fingerprint=np.asarray(fingerprint))
    _io.write_npz(path, **arrays)


def _restore(state: State, saved: dict[str, Any], path: Path) -> State:
    leaves, treedef = jax.tree.flatten((state.image, state.opt_state))
    got = [saved.get(f"leaf_{i}") for i in range(len(leaves))]
    if any(g is None or g.shape != np.shape(l) for g, l in zip(got, leaves)):
        raise InputError(f"checkpoint: {path} does not match this run's shapes; delete it or pass resume=False")
    image, opt_state = jax.tree.unflatten(treedef, [jnp.asarray(g, l.dtype) for g, l in zip(got, leaves)])
    return state.replace(image=image, opt_state=opt_state, step=jnp.asarray(saved["step"], jnp.int32))


def _postfix(l: Losses) -> dict[str, str]:
    out = {}
    for name, v in zip(("loss", "content", "style", "tv"), l):
        if v is not None:
            out[name] = f"{float(jnp.mean(v)):.4g}"
    return out


def run(
    net: Any,
    params: Any,
    content: Any,
    styles: Any,
    *,
    preset: str | Config = "gatys",
    steps: int | None = None,
    size: int | None = None,
    scales: int = 1,
    style_weights: Sequence[float] | None = None,
    style_scale: float = 1.0,
    preserve_colors: bool = False,
    seed: int = 0,
    init_image: Any = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[dict], Any] | None = None,
    **overrides: Any,
) -> jax.Array:
    """Stylises content images: all scales, all steps, with checkpoints and a progress bar.

    Args:
      net: a jaxviz VGG, e.g. ``models.vgg19(classifier=False)``.
      params: its parameters (``weights.load("vgg19", classifier=False)``).
      content: (N, H, W, 3) in [0, 1]; every image gets the same style.
      styles: one or several style images (see :func:`style_targets`).
      preset: a name in :data:`PRESETS` or a :class:`Config`.
      steps: steps per scale (default: the preset's).
      size: longest side of the output in pixels (default: the content's).
      scales: coarse-to-fine scales; scale k of S runs at ``size / 2**(S-1-k)``
        and starts from the previous scale's result, upsampled.
      style_weights: blend weights of several style images.
      style_scale: style images are resized so their longest side is
        ``style_scale`` times the current output's longest side.
      preserve_colors: luminance-only transfer: content and styles become
        grey (style luminance matched to the content's mean/std), and the
        result's luminance is put back on the content's colours.
      seed: PRNG seed of noisy initialisations (the run is deterministic).
      init_image: start images for the first scale, in [0, 1].
      checkpoint: path of a ``.npz`` checkpoint (image and optimiser state),
        written atomically every ``checkpoint_every`` steps and at the end of
        each scale. With ``resume``, an existing checkpoint of the same run
        (same inputs, weights and settings) is continued; a finished one
        returns at once. The file is left in place.
      checkpoint_every: steps between checkpoints (and ``callback`` calls).
      resume: continue from ``checkpoint`` when it exists.
      progress: show a tqdm progress bar with the current losses.
      callback: called with ``{"scale", "step", "images", "losses"}`` (NumPy
        [0, 1] images) at every checkpoint; raising from it interrupts the run
        (the checkpoint is already written).
      **overrides: :class:`Config` fields.

    Returns:
      (N, H', W', 3) float32 images in [0, 1].

    Raises:
      InputError: bad images or options, or a checkpoint from another run.

    Example:
      >>> from jaxviz import models, weights, image, style
      >>> net = models.vgg19(classifier=False)
      >>> params = weights.load("vgg19", classifier=False)          # doctest: +SKIP
      >>> out = style.run(net, params, image.load("me.jpg"), image.load("starry.jpg"),
      ...                 preset="gatys", size=512, scales=2)       # doctest: +SKIP
    """
    if steps is not None:
        overrides["steps"] = steps
    cfg = config(preset, **overrides)
    net = _check_net(net, cfg)
    _checks.images(content, "content")
    content = jnp.asarray(content, jnp.float32)
    style_list = _as_styles(styles)
    _blend_weights(style_weights, len(style_list))
    n_scales = _checks.positive_int(scales, "scales")
    style_scale = _float(style_scale, "style_scale", positive=True)
    seed = _seed(seed)
    every = None if checkpoint_every is None else _checks.positive_int(checkpoint_every, "checkpoint_every")
    _, H, W, _ = content.shape
    longest = max(H, W) if size is None else _checks.positive_int(size, "size")
    sizes = [max(1, int(round(longest / 2 ** (n_scales - 1 - k)))) for k in range(n_scales)]
    hws = [_fit(H, W, s) for s in sizes]
    if min(hws[0]) < protocol.min_size(net):
        what = "size" if n_scales == 1 else f"size / 2**(scales-1) = {sizes[0]}"
        raise InputError(
            f"{'size' if size is not None else 'content'}: expected a smallest side of at least {protocol.min_size(net)} px "
            f"at the coarsest scale ({what} gives {hws[0][0]}x{hws[0][1]})"
        )
    s_long = max(1, int(round(style_scale * max(hws[0]))))
    for i, s in enumerate(style_list):
        hw = _fit(s.shape[1], s.shape[2], s_long)
        if min(hw) < protocol.min_size(net):  # the same resize as the loop below, checked before any step runs
            raise InputError(
                f"styles: image {i + 1} of {len(style_list)} ({s.shape[1]}x{s.shape[2]} px) would be {hw[0]}x{hw[1]} "
                f"px at the coarsest scale, below the network's minimum of {protocol.min_size(net)} px; use a larger size or "
                "style_scale"
            )
    if preserve_colors:
        work_content, work_styles = _luminance_only(content, style_list)
    else:
        work_content, work_styles = content, style_list

    path = Path(checkpoint) if checkpoint is not None else None
    fingerprint = None
    saved = None
    if path is not None:
        extra = (sizes, style_scale, preserve_colors, seed, None if style_weights is None else list(style_weights))
        fingerprint = _fingerprint(net, params, cfg, content, style_list + ([init_image] if init_image is not None else []), extra)
        if resume and path.exists():
            saved = _io.read_checkpoint(path, "style")
            if str(saved.get("fingerprint")) != fingerprint:
                raise CheckpointError(
                    f"checkpoint: {path} was written by a run with other inputs, weights or settings; "
                    "delete it or pass resume=False", "mismatch"
                )

    from tqdm.auto import tqdm

    total_steps = cfg.steps * n_scales
    start_scale = int(saved["scale"]) if saved is not None else 0
    bar = tqdm(total=total_steps, disable=not progress, desc="stylize", unit="step", dynamic_ncols=True)
    prev = None if init_image is None else jnp.asarray(init_image, jnp.float32)
    state = None
    try:
        for k, hw in enumerate(hws):
            if k < start_scale:
                bar.update(cfg.steps)
                continue
            c_k = _resize(work_content, hw)
            s_long = max(1, int(round(style_scale * max(hw))))
            styles_k = [_resize(s, _fit(s.shape[1], s.shape[2], s_long)) for s in work_styles]
            start = None if prev is None else _resize(prev, hw)
            state = init(net, params, c_k, styles_k, preset=cfg, style_weights=style_weights, seed=seed, init_image=start)
            if saved is not None and k == start_scale:
                state = _restore(state, saved, path)
                bar.update(int(state.step))
                saved = None
            state = _run_scale(net, params, state, k, bar, every, path, fingerprint, callback)
            prev = result(state)
    finally:
        bar.close()
    out = result(state)
    if preserve_colors:
        out = original_colors(_resize(content, out.shape[1:3]), out)
    return out


def _run_scale(net, params, state, scale, bar, every, path, fingerprint, callback) -> State:
    cfg = state.config
    chunk, last_eval, eval_cost = 1, -np.inf, 0.0
    step = int(state.step)
    while step < cfg.steps:
        n = min(chunk, cfg.steps - step)
        if every is not None:
            n = min(n, every - step % every)
        t0 = time.perf_counter()
        state, l = update(net, params, state, steps=n)
        l.total.block_until_ready()
        dt = time.perf_counter() - t0
        step += n
        bar.update(n)
        if l.content is None and time.perf_counter() - last_eval > 10 * eval_cost:
            t1 = time.perf_counter()
            l = evaluate(net, params, state)
            l.total.block_until_ready()
            last_eval = time.perf_counter()
            eval_cost = last_eval - t1
        bar.set_postfix(_postfix(l), refresh=False)
        if dt < 0.25 and n == chunk:
            chunk *= 2
        at_checkpoint = every is not None and step % every == 0
        if path is not None and (at_checkpoint or step == cfg.steps):
            _save_checkpoint(path, state, scale, fingerprint)
        if callback is not None and (at_checkpoint or step == cfg.steps):
            callback({"scale": scale, "step": step, "images": np.asarray(result(state)), "losses": l})
    return state
