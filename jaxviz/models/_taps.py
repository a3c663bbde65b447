"""The named-tap protocol shared by every jaxviz model.

A model lists its layers in order (``.layers``); ``__call__(x, taps=None, *,
start=None, ...)`` runs them one by one through a per-layer function,
returns the final output or a dict of the requested taps (keys as given),
stops after the deepest tap asked for, and can enter after a named tap.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

import flax
import flax.linen as nn

from .. import _checks
from ..errors import ArchitectureError, InputError


_PARAMS_ERRORS = (flax.errors.ScopeParamNotFoundError, flax.errors.ScopeParamShapeError,
                  flax.errors.ScopeCollectionNotFound)


def apply_checked(module: Any, apply: Callable, variables: Any, *args, **kwargs) -> Any:
    """``apply(variables, ...)`` (flax's ``Module.apply``), with flax's errors about variables that do not
    fit the model turned into an :class:`~jaxviz.errors.ArchitectureError` that says what to do."""
    try:
        return apply(variables, *args, **kwargs)
    except _PARAMS_ERRORS as e:
        raise params_error(module, variables, e) from None


def params_error(module: Any, variables: Any, e: Exception) -> ArchitectureError:
    text = str(e)
    m = re.search(r'"/([\w/]+)"', text)
    layer = m.group(1).split("/")[0] if m else "?"
    name = type(module).__name__
    keys = list(variables) if isinstance(variables, Mapping) else []
    if isinstance(e, flax.errors.ScopeCollectionNotFound):
        if keys and "params" not in keys:
            shown = ", ".join(map(str, keys[:4])) + (", ..." if len(keys) > 4 else "")
            return ArchitectureError(f"params: expected flax variables {{'params': {{...}}}} (as weights.random, "
                                     f"weights.load and net.init return them), got a mapping with keys {shown}; "
                                     f"pass {{'params': params}}")
        found = re.search(r'collection "(\w+)"', text)
        coll = found.group(1) if found else "?"
        if coll in keys:
            return ArchitectureError(f"params: the {coll!r} collection holds nothing for {layer} of this {name}")
        return ArchitectureError(f"params: no {coll!r} collection for {layer} of this {name}; got collections "
                                 f"{', '.join(map(str, keys)) or 'none'}")
    if isinstance(e, flax.errors.ScopeParamShapeError):
        shapes = re.findall(r"shape (\([\d, ]*\))", text)
        want, got = (shapes + ["?", "?"])[:2]
        return ArchitectureError(f"params: {layer} has shape {got} where this {name} expects {want}: "
                                 "weights of another architecture or configuration")
    hint = ""
    if layer in getattr(module, "layers", ()) and layer.startswith("fc"):
        hint = ("; features-only weights? Load them with classifier=True, or build the network with "
                "classifier=False")
    return ArchitectureError(f"params: no parameters for {layer} of this {name}{hint}")


def resolve(layers: Sequence[str], aliases: Mapping[str, str], name: Any, arg: str = "taps") -> str:
    """Canonical layer name for ``name`` (aliases resolved); InputError naming ``arg`` if unknown."""
    if not isinstance(name, str):
        raise InputError(f"{arg}: expected layer names (str), got {name!r}")
    canonical = aliases.get(name, name)
    if canonical not in layers:
        known = list(layers) + [a for a, c in aliases.items() if c in layers]
        raise InputError(f"{arg}: unknown layer {name!r}; this network has {', '.join(known)}")
    return canonical


def prepare_images(x: Any, *, min_size: int, normalize: bool, mean: Sequence[float], std: Sequence[float],
                   dtype: Any = jnp.float32, bgr: bool = False) -> jax.Array:
    """Checks (N, H, W, 3) float images, applies mean/std when ``normalize`` (after reversing the colour channels,
    RGB -> BGR, when ``bgr``), casts to ``dtype``."""
    _checks.images(x, "images", min_size=min_size, unit_range=normalize)
    x = jnp.asarray(x, jnp.float32)
    if normalize:
        if bgr:
            x = x[..., ::-1]
        x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


def run(
    model: Any,
    x: Any,
    taps: str | Sequence[str] | None,
    start: str | None,
    layer: Callable[[str, jax.Array], jax.Array],
    prepare: Callable[[Any], jax.Array],
    perturb: Mapping[str, Any] | None = None,
) -> jax.Array | dict[str, jax.Array]:
    """Runs ``model.layers`` through ``layer(name, x)``; see the module docstring.

    ``perturb`` maps tap names to arrays added to those taps' activations (every later layer sees the sum).
    """
    order = model.layers
    single = taps is None
    if single:
        requested: tuple = (order[-1],)
    elif isinstance(taps, str):
        requested = (taps,)
    else:
        requested = tuple(taps)
        if not requested:
            raise InputError("taps: expected at least one layer name, got an empty sequence")
    wanted = {name: model.resolve(name) for name in requested}
    stop = max(order.index(c) for c in wanted.values())
    if start is None:
        begin = 0
        x = prepare(x)
    else:
        begin = order.index(model.resolve(start, "start")) + 1
        if begin > stop:
            raise InputError(f"taps: every tap must come after start={start!r}, got {requested}")
    added = {model.resolve(k, "perturb"): v for k, v in (perturb or {}).items()}
    if added and start is not None and min(order.index(k) for k in added) < begin:
        raise InputError(f"perturb: every perturbed tap must come after start={start!r}, got {tuple(added)}")
    outputs: dict[str, jax.Array] = {}
    for name in order[begin : stop + 1]:
        x = layer(name, x)
        if name in added:
            x = x + check_perturbation(name, x.shape, added[name]).astype(x.dtype)
        outputs[name] = x if name in wanted.values() else None
    return x if single else {k: outputs[wanted[k]] for k in requested}


def check_perturbation(name: str, shape: Sequence[int], delta: Any) -> Any:
    """``delta`` if it has the tap's activation shape; else an InputError naming ``perturb`` and the tap."""
    if tuple(jnp.shape(delta)) != tuple(shape):
        raise InputError(f"perturb: {name!r} has activations of shape {tuple(shape)}, got an array of shape "
                         f"{tuple(jnp.shape(delta))}")
    return jnp.asarray(delta)


class Tapped:
    """The model contract (:class:`jaxviz.models.protocol.Model`) for jaxviz's own layer-by-layer modules.

    A subclass is a ``flax.linen`` module with ``layers``, an ``ALIASES``-style
    ``aliases`` mapping and ``__call__(x, taps=None, *, start=None, perturb=None,
    relu=None, train=False)`` built on :func:`run`. It gets ``run``,
    ``resolve``, a checked ``apply`` and the optional contract attributes.
    """

    aliases: Mapping[str, str] = {}
    #: ``apply(params, a, start=tap)`` enters the network after ``tap``
    supports_start = True

    def apply(self, variables, *args, **kwargs):
        """:meth:`flax.linen.Module.apply`; variables that do not fit this network raise
        :class:`~jaxviz.errors.ArchitectureError` saying which layer and what to do."""
        return apply_checked(self, super().apply, variables, *args, **kwargs)

    def resolve(self, name: str, arg: str = "taps") -> str:
        """Canonical layer name for ``name`` (aliases resolved); raises InputError if unknown."""
        return resolve(self.layers, self.aliases, name, arg)

    @property
    def unit_range(self) -> bool:
        """Inputs are RGB in [0, 1] (the model normalises them itself)."""
        return bool(getattr(self, "normalize", False))

    def run(self, variables: Any, images: Any, taps: Sequence[str] = (), *, perturb: Mapping[str, Any] | None = None,
            relu: Callable | None = None, output: bool = True) -> tuple[Any, dict[str, Any]]:
        """The model contract's ``run``: ``(output or None, {tap: activation})``; stops after the deepest tap
        when ``output`` is False. ``relu`` goes to the model's own ReLU seam."""
        names = (taps,) if isinstance(taps, str) else tuple(taps)
        last = self.layers[-1]
        asked = names + ((last,) if output else ())
        if not asked:
            return None, {}
        got = self.apply(variables, images, taps=asked, perturb=perturb, relu=relu)
        return (got[last] if output else None), {k: got[k] for k in names}


def dropout(module: Any, rate: float, x: jax.Array) -> jax.Array:
    """Training-mode ``nn.Dropout`` in ``module``'s compact context; InputError if ``apply`` was given no dropout key."""
    if rate > 0 and not module.has_rng("dropout"):
        raise InputError("train: dropout needs a PRNG key; call apply(params, x, train=True, "
                         "rngs={'dropout': key})")
    return nn.Dropout(rate, deterministic=False)(x)
