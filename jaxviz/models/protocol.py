"""The model contract: the one thing a technique knows about a model.

Every technique in jaxviz reaches a model only through :class:`Model` and the
functions below; none imports a model class or reads meaning into a layer's
name. A model is anything with

* ``layers``: its tap names, input to output;
* ``resolve(name, arg)``: the canonical tap for a name or alias, or an
  :class:`~jaxviz.errors.InputError` naming ``arg`` and listing the taps;
* ``run(variables, images, taps=(), *, perturb=None, relu=None, output=True)``
  returning ``(output, {tap: activation})``, where
  - ``perturb`` maps taps to arrays added to their activations where they are
    computed (every later layer sees the sum): the **layer gradient** seam,
    since the gradient with respect to a zero perturbation is the gradient
    with respect to the tap, inside a residual block too;
  - ``relu`` replaces every ReLU (guided backprop, deconvnet, redirected ReLU):
    the **rules** seam;
  - ``output=False`` lets a model stop after the deepest tap asked for.

Optional attributes, read with defaults: ``min_size`` (smallest input side, 1),
``unit_range`` (inputs must be RGB in [0, 1], False), ``default_layer`` (the tap
Grad-CAM uses when none is given; else the deepest spatial tap, measured),
``cam_layers`` (``(feature tap, dense param name)`` of a global-average-pool +
linear head, for CAM), ``embedding_layer``, ``suggested_layers`` (a mapping
from the roles of :data:`ROLES` to taps the model recommends, e.g. VGG's
Gatys layers for style transfer; else measured by :func:`suggested_layers`), ``start`` support
(``supports_start``: a fast path that enters the network after a tap) and
``plain_stack`` (a :class:`PlainStack`: the model is a plain 3x3-conv/ReLU/pool
stack that incremental occlusion may compute on patches).

jaxviz's VGG, ResNet and small CNN implement it natively; any ``flax.linen``
module (:func:`~jaxviz.models.tapped`), Flax NNX module
(:func:`~jaxviz.models.from_nnx`) or function ``f(params, x) -> logits`` or
``(logits, taps)`` (:func:`~jaxviz.models.from_function`) gets an adapter, and
:func:`as_model` picks it.

Geometry (map sizes, strides, receptive fields) is measured from the model by
:func:`geometry`: ``jax.eval_shape`` for shapes, one ``jax.vjp`` through a
positive surrogate of the network for the receptive field, never from names.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError, ModelError

__all__ = [
    "ROLES",
    "suggested_layers",
    "suggested_layer",
    "Model",
    "Geometry",
    "PlainStack",
    "is_model",
    "as_model",
    "forward",
    "taps",
    "layer_gradient",
    "min_size",
    "unit_range",
    "supports_start",
    "name_of",
    "spatial_layers",
    "default_layer",
    "embedding_layer",
    "tap_shapes",
    "geometry",
]


@runtime_checkable
class Model(Protocol):
    """What a technique may ask of a model (see the module docstring)."""

    @property
    def layers(self) -> tuple[str, ...]:
        """Tap names, input to output."""
        ...

    def resolve(self, name: str, arg: str = "taps") -> str:
        """The canonical tap for ``name``; InputError naming ``arg`` if unknown."""
        ...

    def run(self, variables: Any, images: Any, taps: Sequence[str] = (), *,
            perturb: Mapping[str, Any] | None = None, relu: Callable | None = None,
            output: bool = True) -> tuple[Any, dict[str, Any]]:
        """``(output or None, {tap: activation})``."""
        ...


def is_model(obj: Any) -> bool:
    """Whether ``obj`` implements :class:`Model` (jaxviz's models and the adapters do)."""
    return isinstance(obj, Model) and not isinstance(obj, type)


def as_model(net: Any, images: Any = None) -> Model:
    """``net`` as a :class:`Model`: itself if it is one, else the adapter for what it is.

    A ``flax.linen`` module gets :func:`~jaxviz.models.tapped` (taps by module
    path, listed by an abstract run on ``images``' shape; the adapter is
    cached), a plain callable :func:`~jaxviz.models.from_function`. A Flax NNX
    module holds its own parameters: split it with
    :func:`~jaxviz.models.from_nnx`, which returns ``(net, params)``.

    Raises:
      InputError: ``net`` is none of these.
    """
    if is_model(net):
        return net
    from . import adapters

    shape = None if images is None else (1,) + tuple(np.shape(images))[1:]
    try:
        return _adapt(net, shape)
    except TypeError:  # unhashable
        return adapters.adapt(net, shape)


@functools.lru_cache(maxsize=32)
def _adapt(net: Any, shape: Any) -> Model:
    from . import adapters

    return adapters.adapt(net, shape)


def name_of(net: Any) -> str:
    """A short name for messages: the class, or the wrapped module's class."""
    inner = getattr(net, "module", None) or getattr(net, "fn", None)
    if inner is not None:
        return f"{type(net).__name__}({getattr(inner, '__name__', type(inner).__name__)})"
    if callable(net) and hasattr(net, "__name__") and not isinstance(net, type):
        return net.__name__  # a plain function
    return type(net).__name__


def min_size(net: Any) -> int:
    """Smallest input height/width ``net`` accepts (1 when the model does not say)."""
    return int(getattr(net, "min_size", 1) or 1)


def unit_range(net: Any) -> bool:
    """Whether ``net`` takes RGB in [0, 1] (it normalises inputs itself), so other ranges are refused."""
    value = getattr(net, "unit_range", None)
    if value is None:
        value = getattr(net, "normalize", False)
    return value is True


def supports_start(net: Any) -> bool:
    """Whether ``net.apply(params, a, start=tap)`` enters the network after ``tap`` (a fast path some models have)."""
    return bool(getattr(net, "supports_start", False))


def forward(net: Any, params: Any, images: Any, *, relu: Callable | None = None) -> Any:
    """The model's output for ``images`` (through :func:`as_model`)."""
    return as_model(net).run(params, images, relu=relu)[0]


def taps(net: Any, params: Any, images: Any, names: str | Sequence[str], *,
         relu: Callable | None = None) -> dict[str, Any]:
    """``{name: activation}`` for the taps ``names`` (keys as given); the model may stop after the deepest."""
    names = (names,) if isinstance(names, str) else tuple(names)
    return as_model(net).run(params, images, names, relu=relu, output=False)[1]


def layer_gradient(net: Any, params: Any, images: Any, layer: str, score: Callable[[Any], Any], *,
                   relu: Callable | None = None) -> tuple[Any, Any, Any]:
    """The activation of ``layer`` and the gradient of ``sum(score(output))`` with respect to it.

    The gradient is taken with respect to a zero perturbation added at the tap
    (the model's ``perturb`` seam), so it is exact wherever the tap sits,
    inside a residual block included; the cost is one forward and one backward
    pass down to the tap.

    Args:
      net: a :class:`Model` (or anything :func:`as_model` adapts).
      params: its variables.
      images: its input.
      layer: a tap name.
      score: output -> per-image scores (N,).
      relu: an optional ReLU replacement (the rules seam).

    Returns:
      ``(activation, gradient, output)``.
    """
    model = as_model(net)
    shape = jax.eval_shape(lambda p, x: model.run(p, x, (layer,), output=False)[1][layer], params, images)
    zero = jnp.zeros(shape.shape, shape.dtype)

    def total(delta):
        out, acts = model.run(params, images, (layer,), perturb={layer: delta}, relu=relu)
        return jnp.sum(score(out)), (acts[layer], out)

    g, (a, out) = jax.grad(total, has_aux=True)(zero)
    return a, g, out


# --------------------------------------------------------------------------------------------
# measured structure


def _params_key(params: Any) -> Any:
    """A hashable signature of a params tree (its structure, each leaf's shape and dtype): a cache key."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return treedef, tuple((tuple(np.shape(a)), str(jnp.result_type(a))) for a in leaves)


def _abstract_params(key: Any) -> Any:
    """The params tree of a :func:`_params_key` signature, as ``jax.ShapeDtypeStruct`` leaves."""
    treedef, sig = key
    return jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in sig])


@functools.lru_cache(maxsize=64)
def _shapes(net: Any, key: Any, image_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    params = _abstract_params(key)
    x = jax.ShapeDtypeStruct(image_shape, jnp.float32)
    out = jax.eval_shape(lambda p, x: net.run(p, x, net.layers, output=False)[1], params, x)
    return {k: tuple(v.shape) for k, v in out.items()}


def tap_shapes(net: Any, params: Any, image_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """``{tap: activation shape}`` for an input of ``image_shape``, measured with ``jax.eval_shape`` (cached)."""
    model = as_model(net)
    shape = tuple(int(s) for s in image_shape)
    try:
        return _shapes(model, _params_key(params), shape)
    except TypeError:  # an unhashable model: no cache
        return _shapes.__wrapped__(model, _params_key(params), shape)


def spatial_layers(net: Any, params: Any, image_shape: Sequence[int]) -> tuple[str, ...]:
    """The taps whose activations are spatial maps (N, h, w, C), input to output."""
    return tuple(k for k, s in tap_shapes(net, params, image_shape).items() if len(s) == 4)


def _maps(model: Any, params: Any, image_shape: Sequence[int], advice: str) -> list[str]:
    """The taps whose activations are maps larger than 1x1, input to output (measured); a ModelError naming the
    model's taps when it has none."""
    shapes = tap_shapes(model, params, image_shape)
    spatial = [k for k in model.layers if k in shapes and len(shapes[k]) == 4 and shapes[k][1] * shapes[k][2] > 1]
    if not spatial:
        raise ModelError(f"layer: {name_of(model)} has no spatial tap (N, h, w, C) at {tuple(image_shape)[1:3]} px; "
                         f"{advice} one of {', '.join(model.layers)}")
    return spatial


def default_layer(net: Any, params: Any, image_shape: Sequence[int]) -> str:
    """The tap Grad-CAM and friends use by default: the model's ``default_layer``, else its ``cam_layers[0]``,
    else the deepest spatial tap whose map is larger than 1x1 (measured).

    Raises:
      ModelError: the model has no spatial tap.
    """
    model = as_model(net)
    named = getattr(model, "default_layer", None) or (getattr(model, "cam_layers", None) or (None,))[0]
    if named:
        return model.resolve(named, "layer")
    return _maps(model, params, image_shape, "pass layer=")[-1]


def embedding_layer(net: Any, params: Any, image_shape: Sequence[int]) -> str:
    """The tap whose activations describe an image as a feature vector: the model's ``embedding_layer``, else
    the tap before the output when the output is a vector of class scores (VGG's ``relu7``, a ResNet's
    ``avgpool``), else the last tap (a features-only network's last pool). Measured, not named."""
    model = as_model(net)
    named = getattr(model, "embedding_layer", None)
    if named:
        return model.resolve(named, "layer")
    shapes = tap_shapes(model, params, image_shape)
    order = [k for k in model.layers if k in shapes]
    if len(order) > 1 and len(shapes[order[-1]]) == 2:
        return order[-2]
    return order[-1]


#: The roles a picture-making technique asks a model for a tap in, with the depth (a fraction of the spatial
#: taps, input to output) that the measured default picks when the model names none.
ROLES = {
    "early": 0.0,    # feature maps: the first spatial tap
    "middle": 0.4,   # top-activating patches
    "deep": 0.7,     # activation maximisation
    "dream": 0.7,    # DeepDream
    "content": 0.7,  # style transfer's content tap
}


def suggested_layers(net: Any, params: Any, image_shape: Sequence[int], role: str) -> tuple[str, ...]:
    """The taps a model suggests for ``role`` (a key of :data:`ROLES`, or ``"style"``).

    The model's own ``suggested_layers[role]`` when it names them (VGG: ``relu1_1`` for ``"early"``, Gatys et
    al.'s ``relu4_2`` and ``relu1_1``..``relu5_1`` for ``"content"`` and ``"style"``); else measured from the
    spatial taps (maps larger than 1x1) in order: for a role of :data:`ROLES`, the one at that fraction of the
    depth; for ``"style"``, the first tap at each map size (one per stage, at most five), as Gatys et al.
    take one layer per VGG block.

    Returns:
      One tap for a role of :data:`ROLES`; one or more for ``"style"``.

    Raises:
      InputError: an unknown ``role``. ModelError: the model has no spatial tap.
    """
    if role != "style" and role not in ROLES:
        raise InputError(f"role: expected one of {', '.join(ROLES)} or 'style', got {role!r}")
    model = as_model(net)
    named = (getattr(model, "suggested_layers", None) or {}).get(role)
    if named:
        names = (named,) if isinstance(named, str) else tuple(named)
        return tuple(model.resolve(n, "layer") for n in names)
    spatial = _maps(model, params, image_shape, "pass a layer,")
    shapes = tap_shapes(model, params, image_shape)
    if role == "style":
        firsts = {}
        for k in spatial:
            firsts.setdefault(shapes[k][1:3], k)
        return tuple(firsts.values())[:5]
    return (spatial[min(len(spatial) - 1, int(ROLES[role] * len(spatial)))],)


def suggested_layer(net: Any, params: Any, image_shape: Sequence[int], role: str) -> str:
    """The one tap :func:`suggested_layers` gives for ``role`` (a key of :data:`ROLES`)."""
    if role not in ROLES:
        raise InputError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    return suggested_layers(net, params, image_shape, role)[0]


@dataclasses.dataclass(frozen=True)
class PlainStack:
    """A model's offer to be computed layer by layer on patches (exact incremental occlusion): the seam a model
    with a plain convolution stack provides as its ``plain_stack`` attribute.

    Attributes:
      layers: ``(tap, kind)`` from the input on, ``kind`` one of ``"conv"``
        (3x3, stride 1, zero padding 1, params at ``params["params"][tap]``),
        ``"relu"`` or ``"pool"`` (2x2, stride 2); the model's later taps follow
        and are run through ``apply(params, a, start=tap)``.
      widths: output channels of each convolution, in order (the input has 3).
      pooling: ``"max"`` or ``"avg"``.
      mean, std: the input normalisation the model applies (None: none).
      dtype: the compute dtype.
      relu: the model's ReLU.
      bgr: the colour channels are reversed (RGB -> BGR) before ``mean``/``std``.
    """

    layers: tuple[tuple[str, str], ...]
    widths: tuple[int, ...]
    pooling: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    dtype: Any
    relu: Callable
    bgr: bool = False


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where a tap's units look in the input, measured (see :func:`geometry`).

    Attributes:
      layer: the tap.
      image_size: (H, W) of the input it was measured at.
      shape: the tap's activation shape for one image, (h, w, C).
      stride: (sy, sx) input pixels between neighbouring units.
      size: (ry, rx) receptive field: the input pixels one unit depends on
        (through padding, so it can exceed the image).
      offset: (oy, ox) input pixel of the top-left corner of unit (0, 0)'s
        field (negative where it reaches into the padding).
    """

    layer: str
    image_size: tuple[int, int]
    shape: tuple[int, ...]
    stride: tuple[int, int]
    size: tuple[int, int]
    offset: tuple[int, int]

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) input box of unit (y, x), not clipped; bottom/right exclusive."""
        top, left = self.stride[0] * y + self.offset[0], self.stride[1] * x + self.offset[1]
        return top, left, top + self.size[0], left + self.size[1]


def geometry(net: Any, params: Any, layer: str, image_size: Sequence[int] = (224, 224)) -> Geometry:
    """Measures a spatial tap's stride and receptive field.

    The model is evaluated as a positive surrogate of itself (every ReLU the
    identity, every max pool a sum pool, every kernel a positive average, the
    input all ones), so the input gradient of one unit is positive exactly on
    the pixels that unit depends on: one ``jax.vjp`` of two neighbouring units
    near the centre gives the field's size and offset and the stride. Exact
    for convolution, pooling, residual and normalisation layers; it does not
    depend on the weights.

    Args:
      net: a :class:`Model` (or anything :func:`as_model` adapts).
      params: its variables (only their shapes and tree matter).
      layer: a spatial tap.
      image_size: (H, W) to measure at first; where a centre unit's field
        reaches the image's border it is measured again on an image twice as
        large (up to 16x), so the size is the whole field.

    Returns:
      :class:`Geometry`.

    Raises:
      ModelError: the tap is not spatial (N, h, w, C), or is 1x1 here.
    """
    model = as_model(net)
    name = model.resolve(layer, "layer")
    h, w = (int(image_size[0]), int(image_size[1]))
    for _ in range(4):  # a field that reaches the image's border may be larger: measure again on a larger image
        shapes = tap_shapes(model, params, (1, h, w, 3))
        s = shapes[name]
        if len(s) != 4:
            raise ModelError(f"layer: {name!r} of {name_of(model)} is not a spatial map (N, h, w, C): its "
                             f"activation is {s}; it sees the whole image")
        key = (_params_key(params), name, h, w)
        try:
            measured = _measure(model, key)
        except TypeError:
            measured = _measure.__wrapped__(model, key)
        stride, size, offset, clipped = measured
        if not clipped:
            break
        h, w = 2 * h, 2 * w
    return Geometry(name, (h, w), s[1:], stride, size, offset)


@functools.lru_cache(maxsize=64)
def _measure(model: Any, key: Any) -> tuple:
    (treedef, sig), name, h, w = key
    from ._jaxpr import support

    leaves = [jnp.ones(s, d) / _fan_in(s) if len(s) >= 2 else jnp.ones(s, d) for s, d in sig]
    params = jax.tree_util.tree_unflatten(treedef, leaves)

    def fn(x):
        return support(lambda p, x: model.run(p, x, (name,), output=False)[1][name], (params, x))

    # three copies of the image: the centre unit, its right and its lower neighbour, one vjp for all three
    ones = jnp.ones((3, h, w, 3), jnp.float32)
    act = jax.eval_shape(fn, ones)
    _, mh, mw, _ = act.shape
    if mh * mw < 2:
        raise ModelError(f"layer: {name!r} of {name_of(model)} is 1x1 at {h}x{w} px: no stride to measure; "
                         "pass a larger image_size")
    cy, cx = (mh - 1) // 2, (mw - 1) // 2
    units = [(cy, cx), (cy, min(cx + 1, mw - 1)), (min(cy + 1, mh - 1), cx)]
    ct = np.zeros(act.shape, act.dtype)
    for b, (y, x) in enumerate(units):
        ct[b, y, x, 0] = 1.0
    # one compiled program (op-by-op dispatch of a deep network costs seconds of small compilations)
    g = jax.jit(lambda x, c: jax.vjp(fn, x)[1](c)[0])(ones, ct)
    seen = np.asarray(jnp.abs(g).sum(-1)) > 0
    boxes = []
    for b in range(3):
        ys, xs = np.nonzero(seen[b])
        if ys.size == 0:
            raise ModelError(f"layer: the units of {name!r} in {name_of(model)} do not depend on the input")
        boxes.append((int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1))
    (t0, l0, b0, r0), (_, l1, _, _), (t2, _, _, _) = boxes
    sx = l1 - l0 if mw > 1 else None
    sy = t2 - t0 if mh > 1 else None
    sy, sx = (sy or sx), (sx or sy)
    clipped = t0 == 0 or l0 == 0 or b0 == h or r0 == w
    return (sy, sx), (b0 - t0, r0 - l0), (t0 - sy * cy, l0 - sx * cx), clipped


def _fan_in(shape: Sequence[int]) -> float:
    return float(max(1, math.prod(shape[:-1])))
