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
                   dtype: Any = jnp.float32) -> jax.Array:
    """Checks (N, H, W, 3) float images, applies mean/std when ``normalize``, casts to ``dtype``."""
    _checks.images(x, "images", min_size=min_size, unit_range=normalize)
    x = jnp.asarray(x, jnp.float32)
    if normalize:
        x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


def run(
    model: Any,
    x: Any,
    taps: str | Sequence[str] | None,
    start: str | None,
    layer: Callable[[str, jax.Array], jax.Array],
    prepare: Callable[[Any], jax.Array],
) -> jax.Array | dict[str, jax.Array]:
    """Runs ``model.layers`` through ``layer(name, x)``; see the module docstring."""
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
    outputs: dict[str, jax.Array] = {}
    for name in order[begin : stop + 1]:
        x = layer(name, x)
        outputs[name] = x if name in wanted.values() else None
    return x if single else {k: outputs[wanted[k]] for k in requested}


def dropout(module: Any, rate: float, x: jax.Array) -> jax.Array:
    """Training-mode ``nn.Dropout`` in ``module``'s compact context; InputError if ``apply`` was given no dropout key."""
    if rate > 0 and not module.has_rng("dropout"):
        raise InputError("train: dropout needs a PRNG key; call apply(params, x, train=True, "
                         "rngs={'dropout': key})")
    return nn.Dropout(rate, deterministic=False)(x)
