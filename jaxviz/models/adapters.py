"""Adapters that put a model jaxviz did not write behind the model contract (:mod:`jaxviz.models.protocol`).

* :func:`tapped`: any ``flax.linen`` module. Its taps are its submodules'
  outputs, named by module path as Flax names them (``"Conv_0"``,
  ``"layer4/1"``; ``"layer4.1"`` is accepted too). Taps and perturbations go
  through ``flax.linen.intercept_methods``, so the module is called exactly as
  written.
* :func:`from_nnx`: a Flax NNX module, split into ``(net, params)``; taps are
  its submodules' outputs (``nnx.capture``), named by attribute path.
* :func:`from_function`: any function ``f(params, x)`` returning the output,
  or ``(output, {tap: activation})`` (Equinox, Haiku, hand-written JAX).

The ReLU seam of all three is the jaxpr rewrite of :mod:`jaxviz.models.relus`
(``jax.nn.relu``, ``flax.linen.relu``, ``jnp.maximum(x, 0)`` found wherever
they are); the layer-gradient seam for NNX modules and functions is a
perturbation added where the tap is computed in the traced program.

Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> from jaxviz import models
    >>> class CNN(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         x = nn.relu(nn.Conv(8, (3, 3))(x))
    ...         x = nn.relu(nn.Conv(8, (3, 3))(x))
    ...         return nn.Dense(4)(x.mean((1, 2)))
    >>> net = models.tapped(CNN(), input_shape=(1, 32, 32, 3))
    >>> net.layers
    ('Conv_0', 'Conv_1', 'Dense_0')
    >>> params = CNN().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    >>> out, taps = net.run(params, jnp.zeros((2, 32, 32, 3)), ("Conv_1",))
    >>> out.shape, taps["Conv_1"].shape
    ((2, 4), (2, 32, 32, 8))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..errors import InputError, ModelError
from . import _jaxpr, _taps

__all__ = ["tapped", "from_function", "from_nnx", "adapt", "TappedModule", "FunctionModel"]

#: Input used to discover a module's layers when none is given (evaluated abstractly: costs nothing).
DEFAULT_INPUT_SHAPE = (1, 224, 224, 3)


def _name(model: Any) -> str:
    from .protocol import name_of

    return name_of(model)


def _canonical(layers: Sequence[str], aliases: Mapping[str, str], name: Any, arg: str) -> str:
    """``name`` as a tap of ``layers``: torchvision-style dots accepted for Flax's slashes."""
    if isinstance(name, str) and name not in layers and name not in aliases and name.replace(".", "/") in layers:
        name = name.replace(".", "/")
    return _taps.resolve(layers, aliases, name, arg)


def _with_relus(fn: Callable, args: tuple, relu: Callable | None, perturb: Mapping[int, Any] | None = None):
    """``fn(*args)`` with its ReLUs swapped for ``relu`` and perturbations added (a model without ReLUs is run
    as it is: the methods that need ReLUs check with :func:`jaxviz.models.relus.count` first)."""
    return _jaxpr.evaluate(fn, args, relu=relu, perturb=perturb)[0]


# --------------------------------------------------------------------------------------------
# flax.linen


@dataclasses.dataclass(frozen=True, eq=True)
class TappedModule:
    """A ``flax.linen`` module behind the model contract (build with :func:`tapped`).

    Attributes:
      module: the module.
      layers: tap names (module paths, ``/``-separated), input to output.
      method: the module's method to call (``"__call__"``).
      min_size, unit_range, default_layer, cam_layers: the contract's optional
        attributes (see :mod:`jaxviz.models.protocol`).
    """

    module: nn.Module
    layers: tuple[str, ...]
    method: str = "__call__"
    min_size: int = 1
    unit_range: bool = False
    default_layer: str | None = None
    cam_layers: tuple[str, str] | None = None
    aliases: tuple[tuple[str, str], ...] = ()

    def resolve(self, name: str, arg: str = "taps") -> str:
        return _canonical(self.layers, dict(self.aliases), name, arg)

    def apply(self, variables: Any, x: Any, **kwargs: Any) -> Any:
        """The module's output (``run(...)[0]``)."""
        return self.run(variables, x, **kwargs)[0]

    def run(self, variables: Any, images: Any, taps: Sequence[str] = (), *, perturb: Mapping[str, Any] | None = None,
            relu: Callable | None = None, output: bool = True) -> tuple[Any, dict[str, Any]]:
        names = (taps,) if isinstance(taps, str) else tuple(taps)
        wanted = {n: self.resolve(n) for n in names}
        added = {self.resolve(k, "perturb"): v for k, v in (perturb or {}).items()}
        method = self.method

        def fn(variables, x):
            seen: dict[str, Any] = {}

            def interceptor(next_fun, args, kwargs, context):
                out = next_fun(*args, **kwargs)
                if context.method_name != "__call__" or context.module.scope is None:
                    return out
                path = "/".join(context.module.path)
                if path in added:
                    out = out + _taps.check_perturbation(path, jnp.shape(out), added[path]).astype(out.dtype)
                if path in wanted.values():
                    seen[path] = out
                return out

            with nn.intercept_methods(interceptor):
                y = self.module.apply(variables, x, method=method)
            missing = [n for n in wanted.values() if n not in seen]
            if missing:
                raise ModelError(f"taps: {missing[0]!r} was not called by {_name(self)} on this input")
            return y, {n: seen[c] for n, c in wanted.items()}

        if relu is None:
            return fn(variables, images)
        return _with_relus(fn, (variables, images), relu)


def _discover(module: nn.Module, input_shape: Sequence[int], method: str) -> tuple[str, ...]:
    """Paths of the submodules whose ``__call__`` returns one array, in the order their outputs are made."""
    order: list[str] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path and isinstance(out, jax.Array):
            path = "/".join(context.module.path)
            if path not in order:
                order.append(path)
        return out

    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    try:
        with nn.intercept_methods(interceptor):
            variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, method=method), x)
        order.clear()
        with nn.intercept_methods(interceptor):
            jax.eval_shape(lambda v, x: module.apply(v, x, method=method), variables, x)
    except Exception as e:  # noqa: BLE001 - any failure of the user's module on the probe input
        raise InputError(f"input_shape: {type(module).__name__} could not run on an input of shape "
                         f"{tuple(input_shape)} to list its layers ({type(e).__name__}: {e}); pass the shape it "
                         "takes as input_shape=, or the tap names as layers=") from None
    return tuple(order)


def tapped(module: nn.Module, layers: str | Sequence[str] = "auto", *, input_shape: Sequence[int] | None = None,
           method: str = "__call__", min_size: int = 1, unit_range: bool = False, default_layer: str | None = None,
           cam_layers: tuple[str, str] | None = None, aliases: Mapping[str, str] | None = None) -> TappedModule:
    """Any ``flax.linen`` module as a jaxviz model, its taps named by module path.

    Args:
      module: the module; its variables are passed to every technique as
        ``params`` (``module.init(...)``'s result).
      layers: ``"auto"``: every submodule whose ``__call__`` returns one array,
        in the order the outputs are made (found by an abstract run on
        ``input_shape``); or the tap names.
      input_shape: (N, H, W, C) the module takes, for ``layers="auto"``
        (default (1, 224, 224, 3); nothing is computed, only shapes).
      method: the module method to call.
      min_size: smallest input height/width the module accepts.
      unit_range: the module takes RGB in [0, 1] (refuse other ranges).
      default_layer: the tap Grad-CAM uses by default (else the deepest
        spatial tap, measured).
      cam_layers: ``(feature tap, dense param name)`` when the module ends in a
        global average pool and one Dense layer (enables CAM).
      aliases: extra names for taps (e.g. ``{"logits": "Dense_0"}``).

    Returns:
      A :class:`TappedModule` (hashable: it can be a static argument of ``jit``).

    Raises:
      InputError: the module does not run on ``input_shape``, or ``layers`` is
        empty or not strings.
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"module: expected a flax.linen Module, got {type(module).__name__}")
    if isinstance(layers, str):
        if layers != "auto":
            raise InputError(f"layers: expected 'auto' or a sequence of module paths, got {layers!r}")
        names = _discover(module, input_shape or DEFAULT_INPUT_SHAPE, method)
    else:
        names = tuple(layers)
        if not all(isinstance(n, str) for n in names):
            raise InputError(f"layers: expected module paths (str), got {layers!r}")
    if not names:
        raise InputError(f"layers: {type(module).__name__} has no submodule to tap")
    return TappedModule(module, tuple(n.replace(".", "/") for n in names), method, int(min_size), bool(unit_range),
                        default_layer, cam_layers, tuple(sorted((aliases or {}).items())))


# --------------------------------------------------------------------------------------------
# functions (and NNX modules, through one)


@dataclasses.dataclass(frozen=True, eq=True)
class FunctionModel:
    """A function ``fn(params, x) -> output`` or ``-> (output, {tap: activation})`` behind the model contract
    (build with :func:`from_function` or :func:`from_nnx`).

    Every call computes all taps (a function cannot be stopped early); a
    perturbation is added where the tap is computed in the traced program.
    """

    fn: Callable
    layers: tuple[str, ...]
    min_size: int = 1
    unit_range: bool = False
    default_layer: str | None = None
    cam_layers: tuple[str, str] | None = None
    aliases: tuple[tuple[str, str], ...] = ()

    def resolve(self, name: str, arg: str = "taps") -> str:
        return _canonical(self.layers, dict(self.aliases), name, arg)

    def apply(self, variables: Any, x: Any, **kwargs: Any) -> Any:
        return self.run(variables, x, **kwargs)[0]

    def _call(self, variables: Any, x: Any) -> tuple[Any, dict]:
        res = self.fn(variables, x)
        if isinstance(res, tuple) and len(res) == 2 and isinstance(res[1], Mapping):
            return res[0], dict(res[1])
        return res, {}

    def run(self, variables: Any, images: Any, taps: Sequence[str] = (), *, perturb: Mapping[str, Any] | None = None,
            relu: Callable | None = None, output: bool = True) -> tuple[Any, dict[str, Any]]:
        names = (taps,) if isinstance(taps, str) else tuple(taps)
        wanted = {n: self.resolve(n) for n in names}
        added = {self.resolve(k, "perturb"): v for k, v in (perturb or {}).items()}

        def fn(variables, x):
            y, acts = self._call(variables, x)
            missing = [n for n in set(wanted.values()) | set(added) if n not in acts]
            if missing:
                raise ModelError(f"taps: {_name(self)} returned no tap {missing[0]!r}; it returned "
                                 f"{', '.join(acts) or 'none'}")
            return y, {n: acts[n] for n in self.layers if n in acts}

        if relu is None and not added:
            y, acts = fn(variables, images)
        else:
            flat_index = {}
            if added:
                shapes = jax.eval_shape(fn, variables, images)
                y_leaves = len(jax.tree_util.tree_leaves(shapes[0]))
                order = sorted(shapes[1])  # the taps dict's leaves, in its (sorted) flattening order
                for name, delta in added.items():
                    delta = _taps.check_perturbation(name, shapes[1][name].shape, delta)
                    flat_index[y_leaves + order.index(name)] = delta
            y, acts = _with_relus(fn, (variables, images), relu, flat_index)
        return (y if output else None), {n: acts[c] for n, c in wanted.items()}


def _function_layers(fn: Callable, params: Any, input_shape: Sequence[int]) -> tuple[str, ...]:
    """The tap names ``fn`` returns, in the order their values are computed in its program."""
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)

    def call(p, x):
        res = fn(p, x)
        return res[1] if isinstance(res, tuple) and len(res) == 2 and isinstance(res[1], Mapping) else {}

    closed = jax.make_jaxpr(call)(params, x)
    names = sorted(jax.eval_shape(call, params, x))
    where = {}
    for v, name in zip(closed.jaxpr.outvars, names):
        for i, eqn in enumerate(closed.jaxpr.eqns):
            if v in eqn.outvars:
                where[name] = i
                break
        else:
            where[name] = -1
    return tuple(sorted(names, key=lambda n: (where[n], n)))


def from_function(fn: Callable, layers: Sequence[str] | None = None, *, params: Any = None,
                  input_shape: Sequence[int] | None = None, min_size: int = 1, unit_range: bool = False,
                  default_layer: str | None = None, aliases: Mapping[str, str] | None = None) -> FunctionModel:
    """Any function ``fn(params, x) -> output`` or ``-> (output, {tap: activation})`` as a jaxviz model.

    Args:
      fn: the function (Equinox, Haiku, hand-written JAX).
      layers: the tap names in input-to-output order; None: the keys of the
        taps dict ``fn`` returns, ordered as they are computed (needs
        ``params``; a function that returns only its output has no taps).
      params: example parameters, for ``layers=None``.
      input_shape: example input shape, for ``layers=None`` (default (1, 224, 224, 3)).
      min_size, unit_range, default_layer, aliases: as for :func:`tapped`.

    Returns:
      A :class:`FunctionModel`.
    """
    if not callable(fn):
        raise InputError(f"fn: expected a function f(params, x), got {type(fn).__name__}")
    if layers is None:
        names = () if params is None else _function_layers(fn, params, input_shape or DEFAULT_INPUT_SHAPE)
    else:
        names = tuple(layers)
        if not all(isinstance(n, str) for n in names):
            raise InputError(f"layers: expected tap names (str), got {layers!r}")
    return FunctionModel(fn, names, int(min_size), bool(unit_range), default_layer, None,
                         tuple(sorted((aliases or {}).items())))


@dataclasses.dataclass(frozen=True)
class _NNXCall:
    """``f(state, x) -> (output, {path: output})`` for an NNX graph definition (hashable by the graphdef)."""

    graphdef: Any

    def __call__(self, state: Any, x: Any) -> tuple[Any, dict]:
        from flax import nnx

        module = nnx.merge(self.graphdef, state)
        y, inter = nnx.capture(module, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
        taps = {}
        for path, value in nnx.to_flat_state(inter) if hasattr(nnx, "to_flat_state") else inter.flat_state():
            if len(path) < 2 or path[-1] != "__call__":
                continue
            val = value.get_value() if hasattr(value, "get_value") else getattr(value, "value", value)
            val = val[-1] if isinstance(val, tuple) else val
            if isinstance(val, jax.Array):
                taps["/".join(map(str, path[:-1]))] = val
        return y, taps


def from_nnx(module: Any, *, input_shape: Sequence[int] | None = None, **options: Any) -> tuple[FunctionModel, Any]:
    """A Flax NNX module as a jaxviz model: ``(net, params)``.

    The module is split (``nnx.split``) into a graph definition, which the
    model holds, and its state, which is returned as ``params`` and passed to
    every technique like any other parameters. Taps are the submodules'
    ``__call__`` outputs by attribute path (``"conv1"``, ``"blocks/0"``).

    Args:
      module: an ``nnx.Module``.
      input_shape: example input shape, to list and order the taps.
      **options: ``min_size``, ``unit_range``, ``default_layer``, ``aliases``
        as for :func:`tapped`.

    Returns:
      ``(net, params)``.
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise InputError(f"module: expected a flax.nnx Module, got {type(module).__name__}")
    graphdef, state = nnx.split(module)
    fn = _NNXCall(graphdef)
    return from_function(fn, params=state, input_shape=input_shape, **options), state


def refuse_nnx(net: Any) -> None:
    """An InputError for a Flax NNX module passed where a model is expected: it must be split first."""
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax without nnx
        return
    if isinstance(net, nnx.Module):
        raise InputError("net: a Flax NNX module holds its parameters; split it first: "
                         "net, params = jaxviz.models.from_nnx(module)")


def adapt(net: Any, input_shape: Sequence[int] | None = None) -> Any:
    """The adapter for ``net`` (see :func:`jaxviz.models.protocol.as_model`)."""
    if isinstance(net, nn.Module):
        return tapped(net, input_shape=input_shape)
    refuse_nnx(net)
    if callable(net):
        return from_function(net)
    raise InputError(f"net: expected a jaxviz model, a flax module or a function f(params, x), got "
                     f"{type(net).__name__}")
